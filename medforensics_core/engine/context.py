"""What the engine hands a detector's ``fit``: device, precision, seed, budget, loaders, progress.

Detectors own their recipe (optimiser, schedule, early stopping); the context
owns everything that must be the same for every detector of a comparison, so a
comparison is fair by construction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from ..contract import Batch
from ..data.dataset import ImageSet, Transform, TransformedSet
from .device import autocast, resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")

ProgressFn = Callable[[Iterable[T], int, str], Iterator[T]]


def no_progress(iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    return iter(iterable)


@dataclasses.dataclass
class FitContext:
    """Shared training conditions. ``epochs``/``batch_size`` override the detector's config when set.

    ``precision``: fp32 (the baselines' official code), bf16 or fp16 autocast.
    ``allow_random_init``: a detector whose pretrained weights are missing trains
    from random ones instead of failing (``--allow-random-init``; reported).
    """

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    seed: int = 0
    epochs: int | None = None
    budget_seconds: float | None = None
    batch_size: int | None = None
    num_workers: int = 0
    cache_dir: Path | None = None
    work_dir: Path | None = None
    progress: ProgressFn = no_progress
    rank: int = 0
    world_size: int = 1
    allow_random_init: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)
    #: Per-epoch records (``{"detector", "epoch", "epochs", "loss", ...}``) that :meth:`log_epoch` collects;
    #: the engine draws ``loss.png`` from them and writes them to ``mfx.log``.
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Optional extra sink for epoch metrics (``--log tensorboard``): ``(tag, value, step)``.
    scalar_sink: Callable[[str, float, int], None] | None = None

    @classmethod
    def create(cls, device: str = "auto", **kwargs: Any) -> "FitContext":
        return cls(device=resolve_device(device), **kwargs)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def epochs_for(self, configured: int) -> int:
        return self.epochs if self.epochs is not None else configured

    def batch_size_for(self, configured: int) -> int:
        return self.batch_size if self.batch_size is not None else configured

    def out_of_time(self) -> bool:
        """True once the wall-clock budget is spent (a detector stops at the end of its epoch)."""
        return self.budget_seconds is not None and time.monotonic() - self.started > self.budget_seconds

    def autocast(self):
        """Forward passes run under the context's precision (fp32: no autocast)."""
        return autocast(self.device, self.precision)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 on CUDA (fp16 gradients underflow without one)."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16" and self.device.type == "cuda")

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return g

    def rng(self, offset: int = 0) -> np.random.Generator:
        return np.random.default_rng(self.seed + offset)

    def loader(self, images: ImageSet, transform: Transform, batch_size: int, *, shuffle: bool,
               drop_last: bool = False, epoch_offset: int = 0) -> torch.utils.data.DataLoader:
        """A seeded DataLoader of :class:`~medforensics_core.contract.Batch` (rows included); sharded if distributed."""
        return self._loader(TransformedSet(images, transform), BatchCollate(images.rows), batch_size, shuffle=shuffle,
                            drop_last=drop_last, epoch_offset=epoch_offset)

    def tensor_loader(self, inputs: torch.Tensor, labels, batch_size: int, *, shuffle: bool, rows=(),
                      drop_last: bool = False, epoch_offset: int = 0) -> torch.utils.data.DataLoader:
        """Batches of precomputed inputs (e.g. cached frozen features), with the same sharding and seeding."""
        dataset = torch.utils.data.TensorDataset(inputs, torch.as_tensor(labels), torch.arange(len(inputs)))
        return self._loader(dataset, BatchCollate(rows), batch_size, shuffle=shuffle, drop_last=drop_last,
                            epoch_offset=epoch_offset)

    def _loader(self, dataset, collate, batch_size: int, *, shuffle: bool, drop_last: bool,
                epoch_offset: int) -> torch.utils.data.DataLoader:
        """A :class:`ShardSampler` when distributed (each rank its shard of one shared order), else a seeded shuffle."""
        sampler = None
        if self.distributed:
            sampler = ShardSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle,
                                   seed=self.seed, drop_last=drop_last)
            sampler.set_epoch(epoch_offset)
            shuffle = False
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last,
            num_workers=self.num_workers, generator=self.generator(epoch_offset) if shuffle else None,
            pin_memory=self.device.type == "cuda", collate_fn=collate)

    def parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped in ``DistributedDataParallel`` when distributed (gradients averaged), else itself."""
        from .distributed import wrap_module

        return wrap_module(module, self)

    def epoch_range(self, total: int, name: str) -> Iterator[int]:
        """``range(total)`` under a progress bar "NAME epochs i/N" with elapsed time and ETA.

        The batch loops inside an epoch show their own bar below it; :meth:`status` writes the
        running loss beside the epoch bar.
        """
        return self.track(range(total), total, f"{name} epochs")

    def status(self, text: str) -> None:
        """Show ``text`` (e.g. the running loss) beside the outermost live progress bar, if any is drawn."""
        setter = getattr(self.progress, "status", None)
        if setter is not None and self.rank == 0:
            setter(text)

    def log_epoch(self, name: str, epoch: int, epochs: int, loss: float | None = None, **metrics: Any) -> None:
        """Record one finished epoch (1-based): the run's ``mfx.log``, ``loss.png`` and TensorBoard read it."""
        record = {"detector": name, "epoch": epoch, "epochs": epochs, "loss": loss,
                  **{k: v for k, v in metrics.items() if v is not None}}
        self.history.append(record)
        if self.rank != 0:
            return
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in record.items() if k not in ("detector", "epoch", "epochs") and v is not None)
        logging.getLogger("mfx.run").info("%s epoch %d/%d: %s", name, epoch, epochs, shown or "done")
        self.status(shown)
        if self.scalar_sink is not None:
            for key, value in record.items():
                if key not in ("detector", "epoch", "epochs") and isinstance(value, (int, float)):
                    self.scalar_sink(f"{name}/{key}", float(value), epoch)

    def track(self, iterable: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        """Wrap a loop in the run's progress display (rich on a terminal, nothing in tests)."""
        if self.rank != 0:
            return iter(iterable)
        return self.progress(iterable, total, description)


class BatchCollate:
    """Collate ``(input, label, index)`` items into a :class:`Batch` carrying the images' manifest rows."""

    def __init__(self, rows=()):
        self.rows = list(rows)

    def __call__(self, items) -> Batch:
        inputs, labels, indices = torch.utils.data.default_collate(items)
        rows = [self.rows[int(i)] for i in indices] if self.rows else ()
        return Batch(inputs=inputs, labels=labels, rows=rows, indices=indices)


class ShardSampler(torch.utils.data.distributed.DistributedSampler):
    """A ``DistributedSampler`` whose shared order is the single-process loader's order.

    Rank ``r`` of ``N`` takes items ``r, r + N, r + 2N...`` of the order a
    single-process ``ctx.loader`` would use for the same seed and epoch, so batch
    ``k`` of all ranks together is batch ``k`` of one process with an N-times
    larger batch: distributed training reproduces single-process training
    (``tests/test_distributed.py`` checks it). The single-process order is
    ``DataLoader(shuffle=True, generator=ctx.generator(epoch))``: the loader
    draws one int64 from the generator (its worker base seed) before the
    sampler's ``randperm``; the same draw is made here.
    """

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[:self.total_size]
        elif len(order) < self.total_size:  # pad by repeating the start, as DistributedSampler does
            order += (order * (self.total_size // max(len(order), 1) + 1))[:self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])
