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

#: 9: the manifest's ``scan`` column (images and splits as 8). 8: pipeline B (f8, 16 latent channels, trained longer)
#: inpaints at strength 0.5.
BUILDER_VERSION = "medforensics-mini/9"
DEFAULT_SIZE, QUICK_SIZE = 128, 64
DEFAULT_PER_MODALITY, QUICK_PER_MODALITY = 300, 56


@dataclasses.dataclass(frozen=True)
class Setting:
    """One generator setting: a name, the registered generator it uses, and config overrides.

    ``network`` names the trained network of a generator that is trained once on
    every modality (``conditional`` generators): settings naming the same network
    share it (one latent-diffusion pipeline serves reconstruction, img2img...),
    and the name is the manifest's ``network`` column. Per-modality generators
    (v1) leave it empty and get ``<setting>@<modality>`` ids.
    """

    name: str
    generator: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""
    network: str = ""


V1_SETTINGS: tuple[Setting, ...] = (
    Setting("dcgan", "dcgan", {}, "unconditional GAN, transposed convolutions"),
    Setting("ddpm", "ddpm", {}, "unconditional diffusion, DDIM sampling"),
    Setting("sdedit-s0.5", "sdedit", {"strength": 0.5}, "img2img, half the schedule"),
    Setting("sdedit-s0.15", "sdedit", {"strength": 0.15}, "img2img, light touch (hard)"),
    Setting("ae-bilinear", "autoencoder", {"upsample": "bilinear"}, "reconstruction, bilinear + conv decoder"),
    Setting("ae-pixelshuffle", "autoencoder", {"upsample": "pixelshuffle"}, "reconstruction, pixel-shuffle decoder"),
    Setting("inpaint-r0.2", "inpaint", {"region": 0.2}, "local regeneration of a square of 20% side (hard)"),
)

# v2: latent-diffusion pipelines, their autoencoder reconstructions, and learned super-resolution (see
# docs/explanations/benchmark.md). Two independent LDM pipelines (KL-f4 and KL-f8 autoencoders), so that
# holding out one network still leaves a latent-diffusion network in training.
_F4 = {"factor": 4, "latent_channels": 4}
# f8: the autoencoder trains on 64 px windows (8x8 latents), the U-Net on whole latents (the global layout).
# 16 latent channels, as the f8 autoencoders of SD3 and FLUX: at 8 channels the CPU-trained autoencoder lost
# colour and detail (PSNR 21-25 dB) and every inpainted region showed as a grey or brown disk.
_F8 = {"factor": 8, "latent_channels": 16, "ae_patch": 64, "ae_batch_size": 8, "unet_patch": 0}
V2_SETTINGS: tuple[Setting, ...] = (
    Setting("ldm-f4-recon", "ldm", {**_F4, "mode": "reconstruct"},
            "reconstruction through the KL-f4 autoencoder of LDM pipeline A", "ldm-kl-f4"),
    Setting("ldm-f4-img2img", "ldm", {**_F4, "mode": "img2img", "strength": 0.35},
            "latent img2img (SDEdit in latent space, strength 0.35), pipeline A", "ldm-kl-f4"),
    Setting("ldm-f8-inpaint", "ldm", {**_F8, "mode": "inpaint", "region": 0.3, "strength": 0.5},
            "latent inpainting of a round region of 30% of the side at strength 0.5 (the region's layout kept, its "
            "content regenerated), pasted back with a feathered edge, pipeline B", "ldm-kl-f8"),
    Setting("ldm-f8-sample", "ldm", {**_F8, "mode": "sample"},
            "modality-conditioned latent diffusion sample (DDIM from noise), pipeline B", "ldm-kl-f8"),
    Setting("sr-pixelshuffle", "superres", {"upsampler": "pixelshuffle"},
            "x2 super-resolution of a down-sampled real, pixel-shuffle up-sampler", "sr-pixelshuffle-x2"),
    Setting("sr-transposed", "superres", {"upsampler": "transposed"},
            "x2 super-resolution, transposed-convolution up-sampler", "sr-transposed-x2"),
    Setting("sr-resizeconv", "superres", {"upsampler": "resizeconv"},
            "x2 super-resolution, nearest resize + convolution up-sampler", "sr-resizeconv-x2"),
)
# Samples from noise are built and kept by name (`--generators ldm-f8-sample`, or the group v2), but not in the
# default build: after the minutes of training a CPU allows they are blotchy textures (first-order AUC 0.999 in
# the default build of 2026-12-01, montage in docs/explanations/benchmark.md), which the realism gate rejects.
NOT_IN_DEFAULT = ("ldm-f8-sample",)
DEFAULT_SETTINGS = tuple(s for s in V2_SETTINGS if s.name not in NOT_IN_DEFAULT)
SETTING_GROUPS: Mapping[str, tuple[Setting, ...]] = {"v1": V1_SETTINGS, "v2": V2_SETTINGS}
ALL_SETTINGS: tuple[Setting, ...] = V2_SETTINGS + V1_SETTINGS

