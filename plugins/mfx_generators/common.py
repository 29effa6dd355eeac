"""What every benchmark generator shares: seeding, grey/colour handling, the training loop skeleton.

Grey modalities (X-ray, CT, MRI...) are stored as three identical channels. A
generator that produced three slightly different channels would hand every
detector a trivial tell that has nothing to do with generation traces, so the
models here work on one channel for grey data and replicate it on output.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch

from medforensics_core.engine.context import FitContext

log = logging.getLogger(__name__)


def is_grey(images: torch.Tensor, tol: float = 1e-6) -> bool:
    """True when all three channels of every image are equal (a grey modality stored as RGB)."""
    return bool((images[:, 0] - images[:, 1]).abs().max() <= tol and (images[:, 0] - images[:, 2]).abs().max() <= tol)


def to_model_space(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``[0, 1]`` RGB (N,3,H,W) -> ``[-1, 1]`` with ``channels`` channels (1 for grey data)."""
    x = images[:, :1] if channels == 1 else images
    return x * 2.0 - 1.0


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """Model output in ``[-1, 1]`` -> ``[0, 1]`` RGB, grey output replicated to three channels."""
    x = ((x.clamp(-1, 1) + 1.0) / 2.0).float()
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def seed_of(ctx: FitContext | None) -> int:
    return ctx.seed if ctx is not None else 0


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded (weight init), without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def training_steps(ctx: FitContext | None, steps: int, description: str) -> Iterator[int]:
    """``range(steps)`` shown in the run's progress display; stops early when the context's budget is spent."""
    iterator = iter(range(steps)) if ctx is None else ctx.track(range(steps), steps, description)
    for step in iterator:
        if ctx is not None and step > 0 and ctx.out_of_time():
            log.warning("%s: time budget spent after %d of %d steps", description, step, steps)
            return
        yield step


def random_batch(data: torch.Tensor, batch_size: int, generator: torch.Generator, patch: int = 0) -> torch.Tensor:
    """A batch drawn with replacement, reproducible from ``generator``, with random horizontal flips.

    ``patch > 0`` takes one random ``patch x patch`` window of each image: fully
    convolutional models (the U-Net, the autoencoder) learn local statistics
    just as well from windows, at a fraction of the cost, and still run on
    full-size images afterwards.
    """
    index = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
    batch = data[index]
    h, w = batch.shape[-2:]
    if 0 < patch < min(h, w):
        top = torch.randint(0, h - patch + 1, (batch_size,), generator=generator).tolist()
        left = torch.randint(0, w - patch + 1, (batch_size,), generator=generator).tolist()
        batch = torch.stack([img[:, y:y + patch, x:x + patch] for img, y, x in zip(batch, top, left)])
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


def check_images(images: torch.Tensor, multiple: int, who: str) -> None:
    """Generators need (N,3,H,W) in [0,1] with H, W divisible by their total down-sampling factor."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: expected images (N, 3, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"{who}: image size {h}x{w} must be divisible by {multiple}")


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in chunks (bounded memory for large benchmark builds)."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]) if len(x) else x
