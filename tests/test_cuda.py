"""The CUDA path: every torch detector trains and scores on a GPU, and its weights mean the same on either device.

These tests run only where torch sees a CUDA GPU (CI has none, so there they are
skipped; run them on a GPU machine with ``pytest tests/test_cuda.py``). Each one
checks what a user moving between a CPU laptop and a GPU node relies on:

* a checkpoint trained on the CPU scores the same images alike on the GPU (fp32),
  and close under bf16 autocast;
* training on the GPU goes through the engine (``train_detector`` moves the
  detector, ``FitContext`` carries the device), leaves no module on the CPU, and
  its checkpoint reloads on the CPU with the same scores;
* DSKI's full tiny recipe learns on the GPU as on the CPU, and loader workers
  (forked after CUDA is initialised) feed a GPU run;
* ``mfx compare --device cuda`` records the device and the CUDA allocator's peak
  per detector, and ``--precision fp16`` trains with a gradient scaler.

fp32 tolerances: cuDNN convolutions may use TF32 (torch's default), which keeps a
10-bit mantissa, so CPU and GPU scores of one model agree to about 1e-3, not to
the last bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from medforensics_core.cli import cli
from medforensics_core.data.dataset import ImageSet
from medforensics_core.data.manifest import read_manifest
from medforensics_core.engine.compare.detector_run import train_detector
from medforensics_core.engine.compare.plan import DetectorSpec
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.evaluate import score
from medforensics_core.plugins import get_registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")

GPU = torch.device("cuda")
TORCH_DETECTORS = ("dski", "cnnspot", "npr", "univfd", "fatformer", "rine")
FP32_ATOL = 2e-3
"""CPU vs GPU scores of the same weights in fp32: TF32 convolutions and another summation order."""
BF16_MEAN_SHIFT = 0.03
"""bf16 keeps 8 bits of mantissa: probabilities move by about 1e-3 on average. Not a bound on the largest move:
DSKI's retrieval takes the top k of near-tied neighbours (a random-init backbone's embeddings lie close
together), and a tie that bf16 breaks the other way flips one image's evidence (measured on the CPU's bf16:
mean move 0.014, largest 0.56, AUC 0.890 -> 0.887)."""
BF16_AUC_SHIFT = 0.03


@pytest.fixture(scope="module")
def splits(quick_benchmark_v1):
    """The quick v1 build: fakes tiny detectors learn within an epoch or two (this file ran in ~70 s on an H200)."""
    manifest = read_manifest(Path(quick_benchmark_v1) / "manifest.csv")
    return {"train": ImageSet(manifest.split("train")), "val": ImageSet(manifest.split("val")),
            "test": ImageSet(manifest.split("test"))}


def spec(name: str, epochs: int | None = 1) -> DetectorSpec:
    overrides = {"epochs": str(epochs)} if epochs is not None else {}
    return DetectorSpec(name, get_registry().detector(name), "tiny", overrides)


def modules_on(detector, device_type: str) -> bool:
    """Every parameter and buffer of every module the detector holds is on ``device_type``."""
    tensors = [t for m in detector.modules().values() for t in (*m.parameters(), *m.buffers())]
    return bool(tensors) and all(t.device.type == device_type for t in tensors)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


@pytest.mark.parametrize("name", TORCH_DETECTORS)
def test_weights_trained_on_the_cpu_score_alike_on_the_gpu(name, splits):
    trained, _ = train_detector(spec(name), splits["train"], splits["val"], FitContext(seed=0))
    test = splits["test"]
    on_cpu = score(trained, test, FitContext())
    trained.to(GPU)
    assert modules_on(trained, "cuda")
    on_gpu = score(trained, test, FitContext(device=GPU))
    np.testing.assert_allclose(on_gpu, on_cpu, atol=FP32_ATOL)
    in_bf16 = score(trained, test, FitContext(device=GPU, precision="bf16"))
    assert np.abs(in_bf16 - on_cpu).mean() < BF16_MEAN_SHIFT
    assert abs(auc(test.labels, in_bf16) - auc(test.labels, on_cpu)) < BF16_AUC_SHIFT


@pytest.mark.parametrize("name", TORCH_DETECTORS)
def test_trained_on_the_gpu_the_checkpoint_scores_alike_on_the_cpu(name, splits, tmp_path):
    ctx = FitContext(device=GPU, seed=0)
    trained, _ = train_detector(spec(name), splits["train"], splits["val"], ctx)
    assert modules_on(trained, "cuda")
    test = splits["test"]
    on_gpu = score(trained, test, ctx)
    reloaded = get_registry().detector(name).load(trained.save(tmp_path / f"{name}.safetensors"), device="cpu")
    assert modules_on(reloaded, "cpu")
    np.testing.assert_allclose(score(reloaded, test, FitContext()), on_gpu, atol=FP32_ATOL)


def test_dski_learns_on_the_gpu_as_on_the_cpu(splits):
    """DSKI's full tiny recipe (its own epochs, MFRM bank, fusion tuning) on the GPU beats chance as on the CPU
    (test_dski asserts AUC > 0.75 there on these generators; the GPU run must clear the same bar)."""
    trained, _ = train_detector(spec("dski", epochs=None), splits["train"], splits["val"], FitContext(device=GPU))
    test = splits["test"]
    assert trained.mfrm_active() and auc(test.labels, score(trained, test, FitContext(device=GPU))) > 0.75


def test_loader_workers_feed_a_gpu_run(splits):
    """``--workers``: loader processes forked after CUDA is initialised compute DSKI's noise statistics on the CPU
    (they never touch the GPU); the model trains, and scores the same with and without workers."""
    ctx = FitContext(device=GPU, seed=0, num_workers=2)
    trained, _ = train_detector(spec("dski", epochs=2), splits["train"], splits["val"], ctx)
    test = splits["test"]
    np.testing.assert_allclose(score(trained, test, ctx), score(trained, test, FitContext(device=GPU)), atol=1e-5)


def test_compare_on_cuda_records_the_device_and_the_allocator_peak(quick_benchmark_v1, tmp_path):
    result = CliRunner().invoke(cli, ["compare", "dski", "cnnspot", "--data", str(quick_benchmark_v1),
                                      "--device", "cuda", "--preset", "tiny", "--out", str(tmp_path), "--n-boot", "100",
                                      "--set", "dski.epochs=2", "--set", "cnnspot.epochs=1"])
    assert result.exit_code == 0, result.output
    run = next(p for p in tmp_path.iterdir() if (p / "report.json").exists())
    environment = json.loads((run / "environment.json").read_text())
    assert environment["device"].startswith("cuda")
    report = json.loads((run / "report.json").read_text())
    for name in ("dski", "cnnspot"):
        entry = report["detectors"][name]
        assert entry["status"] == "ok" and entry["precision"] == "fp32"
        assert 0 < entry["peak_memory_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
    assert any("CUDA allocator peak" in note for note in report.get("notes", []))


def test_fp16_training_on_cuda_stays_finite(quick_benchmark_v1, tmp_path):
    """fp16 autocast trains with a gradient scaler: the run ends with finite losses and a loadable checkpoint."""
    out = tmp_path / "cnnspot-fp16.safetensors"
    result = CliRunner().invoke(cli, ["train", "cnnspot", "--data", str(quick_benchmark_v1), "--device", "cuda",
                                      "--preset", "tiny", "--precision", "fp16", "--epochs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    reloaded = get_registry().detector("cnnspot").load(out)
    assert all(torch.isfinite(p).all() for m in reloaded.modules().values() for p in m.parameters())


@pytest.mark.parametrize("name", ["noise-stats", "grid-phase", "npr", "npr-blocks"])
def test_noise_maps_on_the_gpu_match_the_cpus(name, splits, monkeypatch):
    """DSKI computes its maps on the CPU in the loader; an extractor run on a GPU (a plugin's own use) must give
    the same maps up to float rounding: the GPU's parallel running sums and pooling add in another order.
    TF32 is off here: it would round the residual filters to a 10-bit mantissa, a precision choice, not the
    algorithm this checks."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    extractor = get_registry().noise_extractor(name)()
    images = torch.stack([splits["test"][i][0] for i in range(8)])
    with torch.no_grad():
        on_cpu = extractor(images)
        on_gpu = extractor.to(GPU)(images.to(GPU)).cpu()
    assert on_gpu.shape == on_cpu.shape and torch.isfinite(on_gpu).all()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)