# Training lengths per generator and build size; a network's own row, where it has one, goes over its
# generator's. The default build trains every network a few minutes' worth on two CPU cores in total;
# --quick only needs fakes that exist and differ, fast; "large" trains several times longer for better fakes.
FULL_TRAINING: Mapping[str, Mapping[str, Any]] = {
    "dcgan": {"steps": 150, "width": 8, "batch_size": 16},
    "ddpm": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "sdedit": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "inpaint": {"steps": 200, "width": 8, "batch_size": 16, "patch": 32, "sample_steps": 10},
    "autoencoder": {"steps": 150, "width": 8, "batch_size": 16, "patch": 32},
    "ldm": {"ae_width": 16, "ae_steps": 600, "ae_batch_size": 16, "ae_patch": 32, "unet_width": 32,
            "unet_steps": 600, "unet_batch_size": 16, "unet_patch": 16, "sample_steps": 20},
    "superres": {"width": 24, "blocks": 3, "steps": 200, "batch_size": 16, "patch": 32},
    # per network, over its generator's row: pipeline B's inpainted regions stay visible blobs with less
    # (edited-region AUC 0.83 at 600 U-Net steps, 0.77 at 1200; docs/explanations/benchmark.md)
    "ldm-kl-f8": {"ae_steps": 2400, "unet_steps": 1200},
}
QUICK_TRAINING: Mapping[str, Mapping[str, Any]] = {
    "dcgan": {"steps": 25, "width": 8, "batch_size": 8},
    "ddpm": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "sdedit": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "inpaint": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 5},
    "autoencoder": {"steps": 25, "width": 8, "batch_size": 8, "patch": 32},
    "ldm": {"ae_width": 16, "ae_steps": 150, "ae_batch_size": 16, "ae_patch": 32, "unet_width": 16,
            "unet_steps": 100, "unet_batch_size": 16, "unet_patch": 0, "sample_steps": 8},
    "superres": {"width": 16, "blocks": 2, "steps": 40, "batch_size": 8, "patch": 32},
}
LARGE_FACTOR = 6  # "large": every training length this many times longer (about an hour on two CPU cores)
STEP_KEYS = ("steps", "ae_steps", "unet_steps")
SIZES = ("quick", "default", "large")


def training_table(size_name: str) -> Mapping[str, Mapping[str, Any]]:
    """Training lengths for a build size: quick, default or large (the default table, trained longer)."""
    if size_name == "quick":
        return QUICK_TRAINING
    if size_name == "large":
        return {gen: {k: (v * LARGE_FACTOR if k in STEP_KEYS else v) for k, v in cfg.items()}
                for gen, cfg in FULL_TRAINING.items()}
    return FULL_TRAINING


def parse_settings(names: Sequence[str] | None) -> tuple[Setting, ...]:
    """Settings by name: a setting name, a group (``v1``, ``v2``), or any registered generator with its defaults."""
    if not names:
        return DEFAULT_SETTINGS
    by_name = {s.name: s for s in ALL_SETTINGS}
    from ..plugins import get_registry

    registry = get_registry()
    chosen: list[Setting] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in SETTING_GROUPS:
            chosen += SETTING_GROUPS[name]
            continue
        if name in by_name:
            chosen.append(by_name[name])
            continue
        if name not in registry.names("generator"):
            raise MfxError(f"--generators: unknown generator setting {name!r}; groups: {', '.join(SETTING_GROUPS)}; "
                           f"settings: {', '.join(by_name)}; registered generators: "
                           f"{', '.join(registry.names('generator'))}")
        cls = registry.generator(name)
        network = name if getattr(cls, "conditional", False) else ""
        chosen.append(Setting(name, name, {}, "registered generator, default config", network))
    if not chosen:
        raise MfxError("--generators: no generator setting given")
    if len({s.name for s in chosen}) != len(chosen):
        raise MfxError("--generators: a setting is named twice")
    return tuple(chosen)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Every parameter of one build. Two builds with equal plans are identical bit for bit on one machine and
    library set; across CPU types and library versions the trained generators' floats may differ (the card's
    ``images_sha256`` tells; see docs/explanations/benchmark.md, "Traceable numbers")."""

    size: int
    per_modality: int
    settings: tuple[Setting, ...]
    seed: int
    quick: bool
    modalities: tuple[str, ...]
    size_name: str = "default"      # quick | default | large: the training lengths
    sources: tuple[str, ...] = ()   # the optional real sources found installed (they change the content)

    def training_overrides(self, setting: Setting) -> dict[str, Any]:
        table = training_table("quick" if self.quick else self.size_name)
        network_row = table.get(setting.network, {}) if setting.network else {}
        return {**table.get(setting.generator, {}), **network_row, **dict(setting.overrides)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "builder": BUILDER_VERSION, "size": self.size, "per_modality": self.per_modality, "seed": self.seed,
            "quick": self.quick, "size_name": self.size_name, "modalities": list(self.modalities),
            "optional_sources": list(self.sources),
            "settings": [{"name": s.name, "generator": s.generator, "network": s.network,
                          "config": self.training_overrides(s)} for s in self.settings],
        }

    def key(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]
