"""Frozen open_clip backbones shared by every CLIP-based detector (UnivFD, DSKI, ...).

``pretrained`` is one of:

* ``"random"`` — random initialisation from a seed (demos and tests: no CLIP
  weights can be downloaded on an offline machine); reports say so;
* a local file path — a checkpoint saved from open_clip (the real-weights path
  on an air-gapped workstation);
* an open_clip tag such as ``"openai"`` — used only if it is already in the
  local Hugging Face cache, or if ``MFX_ALLOW_DOWNLOAD=1`` allows fetching it.
  Otherwise it fails at once with one line saying how to supply the weights,
  instead of open_clip's long network retries;
* ``"TAG:PATH"`` — a local file holding the weights published under an open_clip
  tag (``openai:/models/ViT-L-14.pt``). A plain path is tagged too when its file
  name carries a known tag as a word (``ViT-L-14-openai.pt``).

Activation. OpenAI's CLIP weights were trained with QuickGELU
(``x * sigmoid(1.702 x)``); open_clip 3.x builds ``ViT-L-14`` with ``nn.GELU``
and only warns when OpenAI weights are loaded into it, so every feature would be
computed with the wrong non-linearity. Here the weights' tag decides: a tag whose
open_clip record says ``quick_gelu`` (every ``openai`` tag) builds the model
with QuickGELU, whatever the model name; a ``-quickgelu`` model name with weights
tagged as GELU-trained is refused in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsNotFoundError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_CLIP = "mfx-tiny-clip"
RANDOM = "random"


@functools.lru_cache(maxsize=1)
def _register_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


@dataclasses.dataclass
class ClipBackbone:
    """A loaded open_clip model with what a detector needs to use it correctly."""

    model: Any
    model_name: str
    pretrained: str
    weights_info: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    tokenizer: Any

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM

    def key(self) -> str:
        """Identity of the weights (feature caches and retrieval banks are keyed by it)."""
        return f"{self.model_name}|{self.weights_info}"

    @property
    def activation(self) -> str:
        """``"QuickGELU"`` or ``"GELU"``: the non-linearity of the image tower's MLPs."""
        return activation_name(self.model)


def activation_name(model: torch.nn.Module) -> str:
    """The MLP activation an open_clip model was built with (QuickGELU, GELU, or the class name)."""
    for module in model.modules():
        kind = type(module).__name__
        if kind in ("QuickGELU", "GELU"):
            return kind
    return "none"


OPENAI_TAG = "openai"


def tag_wants_quick_gelu(model_name: str, tag: str) -> bool | None:
    """Whether weights published under ``tag`` were trained with QuickGELU (``None``: unknown tag).

    Every OpenAI CLIP checkpoint is QuickGELU; for other tags open_clip's pretrained
    record says so with ``quick_gelu`` (absent means GELU).
    """
    import open_clip

    if tag == OPENAI_TAG:
        return True
    base = model_name.removesuffix("-quickgelu")
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or open_clip.get_pretrained_cfg(base, tag)
    if not cfg:
        return None
    return bool(cfg.get("quick_gelu", False))


def known_tags(model_name: str) -> set[str]:
    import open_clip

    base = model_name.removesuffix("-quickgelu")
    tags = set(open_clip.list_pretrained_tags_by_model(model_name)) | \
        set(open_clip.list_pretrained_tags_by_model(base))
    return tags | {OPENAI_TAG}


def split_tagged_path(model_name: str, spec: str) -> tuple[str | None, str]:
    """``"openai:/models/x.pt"`` -> ``("openai", "/models/x.pt")``; a plain spec -> ``(None, spec)``."""
    tag, sep, rest = spec.partition(":")
    if sep and rest and tag in known_tags(model_name):
        return tag, rest
    return None, spec


def tag_from_file_name(model_name: str, path: Path) -> str | None:
    """A known tag spelled as a word of the file name (``ViT-L-14-openai.pt`` -> ``openai``)."""
    import re

    words = set(re.split(r"[-_.\s]+", path.name.lower()))
    stem = path.name.lower()
    for tag in sorted(known_tags(model_name), key=len, reverse=True):
        if tag.lower() in words or (("_" in tag or "-" in tag) and tag.lower() in stem):
            return tag
    return None


