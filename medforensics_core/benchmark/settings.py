"""Generator settings of MedForensics-mini and the build plan (everything that defines one build).

A *setting* is a registered generator plus config overrides under one name
(``sdedit-s0.15`` = the ``sdedit`` plugin at strength 0.15); that name is the
``generator`` column of the manifest. The plan's :meth:`BuildPlan.key` hashes
every build parameter plus :data:`BUILDER_VERSION`, so a changed parameter (or
a changed builder) never reuses a stale cached build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

from ..errors import MfxError

BUILDER_VERSION = "medforensics-mini/5"
DEFAULT_SIZE, QUICK_SIZE = 128, 64
DEFAULT_PER_MODALITY, QUICK_PER_MODALITY = 300, 56


@dataclasses.dataclass(frozen=True)
class Setting:
    """One generator setting: a name, the registered generator it uses, and config overrides."""

    name: str
    generator: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""


DEFAULT_SETTINGS: tuple[Setting, ...] = (
    Setting("dcgan", "dcgan", {}, "unconditional GAN, transposed convolutions"),
    Setting("ddpm", "ddpm", {}, "unconditional diffusion, DDIM sampling"),
    Setting("sdedit-s0.5", "sdedit", {"strength": 0.5}, "img2img, half the schedule"),
    Setting("sdedit-s0.15", "sdedit", {"strength": 0.15}, "img2img, light touch (hard)"),
    Setting("ae-bilinear", "autoencoder", {"upsample": "bilinear"}, "reconstruction, bilinear + conv decoder"),
    Setting("ae-pixelshuffle", "autoencoder", {"upsample": "pixelshuffle"}, "reconstruction, pixel-shuffle decoder"),
    Setting("inpaint-r0.2", "inpaint", {"region": 0.2}, "local regeneration of a square of 20% side (hard)"),
)

# Training lengths. The full build trains each model a few minutes' worth on two
# CPU cores in total; --quick only needs fakes that exist and differ, fast.
FULL_TRAINING: Mapping[str, Mapping[str, Any]] = {
    "dcgan": {"steps": 150, "width": 8, "batch_size": 16},
    "ddpm": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "sdedit": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "inpaint": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "autoencoder": {"steps": 150, "width": 8, "batch_size": 16, "patch": 32},
}
QUICK_TRAINING: Mapping[str, Mapping[str, Any]] = {
    "dcgan": {"steps": 25, "width": 8, "batch_size": 8},
    "ddpm": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "sdedit": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "inpaint": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "autoencoder": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32},
}


def parse_settings(names: Sequence[str] | None) -> tuple[Setting, ...]:
    """Settings by name: a default setting name, or any registered generator name with its default config."""
    if not names:
        return DEFAULT_SETTINGS
    by_name = {s.name: s for s in DEFAULT_SETTINGS}
    from ..plugins import get_registry

    registry = get_registry()
    chosen = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in by_name:
            chosen.append(by_name[name])
            continue
        if name not in registry.names("generator"):
            raise MfxError(f"--generators: unknown generator setting {name!r}; settings: "
                           f"{', '.join(by_name)}; registered generators: {', '.join(registry.names('generator'))}")
        chosen.append(Setting(name, name, {}, "registered generator, default config"))
    if not chosen:
        raise MfxError("--generators: no generator setting given")
    if len({s.name for s in chosen}) != len(chosen):
        raise MfxError("--generators: a setting is named twice")
    return tuple(chosen)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Every parameter of one build; two builds with equal plans are identical, bit for bit."""

    size: int
    per_modality: int
    settings: tuple[Setting, ...]
    seed: int
    quick: bool
    modalities: tuple[str, ...]

    def training_overrides(self, setting: Setting) -> dict[str, Any]:
        table = QUICK_TRAINING if self.quick else FULL_TRAINING
        return {**table.get(setting.generator, {}), **dict(setting.overrides)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "builder": BUILDER_VERSION, "size": self.size, "per_modality": self.per_modality, "seed": self.seed,
            "quick": self.quick, "modalities": list(self.modalities),
            "settings": [{"name": s.name, "generator": s.generator, "config": self.training_overrides(s)}
                         for s in self.settings],
        }

    def key(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]
