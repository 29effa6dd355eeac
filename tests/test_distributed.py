"""``torchrun --nproc_per_node 2`` (gloo, CPU): distributed evaluation and comparison equal a single process exactly."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medforensics_core.cli import cli
from test_compare import build_small_dataset, only_run_dir

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    """The shared test dataset with one test image dropped, so 2 ranks get uneven shards (sampler padding)."""
    root = build_small_dataset(tmp_path_factory.mktemp("dist-data"))
    lines = (root / "manifest.csv").read_text().splitlines(keepends=True)
    first_test = next(i for i, line in enumerate(lines) if ",test," in line)
    (root / "manifest.csv").write_text("".join(lines[:first_test] + lines[first_test + 1:]))
    return root


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--no-python", str(BIN / "mfx"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def scores_by_path(run: Path) -> dict[tuple[str, str], float]:
    with open(run / "scores.csv") as handle:
        return {(r["detector"], r["path"]): float(r["score"]) for r in csv.DictReader(handle)}


def assert_same_metrics(single: Path, multi: Path, detector: str) -> None:
    a = json.loads((single / "report.json").read_text())
    b = json.loads((multi / "report.json").read_text())
    assert a["data"]["n_test"] == b["data"]["n_test"]
    for view in ("overall", "by_modality", "by_generator", "mean_over_modalities"):
        assert a["detectors"][detector][view] == b["detectors"][detector][view], view
    assert scores_by_path(single) == scores_by_path(multi)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_two_processes_equal_one_process(odd_dataset, tmp_path):
    checkpoint = tmp_path / "freq.safetensors"
    runner = CliRunner()
    assert runner.invoke(cli, ["train", "freq", "--data", str(odd_dataset), "-o", str(checkpoint)]).exit_code == 0
    single = tmp_path / "single"
    result = runner.invoke(cli, ["evaluate", "freq", "--checkpoint", str(checkpoint), "--data", str(odd_dataset),
                                 "--out", str(single), "--n-boot", "200", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    n_test = json.loads((single / "report.json").read_text())["data"]["n_test"]
    assert n_test % 2 == 1  # uneven shards: one rank scores a padded duplicate, which must be dropped

    multi = tmp_path / "multi"
    launched = torchrun("evaluate", "freq", "--checkpoint", str(checkpoint), "--data", str(odd_dataset),
                        "--out", str(multi), "--n-boot", "200", "--device", "cpu", cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "Traceback" not in launched.stderr
    assert_same_metrics(single, multi, "freq")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_compare_trains_and_reports_once(odd_dataset, tmp_path):
    """Training under torchrun (every rank, identically), rank 0 writes the one run directory."""
    runner = CliRunner()
    single_cmp, multi_cmp = tmp_path / "single-cmp", tmp_path / "multi-cmp"
    args = ["compare", "freq", "--data", str(odd_dataset), "--n-boot", "200", "--device", "cpu"]
    assert runner.invoke(cli, [*args, "--out", str(single_cmp)]).exit_code == 0
    launched = torchrun(*args, "--out", str(multi_cmp), cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert len([p for p in multi_cmp.iterdir() if p.is_dir()]) == 1
    assert_same_metrics(only_run_dir(single_cmp), only_run_dir(multi_cmp), "freq")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_compare_reports_dski_stage_aucs_over_the_whole_test_set(odd_dataset, tmp_path):
    """DSKI's stage-wise AUCs under torchrun: each rank scores its shard of the test set, and the stages are
    gathered back into dataset order (before, the shard's scores met the whole set's labels and DSKI failed).
    The fused stage is the detector's score, so its AUC is the report's overall AUC."""
    out = tmp_path / "dski-cmp"
    launched = torchrun("compare", "dski", "--data", str(odd_dataset), "--preset", "tiny", "--epochs", "1", "--n-boot", "100",
                        "--device", "cpu", "--out", str(out), cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "Traceback" not in launched.stdout + launched.stderr
    entry = json.loads((only_run_dir(out) / "report.json").read_text())["detectors"]["dski"]
    assert entry["status"] == "ok"
    assert all(entry[f"{stage}_auc"] is not None for stage in ("stage1", "retrieval", "fused"))
    assert abs(entry["fused_auc"] - entry["overall"]["auc"]) < 1e-6


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fit_on_shard(rank: int, world_size: int, port: int, dataset: str, out: str) -> None:
    """One rank of a distributed fit of the run-time probe (gloo): shards + run_epoch's gradient averaging."""
    import torch
    import torch.distributed as dist

    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import read_manifest
    from medforensics_core.engine.context import FitContext
    from medforensics_core.seeding import seed_everything
    from test_compare import HighPassProbe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        train = ImageSet(read_manifest(Path(dataset) / "manifest.csv").split("train"))
        seed_everything(0)
        probe = HighPassProbe(preset="tiny")
        ctx = FitContext(seed=0, epochs=3, rank=rank, world_size=world_size)
        probe.fit(train, None, ctx)
        weights = {k: v.tolist() for k, v in probe.model.state_dict().items()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(weights))
        dist.barrier()  # leave the group together: a rank that tears gloo down early once aborted its peer (CI)
    finally:
        dist.destroy_process_group()


