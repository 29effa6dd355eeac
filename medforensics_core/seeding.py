"""Seeds in one place: one run seed, and stable per-purpose seeds derived from it.

A run records a single integer seed. Everything random in it (weight
initialisation, shuffling, augmentation draws, bootstrap resamples, support-shot
picks...) takes a seed *derived* from that one by name, so

* two parts of a run never share a random stream by accident (the shuffling of
  one detector does not shift when another draws one more number), and
* the derived seed is the same in every process and on every machine: it is a
  hash of the names (``hashlib``), never Python's salted ``hash()``.

``seed_everything`` seeds the global generators (Python, NumPy, torch on every
device) once at the start of a run; ``seeded`` runs a block from a seed and puts
torch's global generator back afterwards, so a ``fit`` draws the same numbers
whatever ran before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["derive_seed", "numpy_rng", "seed_everything", "seeded", "torch_generator"]

#: Derived seeds fit NumPy's and torch's 63-bit seed ranges on every platform.
_SEED_BITS = 63


def derive_seed(seed: int, *names: object) -> int:
    """A seed for the part of a run called ``names`` (e.g. ``derive_seed(0, "dski", "support-shots")``).

    Stable across processes, Python versions and machines; ``derive_seed(seed)``
    with no names is ``seed`` itself, so a single-purpose caller keeps its old stream.
    """
    if not names:
        return int(seed)
    text = "\x1f".join([str(int(seed)), *map(str, names)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - _SEED_BITS)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random draws under ``torchrun`` (augmentation, dropout masks).

    Why: every rank trains on its own shard, but with one seed every rank would draw the same sequence
    of crops, flips and masks for its images, so the global batch's randomness would be one pattern
    repeated ``world_size`` times. Rank 0 keeps ``seed``, so a single-process run is unchanged.
    """
    return seed if rank == 0 else derive_seed(seed, "rank", rank)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) so a run is reproducible from its recorded seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def numpy_rng(seed: int, *names: object) -> np.random.Generator:
    """A NumPy generator for ``derive_seed(seed, *names)``."""
    return np.random.default_rng(derive_seed(seed, *names))


def torch_generator(seed: int, *names: object) -> torch.Generator:
    """A CPU torch generator for ``derive_seed(seed, *names)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *names))


@contextlib.contextmanager
def seeded(seed: int, *, cuda: bool = True) -> Iterator[None]:
    """Run a block with torch's global generator seeded, restoring the caller's state afterwards.

    Two fits from one seed then train the same model, whatever ran before them.
    ``cuda=False`` leaves the CUDA generators alone (CPU-only work such as building a backbone).
    """
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
