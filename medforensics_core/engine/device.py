"""Device selection and mixed precision, in one place so no detector hard-codes ``.cuda()``."""

from __future__ import annotations

import contextlib

import torch

from ..errors import MfxError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; asking for an absent device is one clear error."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise MfxError("--device cuda: no CUDA GPU is visible to torch (use --device auto or cpu)")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MfxError("--device mps: Apple MPS is not available here (use --device auto or cpu)")
    if base not in DEVICE_CHOICES:
        raise MfxError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MfxError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(requested: str | None, detector_cls: type, device: torch.device) -> str:
    """The precision a detector runs at: ``--precision`` when given, else the detector's own default.

    Baselines default to fp32, as their papers' code ran; a detector may declare
    ``default_precision`` (a string, or a function of the device) — DSKI can ask
    for bf16 on CUDA.
    """
    if requested:
        return check_precision(requested)
    default = getattr(detector_cls, "default_precision", "fp32")
    return check_precision(default(device) if callable(default) else default)


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast to bf16/fp16 when asked (CUDA or CPU); fp32 runs as is.

    The official code of every baseline runs fp32, so that is the default;
    ``bf16`` on a GPU without bf16 support is refused rather than silently
    changed.
    """
    check_precision(precision)
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MfxError("--precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`~engine.rundir.reset_peak_memory`: CUDA allocator peak, else peak RSS.

    On Linux the peak RSS is ``VmHWM`` (resettable, so per detector); elsewhere the lifetime max RSS.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_kib()
    if hwm is not None:
        return hwm / 1024
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def timed_call(fn, device: str | torch.device) -> float:
    """Wall-clock seconds of ``fn()``, synchronising CUDA before and after so GPU work is counted."""
    import time

    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start