def test_distributed_fit_keeps_ranks_in_lockstep(odd_dataset, tmp_path):
    """Each rank trains on its own shard, yet gradient averaging leaves identical weights on both (the DDP rule)."""
    import torch.multiprocessing as mp

    mp.spawn(_fit_on_shard, args=(2, _free_port(), str(odd_dataset), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    from medforensics_core.seeding import seed_everything
    from test_compare import HighPassProbe

    seed_everything(0)
    initial = {k: v.tolist() for k, v in HighPassProbe(preset="tiny").model.state_dict().items()}
    assert rank0 != initial  # it did train


# --------------------------------------------------------------------------- DistributedDataParallel, for real


def _univfd_fit(rank: int, world_size: int, port: int, dataset: str, out: str, batch_size: int) -> None:
    """Fit the built-in univfd probe for one epoch on this rank's shard; record its head and the images it saw."""
    import torch
    import torch.distributed as dist

    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import read_manifest
    from medforensics_core.engine.context import FitContext
    from medforensics_core.plugins import get_registry

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        train = _even_train_set(ImageSet(read_manifest(Path(dataset) / "manifest.csv").split("train")))
        seen: list[int] = []
        streams: list[str] = []
        started: list[str] = []

        class Recorded:
            """A training loader that notes the dataset index of every image it yields."""

            def __init__(self, loader):
                self.loader = loader

            def __getattr__(self, name):
                return getattr(self.loader, name)

            def __len__(self):
                return len(self.loader)

            def __iter__(self):
                for batch in self.loader:
                    seen.extend(int(i) for i in batch.indices)
                    # where torch's global stream (augmentation draws from it) stands, read without drawing
                    streams.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16])
                    yield batch

        class RecordingContext(FitContext):
            def _loader(self, *args, **kwargs):
                loader = super()._loader(*args, **kwargs)
                return Recorded(loader) if kwargs.get("shuffle") else loader

            def epoch_range(self, *args, **kwargs):  # the epoch loop starts: where the stream stands
                started.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16])
                return super().epoch_range(*args, **kwargs)

        ctx = RecordingContext(seed=0, epochs=1, batch_size=batch_size, rank=rank, world_size=world_size,
                               cache_dir=Path(out) / f"cache-{world_size}")
        detector = get_registry().detector("univfd")(preset="tiny")
        detector.fit(train, None, ctx)
        head = {k: v.tolist() for k, v in detector.head.state_dict().items()}
        Path(out, f"univfd-{world_size}-{rank}.json").write_text(json.dumps({"head": head, "seen": seen,
                                                                              "streams": streams, "started": started,
                                                                              "n": len(train)}))
        if world_size > 1:
            dist.barrier()  # leave the group together (see _fit_on_shard)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _even_train_set(train):
    """An even number of training images, so two ranks hold equal shards (no padding duplicate)."""
    return train.subset(range(len(train) - len(train) % 2))


def test_ddp_epoch_equals_one_process_with_the_doubled_batch(quick_benchmark, tmp_path):
    """2 gloo processes x batch 8 (univfd's shared epoch loop, DDP) == 1 process x batch 16, after one epoch.

    Each rank trains on its half of the images (the shard sampler splits one shared order), DDP
    averages the gradients in backward, so every step equals the single process's step on the
    union batch; the cached frozen features are encoded once per shard and gathered. The ranks
    share weights but not torch's global stream: the shared loop reseeds rank 1 with its own seed.
    """
    import torch.multiprocessing as mp

    _univfd_fit(0, 1, 0, str(quick_benchmark), str(tmp_path), 16)
    mp.spawn(_univfd_fit, args=(2, _free_port(), str(quick_benchmark), str(tmp_path), 8), nprocs=2, join=True)
    single = json.loads((tmp_path / "univfd-1-0.json").read_text())
    ranks = [json.loads((tmp_path / f"univfd-2-{r}.json").read_text()) for r in (0, 1)]
    n = single["n"]
    assert sorted(single["seen"]) == list(range(n))  # a single process trains on everything
    assert all(len(r["seen"]) == n // 2 for r in ranks)  # each rank on half of the images
    assert set(ranks[0]["seen"]).isdisjoint(ranks[1]["seen"])
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(n))
    assert ranks[0]["head"] == ranks[1]["head"]  # the ranks stay in lockstep
    # ... yet draw their own randomness: with one seed on every rank, both would augment their shards with the
    # same sequence of draws (the stream is read at each batch, without drawing)
    assert len(ranks[1]["streams"]) == len(ranks[0]["streams"]) > 0
    assert not set(ranks[0]["streams"]) & set(ranks[1]["streams"])
    assert ranks[0]["started"] == single["started"] != ranks[1]["started"]  # rank 0 keeps the single process's
    for key, value in single["head"].items():
        np.testing.assert_allclose(np.array(ranks[0]["head"][key]), np.array(value), rtol=1e-4, atol=1e-6)
    assert any(abs(b) > 0 for b in single["head"]["bias"])  # it did train (the head's bias starts at 0)