def choose_quick_gelu(model_name: str, tag: str | None) -> bool:
    """QuickGELU when the weights need it; refuse a ``-quickgelu`` model with GELU-trained weights."""
    wants = tag_wants_quick_gelu(model_name, tag) if tag else None
    if wants is False and model_name.endswith("-quickgelu"):
        raise WeightsNotFoundError(
            f"{model_name} builds QuickGELU but weights tagged {tag!r} were trained with GELU; "
            f"use {model_name.removesuffix('-quickgelu')} with these weights")
    return bool(wants)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded" on the root logger; our weights line already says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    for handler in root.handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        for handler in root.handlers:
            handler.removeFilter(quiet)


def _hub_weights_available(model_name: str, tag: str) -> bool:
    """Whether open_clip could load ``tag`` without touching the network."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return False
    hub_id = cfg.get("hf_hub")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, sub = hub_id.rstrip("/").partition("/")
            repo_id = f"{repo}/{sub.split('/')[0]}" if sub else repo
            for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                found = try_to_load_from_cache(repo_id, filename)
                if isinstance(found, str):
                    return True
        except Exception as exc:  # noqa: BLE001 - cache probing is best effort
            log.debug("hub cache probe failed: %s", exc)
    return False


def load_clip(model_name: str, pretrained: str = RANDOM, *, device: str | torch.device = "cpu",
              seed: int = 0) -> ClipBackbone:
    """Create a frozen open_clip model (eval mode, no gradients) from a name and a weights spec."""
    import open_clip

    _register_configs()
    if model_name not in open_clip.list_models():
        raise WeightsNotFoundError(f"unknown open_clip model {model_name!r} (see open_clip.list_models(); "
                                   f"{TINY_CLIP!r} is mfx's tiny CPU config)")
    load_from: str | None
    tag: str | None = None
    if pretrained not in (RANDOM, "", None):
        tag, pretrained = split_tagged_path(model_name, pretrained)
    if pretrained in (RANDOM, "", None):
        pretrained, load_from = RANDOM, None
        info = f"{model_name}, random init (seed {seed}), NOT pretrained"
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser().resolve()
        tag = tag or tag_from_file_name(model_name, path)
        load_from = str(path)
        tagged = f", tagged {tag}" if tag else ""
        info = f"{model_name}, local weights {path.name}{tagged} (sha256 {_file_digest(path)})"
    elif any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise WeightsNotFoundError(f"weights file not found: {pretrained} (give an existing open_clip checkpoint path)")
    else:
        if os.environ.get("MFX_ALLOW_DOWNLOAD") != "1" and not _hub_weights_available(model_name, pretrained):
            raise WeightsNotFoundError(
                f"open_clip weights {model_name}/{pretrained} are not in the local cache and downloads are off; "
                f"save them on a connected machine and pass the file path as pretrained=PATH, "
                f"or set MFX_ALLOW_DOWNLOAD=1 where the hub is reachable")
        load_from = tag = pretrained
        info = f"{model_name}, open_clip pretrained '{pretrained}'"
    quick_gelu = choose_quick_gelu(model_name, tag)
    if quick_gelu and not model_name.endswith("-quickgelu"):
        log.info("%s: weights tagged %s were trained with QuickGELU; building the model with QuickGELU",
                 model_name, tag)
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(model_name, pretrained=load_from, device="cpu",
                                           force_quick_gelu=quick_gelu)
        except Exception as exc:  # noqa: BLE001 - open_clip raises many types for bad weights
            reason = " ".join(str(exc).split())[:300]
            raise WeightsNotFoundError(f"cannot load {model_name} weights from {load_from}: {reason}") from None
    info = f"{info}, {activation_name(model)}"
    model.eval().requires_grad_(False)
    model.to(device)
    visual = model.visual
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
        else int(visual.output_dim)
    return ClipBackbone(model, model_name, pretrained, info, size, mean, std, embed_dim,
                        open_clip.get_tokenizer(model_name))
