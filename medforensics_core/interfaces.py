"""The four plugin interfaces of mfx (plus perturbations), small on purpose.

The core knows only these classes. Every detector, noise extractor, retriever,
generator and perturbation — the built-in ones included — is a subclass that a
plugin registers through a hook (see :mod:`medforensics_core.hookspecs`).

Conventions shared by all of them:

* ``name``: unique registry name (lower-case, dashes), ``description``: one line
  shown by ``mfx plugins``;
* ``config_class``: a dataclass whose defaults reproduce the paper's recipe
  ("full" preset); ``presets`` maps other preset names (at least ``tiny`` for
  detectors) to overrides of those defaults;
* images are float tensors in ``[0, 1]`` with 3 channels, ``(3, H, W)`` or
  ``(N, 3, H, W)``.
"""

from __future__ import annotations

import abc
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from .checkpoint import load_state_strict, load_tensors, save_tensors
from .config import EmptyConfig, build_config, config_from_dict, config_to_dict
from .contract import Batch
from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from .engine.context import FitContext

PLUGIN_KINDS = ("detector", "noise_extractor", "retriever", "generator", "perturbation")


class Plugin:
    """Mixin for every registered class: name, description, typed config and presets."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = EmptyConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def make_config(cls, preset: str | None = None, **overrides: Any) -> Any:
        """Config for ``preset`` ("full" = the paper's recipe) with ``key=value`` overrides."""
        return build_config(cls.config_class, cls.presets, preset, overrides)

    @classmethod
    def preset_names(cls) -> list[str]:
        return ["full", *[p for p in cls.presets if p != "full"]]


# --------------------------------------------------------------------------- detectors


class Detector(Plugin, abc.ABC):
    """A fake-image detector with a scikit-learn-like surface.

    ``fit`` trains on a labelled image set (label 1 = fake), ``predict_proba``
    returns the probability that each image of a *preprocessed*
    :class:`~medforensics_core.contract.Batch` is fake (a bare tensor is
    accepted too and wrapped into a batch without rows). The engine owns data
    loading, devices (:meth:`to`, called by the engine before ``fit``), mixed
    precision and batching; the detector owns its preprocessing (``preprocess``
    for evaluation, ``train_transform`` with augmentation for training) and its
    training recipe. Optional capabilities are declared by inheriting
    :class:`~medforensics_core.contract.ReferenceBank` or
    :class:`~medforensics_core.contract.SupportsDistributed`.

    Saving goes through :meth:`state_tensors` (tensors -> safetensors) and
    :meth:`extra_state` (JSON), never a pickle; loading is one call,
    :meth:`load_state` ``(tensors, extra)``.
    """

    kind: ClassVar[str] = "detector"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old in ("load_extra_state", "load_state_tensors"):
            if old in cls.__dict__:
                raise TypeError(f"{cls.__qualname__}.{old}: loading is one call now, "
                                f"load_state(tensors, extra, source) (see medforensics_core.interfaces.Detector)")
        if "predict_proba" in cls.__dict__ and not getattr(cls.__dict__["predict_proba"], "_takes_batch", False):
            cls.predict_proba = _accepting_tensors(cls.__dict__["predict_proba"])

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        self.config = config if config is not None else self.make_config(preset)
        self.preset = preset or getattr(self.config, "preset", None) or "custom"
        self.device = torch.device(device)
        self.fitted = False
        self.train_info: dict[str, Any] = {}

    # -- preprocessing (one raw image (3, H, W) in [0, 1] -> model input)
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Deterministic test-time preprocessing of one image."""
        return image

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        """Training-time preprocessing (with the recipe's augmentation); defaults to :meth:`preprocess`."""
        return self.preprocess(image)

    # -- estimator API
    @abc.abstractmethod
    def fit(self, train: Any, val: Any | None = None, ctx: "FitContext | None" = None) -> "Detector":
        """Train on ``train`` (a :class:`~medforensics_core.data.dataset.ImageSet`); return ``self``."""

    @abc.abstractmethod
    def predict_proba(self, batch: Batch) -> np.ndarray:
        """Probability that each image of a preprocessed batch (``batch.inputs`` ``(N, C, H, W)``) is fake, ``(N,)``."""

    def to(self, device: str | torch.device) -> "Detector":
        """Move the detector's modules to ``device`` (override when it holds several)."""
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules whose state is saved; default: ``self.model`` if there is one."""
        model = getattr(self, "model", None)
        return {"model": model} if isinstance(model, torch.nn.Module) else {}

    def weights_info(self) -> str:
        """Which weights the detector runs with (a report repeats this line verbatim)."""
        return "trained from random initialisation"

    def warnings(self) -> list[str]:
        """Caveats a report must repeat (e.g. random-init backbone, MFRM skipped)."""
        return []

    def weights_status(self) -> str:
        """One word for machines and banners: where the weights that score come from.

        ``pretrained``: a pretrained backbone (the paper's premise); ``random-init``: a backbone the
        recipe expects pretrained is randomly initialised, so scores check the pipeline but are not
        evidence; ``from-scratch``: the recipe has no pretrained part (everything trained by mfx).
        The default reads ``self.backbone.is_random`` (the core's CLIP backbones); detectors with
        another backbone override it.
        """
        is_random = getattr(getattr(self, "backbone", None), "is_random", None)
        if is_random is None:
            return "from-scratch"
        return "random-init" if is_random else "pretrained"

    # -- persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor needed to restore the trained detector, prefixed by module name."""
        state: dict[str, torch.Tensor] = {}
        for prefix, module in self.modules().items():
            for key, value in module.state_dict().items():
                state[f"{prefix}.{key}"] = value
        return state

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        """Restore a saved detector from its :meth:`state_tensors` and :meth:`extra_state`, in one call.

        The default restores the modules' tensors strictly and ignores ``extra``;
        a detector with more state (a bank, a fitted threshold) overrides this and
        reads both together. ``source`` names the checkpoint in error messages.
        """
        self.load_module_tensors(tensors, source)

    def load_module_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Restore the :meth:`modules`' tensors; refuses anything that does not match exactly."""
        modules = self.modules()
        grouped: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
        for key, value in tensors.items():
            prefix, _, rest = key.partition(".")
            if prefix not in grouped:
                raise CheckpointError(f"{source}: unexpected tensor {key!r} for detector {self.name!r}")
            grouped[prefix][rest] = value
        for prefix, module in modules.items():
            load_state_strict(module, grouped[prefix], source)

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beside the tensors (e.g. a fitted threshold); default none."""
        return {}

    def save(self, path: str | Path) -> Path:
        """Write a safetensors checkpoint holding tensors, config and metadata."""
        path = Path(path)
        metadata = {
            "kind": "detector",
            "detector": self.name,
            "preset": self.preset,
            "config": config_to_dict(self.config),
            "extra": self.extra_state(),
            "weights_info": self.weights_info(),
            "weights_status": self.weights_status(),
            "train_info": self.train_info,
        }
        save_tensors(path, self.state_tensors(), metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Detector":
        """Load a checkpoint of *this* detector; another detector's checkpoint is refused."""
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "detector":
            raise CheckpointError(f"{path}: not a detector checkpoint (kind {meta.get('kind')!r})")
        if meta.get("detector") != cls.name:
            raise CheckpointError(f"{path}: checkpoint of detector {meta.get('detector')!r}, not {cls.name!r}")
        try:
            config = config_from_dict(cls.config_class, meta.get("config", {}))
        except Exception as exc:  # noqa: BLE001 - any config mismatch is a checkpoint problem
            raise CheckpointError(f"{path}: its config does not fit {cls.name!r} ({exc})") from None
        detector = cls(config, preset=meta.get("preset"), device="cpu")
        try:
            detector.load_state(tensors, meta.get("extra", {}) or {}, source=str(path))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # hostile or damaged metadata
            raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None
        detector.train_info = meta.get("train_info") or {}  # a null in the file is no information
        detector.fitted = True
        return detector.to(device)


def _accepting_tensors(predict_proba):
    """Wrap a detector's ``predict_proba`` so that a bare tensor arrives as a :class:`Batch` without rows."""

    @functools.wraps(predict_proba)
    def wrapper(self, batch, *args, **kwargs):
        return predict_proba(self, Batch.of(batch), *args, **kwargs)

    wrapper._takes_batch = True
    return wrapper


# --------------------------------------------------------------------------- noise extractors


class NoiseExtractor(Plugin, torch.nn.Module):
    """A torch module mapping images ``(N, 3, H, W)`` to residual maps ``(N, C, H/s, W/s)``.

    ``downsample`` is ``s`` (1 for same-size filters, 2 for one DWT level...).
    Learnable extractors (Bayar) train with the detector that owns them.
    """

    kind: ClassVar[str] = "noise_extractor"
    downsample: ClassVar[int] = 1

    def __init__(self, config: Any = None, in_channels: int = 3):
        torch.nn.Module.__init__(self)
        self.config = config if config is not None else self.make_config()
        self.in_channels = in_channels

    @property
    @abc.abstractmethod
    def out_channels(self) -> int:
        """Number of residual channels ``C`` produced for ``in_channels`` inputs."""


# --------------------------------------------------------------------------- retrievers


class Retriever(Plugin, abc.ABC):
    """A labelled vector bank with nearest-neighbour search (cosine on L2-normalised vectors).

    ``meta`` keeps, per vector, where it came from (generator, modality, file),
    and ``info`` what produced the vectors (backbone, preset), so a bank is
    never used with features of another model.
    """

    kind: ClassVar[str] = "retriever"

    def __init__(self, config: Any = None, dim: int | None = None, info: Mapping[str, Any] | None = None):
        self.config = config if config is not None else self.make_config()
        self.dim = dim
        self.info = dict(info or {})

    @abc.abstractmethod
    def add(self, vectors: np.ndarray, labels: Sequence[int] | np.ndarray,
            meta: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add ``(n, d)`` vectors (normalised here) with labels and optional metadata rows."""

    @abc.abstractmethod
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(similarities, indices)``, each ``(n, k)``; index -1 where the bank has fewer."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @property
    @abc.abstractmethod
    def labels(self) -> np.ndarray:
        """Labels of the stored vectors, in insertion order."""

    @property
    def meta(self) -> list[dict[str, Any]]:
        """Metadata rows of the stored vectors (generator, modality, file...), in insertion order."""
        return [{} for _ in range(len(self))]

    @abc.abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that restore the bank (vectors, labels, serialised index...)."""

    @abc.abstractmethod
    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_tensors` plus :meth:`extra_state`."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> Path:
        meta = {"kind": "retriever", "retriever": self.name, "config": config_to_dict(self.config),
                "dim": self.dim, "info": self.info, "extra": self.extra_state()}
        save_tensors(path, self.state_tensors(), meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Retriever":
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "retriever" or meta.get("retriever") != cls.name:
            raise CheckpointError(f"{path}: not a {cls.name!r} retriever bank")
        retriever = cls(config_from_dict(cls.config_class, meta.get("config", {})), dim=meta.get("dim"),
                        info=meta.get("info"))
        retriever.load_state_tensors(tensors, meta.get("extra", {}))
        return retriever


# --------------------------------------------------------------------------- generators


class Generator(Plugin, abc.ABC):
    """A generative model that makes fakes for a benchmark, trained on real images of one modality.

    Unconditional families implement :meth:`sample`; image-to-image families
    (SDEdit, autoencoder reconstruction) implement :meth:`transform`. Hub-backed
    generators (diffusers pipelines) fit the same interface with a no-op ``fit``.

    A ``conditional`` generator is trained once on the images of *every*
    modality, like a modality-conditioned medical generator: its ``fit``,
    ``sample`` and ``transform`` take ``conditions=`` (a long tensor with one
    modality index per image) and it may ignore them.
    """

    kind: ClassVar[str] = "generator"
    family: ClassVar[str] = ""
    conditional: ClassVar[bool] = False

    def __init__(self, config: Any = None, *, device: str | torch.device = "cpu"):
        self.config = config if config is not None else self.make_config()
        self.device = torch.device(device)

    @abc.abstractmethod
    def fit(self, images: torch.Tensor, ctx: "FitContext | None" = None) -> "Generator":
        """Train on real images ``(N, 3, H, W)`` in [0, 1] of one modality."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` new images ``(n, 3, H, W)`` in [0, 1]."""
        raise NotImplementedError(f"generator {self.name!r} does not sample unconditionally")

    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fakes derived from real images (img2img), same shape as ``images``."""
        raise NotImplementedError(f"generator {self.name!r} is not an image-to-image generator")

    @property
    def is_img2img(self) -> bool:
        return type(self).transform is not Generator.transform

    def describe(self) -> dict[str, Any]:
        """Name, family and parameters, written into each fake's manifest row."""
        return {"generator": self.name, "family": self.family, "params": config_to_dict(self.config)}


# --------------------------------------------------------------------------- perturbations


class Perturbation(Plugin, abc.ABC):
    """A degradation applied to test images for robustness protocols (``--perturb jpeg:50``).

    ``strength`` is the single number after the colon (JPEG quality, blur sigma,
    resize factor, noise std); it must be deterministic given ``rng``.
    """

    kind: ClassVar[str] = "perturbation"
    default_strength: ClassVar[float] = 0.0
    strength_range: ClassVar[tuple[float, float]] = (float("-inf"), float("inf"))
    """Strengths that make sense (inclusive); ``--perturb`` refuses others at plan time."""

    def __init__(self, strength: float | None = None):
        self.strength = self.default_strength if strength is None else float(strength)

    @abc.abstractmethod
    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Perturb one image ``(3, H, W)`` in [0, 1]; returns the same shape and range."""

    def label(self) -> str:
        return f"{self.name}:{self.strength:g}"
