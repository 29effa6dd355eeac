"""Shared fixtures. Tests never touch the network: hub access is switched off here as in CI."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MFX_ALLOW_DOWNLOAD", "0")

import pytest  # noqa: E402


@pytest.fixture
def fresh_registry():
    """Rebuild the plugin registry before and after a test that changes plugins or MFX_LOAD_PLUGINS."""
    from medforensics_core import plugins

    plugins.reset_registry()
    yield plugins
    plugins.reset_registry()


@pytest.fixture(scope="session")
def quick_benchmark():
    """The offline benchmark built with ``--quick`` (cached across the test session and runs).

    Returns the dataset folder (it holds ``manifest.csv``).
    """
    from medforensics_core.benchmark import default_dataset

    return default_dataset(quick=True)


@pytest.fixture(scope="session")
def quick_benchmark_v1():
    """The quick build with the first benchmark's generators (``--generators v1``): easy fakes.

    Tests of a detector's *mechanics* (it learns, saves, reloads) use it. On the
    default (v2) fakes, tiny randomly initialised detectors sit near chance --
    which is what the v2 benchmark is for, and would make such tests flaky.
    """
    from medforensics_core.benchmark import default_dataset

    return default_dataset(quick=True, generators=["v1"])


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only spin; one thread is several times faster.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
