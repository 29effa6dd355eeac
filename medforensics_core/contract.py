"""What the engine hands a detector, and the optional capabilities a detector declares.

* :class:`Batch` — every loader of the engine yields batches of this shape, to
  ``fit`` loops and to ``predict_proba``: the preprocessed ``inputs``, the
  ``labels`` (1 = fake; ``None`` where unknown, e.g. ``mfx predict``), and the
  manifest ``rows`` of the images (modality, generator, source...), so a
  detector that needs an image's modality reads ``batch.modalities`` instead of
  looking rows up by index;
* :class:`ReferenceBank` — a detector that holds a labelled bank of reference
  embeddings and can take new references without retraining (few-shot
  protocol, ``mfx index add``/``show``). Declared by inheriting it, checked with
  ``isinstance`` / ``issubclass``;
* :class:`SupportsDistributed` — a detector whose ``fit`` trains through the
  shared epoch loop (``ctx.loader`` / ``ctx.tensor_loader`` shard the data with a
  ``DistributedSampler``, ``ctx.parallel`` wraps the trained module in
  ``DistributedDataParallel``), so under ``torchrun`` each rank may train on its
  shard. A detector without it trains on the whole set on every rank.

:func:`capabilities` lists what a detector class declares (``mfx plugins --json``).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .data.manifest import ManifestRow
    from .interfaces import Retriever

__all__ = ["Batch", "ReferenceBank", "SupportsDistributed", "capabilities"]


@dataclasses.dataclass
class Batch:
    """A batch of images as the engine hands it to a detector.

    ``inputs`` ``(N, C, H, W)`` went through the detector's own transform
    (``preprocess`` or ``train_transform``); ``rows`` holds one manifest row per
    image (empty when the caller has none, e.g. a bare tensor); ``indices`` are
    the images' positions in their dataset (the engine uses them to put scores
    gathered from several processes back in order).
    """

    inputs: torch.Tensor
    labels: torch.Tensor | None = None
    rows: Sequence["ManifestRow"] = ()
    indices: torch.Tensor | None = None

    @classmethod
    def of(cls, inputs: "torch.Tensor | Batch", *, modalities: Sequence[str] | None = None) -> "Batch":
        """``inputs`` as a batch (a batch is returned as is); ``modalities`` fill minimal rows."""
        if isinstance(inputs, Batch):
            return inputs
        rows: Sequence[Any] = ()
        if modalities is not None:
            from .data.manifest import ManifestRow

            if len(modalities) != len(inputs):
                raise ValueError(f"{len(inputs)} images but {len(modalities)} modalities")
            rows = [ManifestRow(path="", label=0, modality=m or "unknown", generator="unknown") for m in modalities]
        return cls(inputs=inputs, rows=rows)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        """The same batch with ``inputs`` and ``labels`` on ``device``."""
        labels = self.labels.to(device, non_blocking=non_blocking) if self.labels is not None else None
        return dataclasses.replace(self, inputs=self.inputs.to(device, non_blocking=non_blocking), labels=labels)

    def _column(self, name: str) -> list[str] | None:
        return [getattr(row, name) for row in self.rows] if self.rows else None

    @property
    def modalities(self) -> list[str] | None:
        """Each image's modality, or ``None`` when the batch carries no rows."""
        return self._column("modality")

    @property
    def generators(self) -> list[str] | None:
        return self._column("generator")

    @property
    def sources(self) -> list[str] | None:
        return self._column("source")


class ReferenceBank(abc.ABC):
    """Capability: a labelled reference bank that grows without retraining.

    A detector declares it by inheriting this class (``class MyDetector(Detector,
    ReferenceBank)``) and keeps its bank (a :class:`~medforensics_core.interfaces.Retriever`,
    or ``None`` before training) in ``self.bank``. The engine's few-shot protocol
    and ``mfx index add``/``show`` work on every detector that declares it.
    """

    bank: "Retriever | None"

    @abc.abstractmethod
    def add_references(self, images: Sequence[torch.Tensor] | torch.Tensor, labels: Sequence[int],
                       modalities: Sequence[str], generators: Sequence[str],
                       sources: Sequence[str] | None = None) -> int:
        """Add raw labelled images ``(3, H, W)`` in [0, 1] to the bank; returns the bank size."""

    def check_reference_modalities(self, modalities: Sequence[str]) -> None:
        """Refuse modalities the bank cannot take (default: any is fine); one line naming them."""

    def bank_summary(self) -> dict[str, Any]:
        """Size, retriever and counts per (label, generator, modality) of the bank, for ``mfx index show``."""
        bank = self.bank
        if bank is None:
            return {"size": 0, "retriever": None, "groups": []}
        counts: dict[tuple[int, str, str], int] = {}
        meta = getattr(bank, "meta", None) or [{}] * len(bank)
        for label, row in zip(bank.labels.tolist(), meta):
            key = (int(label), str(row.get("generator", "?")), str(row.get("modality", "?")))
            counts[key] = counts.get(key, 0) + 1
        groups = [{"label": "fake" if k[0] == 1 else "real", "generator": k[1], "modality": k[2], "count": n}
                  for k, n in sorted(counts.items())]
        return {"size": len(bank), "retriever": bank.name, "groups": groups}


class SupportsDistributed:
    """Capability: ``fit`` shards its data across ``torchrun`` ranks and keeps the ranks in lockstep.

    Declare it only when every trained module goes through the shared epoch loop
    (:func:`medforensics_core.engine.schedules.train_binary` /
    :func:`medforensics_core.engine.training.run_epoch`) with loaders from
    ``ctx.loader`` / ``ctx.tensor_loader`` and the module wrapped by ``ctx.parallel``:
    then each rank sees ``1/world_size`` of the images and gradients are averaged
    (``DistributedDataParallel``), which equals one process with the whole batch.
    """


def capabilities(cls: type) -> list[str]:
    """Names of the capabilities a detector class declares (for ``mfx plugins --json``)."""
    found = []
    if issubclass(cls, ReferenceBank):
        found.append("reference-bank")
    if issubclass(cls, SupportsDistributed):
        found.append("distributed")
    return found
