"""Planning a comparison: every option, the detectors to run and the data, checked before any work starts.

A plan fails in one line (unknown detector, preset or key, a checkpoint of another
detector, a bad perturbation, a missing dataset) before a run directory exists.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...data.manifest import Manifest, read_manifest
from ...errors import CheckpointError, MfxError
from ...interfaces import Detector, Perturbation
from ..evaluate import DEFAULT_EVAL_BATCH


@dataclasses.dataclass
class CompareOptions:
    """Every option of a comparison; saved in ``config.json`` and reloaded verbatim by ``--resume``."""

    detectors: list[str]
    data: str | None = None
    protocol: str = "in-domain"
    preset: str | None = None
    device: str = "auto"
    seed: int = 0
    epochs: int | None = None
    budget_minutes: float | None = None
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    overrides: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    perturb: list[str] = dataclasses.field(default_factory=list)
    out: str = "runs"
    on_bad: str = "fail"
    quick: bool = False
    train_modalities: list[str] = dataclasses.field(default_factory=list)
    shots: int = 5
    holdout: str | None = None
    seeds: list[int] = dataclasses.field(default_factory=list)  # train once per seed (empty: just ``seed``)
    holdout_by: str | None = None  # leave-one-out: generator | network | family (None: network, see protocols)
    test_split: str = "test"
    batch_size: int = DEFAULT_EVAL_BATCH
    n_boot: int = 1000
    label: str = "compare"
    command: str = ""
    run_dir: str | None = None  # write exactly here (mfx evaluate --out) instead of a new folder under ``out``
    precision: str | None = None  # fp32|bf16|fp16 for every detector; None: each detector's default (fp32 baselines)
    workers: int = 0  # data-loading worker processes per process (0: the main process loads)
    allow_random_init: bool = False  # missing pretrained weights: random init (marked on every row) instead of failing
    allow: list[str] = dataclasses.field(default_factory=list)  # manifest problems to run with anyway (--allow)
    log: str | None = None  # "tensorboard": per-epoch scalars under RUN_DIR/tensorboard as well as mfx.log
    extends: list[dict[str, Any]] | None = None  # runs this one was extended from (--extend): what each kept
    checkpoint_sha256: dict[str, str] = dataclasses.field(default_factory=dict)  # detector -> sha256 of its checkpoint

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class DetectorSpec:
    """A detector to run: registered class, preset, ``--set`` overrides and an optional checkpoint."""

    name: str
    cls: type[Detector]
    preset: str
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None

    def config(self) -> Any:
        return self.cls.make_config(self.preset, **self.overrides)

    def build(self, device: torch.device) -> Detector:
        return self.cls(self.config(), preset=self.preset, device=device)

    def load(self, device: torch.device, path: str | None = None) -> Detector:
        return self.cls.load(path or self.checkpoint, device=device)


@dataclasses.dataclass
class RunPlan:
    """A comparison with everything resolved and checked before any work starts."""

    options: CompareOptions
    specs: list[DetectorSpec]
    data_path: Path
    preset: str
    perturbations: list[Perturbation]


def resolve_data(data: str | None, quick: bool = False, progress=None) -> tuple[Path, bool]:
    """The dataset path and whether it is the offline benchmark (used when ``--data`` is not given).

    A first use builds the benchmark; ``progress`` (the run's progress display) shows that build.
    """
    if data:
        path = Path(data).expanduser()
        if not path.exists():
            raise MfxError(f"{path}: dataset not found (give a folder, a folder holding manifest.csv, or a manifest)")
        return path, False
    from ...benchmark import default_dataset

    if progress is not None:
        return Path(default_dataset(quick=quick, progress=progress)), True
    from rich.console import Console

    from ..progress import RichProgress

    # callers without a display (mfx train, evaluate): a first build still shows its stages on stderr
    with RichProgress(Console(stderr=True)) as own:
        return Path(default_dataset(quick=quick, progress=own)), True


def open_manifest(path: Path) -> Manifest:
    """A manifest from a CSV, a folder holding ``manifest.csv``, or a folder layout (via ``data.open_dataset``)."""
    try:
        from ...data import open_dataset
    except ImportError:  # the data layer predates open_dataset: plain manifests only
        return read_manifest(path / "manifest.csv" if path.is_dir() else path)
    return open_dataset(path)


def parse_perturbations(specs: Sequence[str]) -> list[Perturbation]:
    """``["jpeg:50,blur:1.5"]`` -> perturbation objects from the registry (strength after the colon)."""
    from ...plugins import get_registry

    found: list[Perturbation] = []
    for item in ",".join(specs).split(","):
        item = item.strip()
        if not item:
            continue
        name, _, strength = item.partition(":")
        cls = get_registry().perturbation(name.strip())
        try:
            value = float(strength) if strength else float(cls.default_strength)
        except ValueError:
            raise MfxError(f"--perturb {item!r}: strength must be a number (e.g. {name}:{cls.default_strength:g})") \
                from None
        low, high = getattr(cls, "strength_range", (-math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            raise MfxError(f"--perturb {item!r}: strength must be a finite number in [{low:g}, {high:g}] "
                           f"({cls.description})")
        found.append(cls(value))
    return found


def checkpoint_detector_name(path: str | Path) -> str:
    """The detector a checkpoint belongs to, read from its header without loading tensors."""
    from ...api import checkpoint_detector_name as read_name

    return read_name(path)


def check_checkpoint(detector: str, path: str | Path) -> None:
    """Refuse, in one line and before any work, a checkpoint written by another detector."""
    owner = checkpoint_detector_name(path)
    if owner != detector:
        raise CheckpointError(f"{path}: checkpoint of detector {owner!r}, not {detector!r}")


def check_seeds(seeds: Sequence[int]) -> None:
    """``--seeds``: distinct integers (a repeated seed would train the same model twice and halve the sd)."""
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise MfxError(f"--seeds: seed(s) {', '.join(map(str, repeated))} given twice")


def check_manifest_sanity(data_path: Path, allow: Sequence[str], test_split: str = "test") -> None:
    """Refuse, at plan time, a manifest whose problems would silently change the result (unless allowed)."""
    from ...data.manifest import PROBLEM_KINDS, SPLITS, manifest_problems

    unknown = sorted(set(allow) - set(PROBLEM_KINDS))
    if unknown:
        raise MfxError(f"--allow {', '.join(unknown)}: known problems are {', '.join(PROBLEM_KINDS)}")
    splits = tuple(dict.fromkeys((*SPLITS, test_split)))
    problems = [p for p in manifest_problems(open_manifest(data_path), splits) if p.kind not in allow]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): mfx data check lists them)" if len(problems) > 1 else ""
        raise MfxError(f"{data_path}: {problems[0].message}{more}; fix the manifest, or run anyway with "
                       f"--allow {problems[0].kind}")


def check_numbers(options: CompareOptions) -> None:
    """The numeric options, refused at plan time when they make no sense (before a run directory exists)."""
    import math

    def number(value, flag: str, minimum: float, inclusive: bool = True) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MfxError(f"{flag} must be a number, not {value!r}")
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
            raise MfxError(f"{flag} must be {bound}, not {value!r}")

    number(options.epochs, "--epochs", 1)
    number(options.budget_minutes, "--budget-minutes", 0, inclusive=False)
    number(options.shots, "--shots", 1)
    number(options.batch_size, "--batch-size", 1)
    number(options.n_boot, "--n-boot", 0)


def run_seeds(options: CompareOptions) -> list[int]:
    """The seeds a comparison trains with: ``--seeds``, else the one ``--seed``."""
    return list(options.seeds) or [options.seed]


LOG_SINKS = ("tensorboard",)


def check_log_option(log: str | None) -> None:
    """``--log tensorboard`` needs the ``tensorboard`` package: refused in one line before any work."""
    if log is None:
        return
    if log not in LOG_SINKS:
        raise MfxError(f"--log must be one of {', '.join(LOG_SINKS)}, not {log!r}")
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise MfxError("--log tensorboard needs the tensorboard package (pip install tensorboard); "
                       "per-epoch metrics are in mfx.log and loss.png without it")


def plan_run(options: CompareOptions, progress=None) -> RunPlan:
    """Check names, presets, overrides, checkpoints and perturbations; resolve the data. No training yet."""
    from ...plugins import get_registry

    if not options.detectors:
        raise MfxError("name at least one detector (see `mfx plugins --kind detector`)")
    duplicates = sorted({d for d in options.detectors if options.detectors.count(d) > 1})
    if duplicates:
        raise MfxError(f"detector(s) named twice: {', '.join(duplicates)}")
    classes = {name: get_registry().detector(name) for name in options.detectors}
    for name in [*options.checkpoints, *options.overrides]:
        if name not in classes:
            raise MfxError(f"--checkpoint/--set names detector {name!r}, which is not compared "
                           f"({', '.join(options.detectors)})")
    for name, path in options.checkpoints.items():
        check_checkpoint(name, path)
    from ..protocols import check_holdout_by

    check_holdout_by(options.holdout_by)
    check_seeds(options.seeds)
    check_numbers(options)
    check_log_option(options.log)
    perturbations = parse_perturbations(options.perturb)
    data_path, is_benchmark = resolve_data(options.data, options.quick, progress)
    check_manifest_sanity(data_path, options.allow, options.test_split)
    preset = options.preset or ("tiny" if is_benchmark else "full")
    specs = [DetectorSpec(name, cls, preset, dict(options.overrides.get(name, {})), options.checkpoints.get(name))
             for name, cls in classes.items()]
    from ...plugins import check_plugin_references

    for spec in specs:
        if spec.checkpoint is None:
            config = spec.config()  # an unknown preset or key, a value out of range fails here, in one line
            check_plugin_references(config)
        else:
            spec.preset = stored_preset(spec.checkpoint) or spec.preset
    if specs and not options.preset and all(spec.checkpoint for spec in specs) \
            and len({spec.preset for spec in specs}) == 1:
        preset = specs[0].preset  # mfx evaluate: the report names the preset the checkpoint was trained with
    options = dataclasses.replace(with_absolute_paths(options), checkpoint_sha256=checkpoint_fingerprints(options))
    for spec in specs:
        spec.checkpoint = options.checkpoints.get(spec.name)
    return RunPlan(options, specs, Path(absolute_path(data_path)), preset, perturbations)


def absolute_path(path: str | os.PathLike) -> str:
    """``path`` made absolute against the current directory (symlinks kept, ``..`` folded).

    Why: a run directory records the paths it was given; relative ones would only mean something
    from the directory the command was started in, and ``--resume`` from elsewhere would not find them.
    """
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def with_absolute_paths(options: CompareOptions) -> CompareOptions:
    """The options with data, checkpoints, ``out`` and ``run_dir`` absolute, as a run directory records them."""
    return dataclasses.replace(
        options, data=absolute_path(options.data) if options.data else options.data,
        checkpoints={name: absolute_path(path) for name, path in options.checkpoints.items()},
        out=absolute_path(options.out) if options.out else options.out,
        run_dir=absolute_path(options.run_dir) if options.run_dir else options.run_dir)


def checkpoint_fingerprints(options: CompareOptions) -> dict[str, str]:
    """Every checkpoint's sha256, refused in one line when it differs from the one the run recorded.

    Why: a run records a checkpoint by its path; a file replaced at that path would change the metrics of a
    resumed (or extended) run silently. Checkpoints the run recorded no hash for (older runs) are hashed, not
    checked.
    """
    from ...data.manifest import sha256_file

    found: dict[str, str] = {}
    for name, path in options.checkpoints.items():
        found[name] = sha256_file(path)
        recorded = (options.checkpoint_sha256 or {}).get(name)
        if recorded and recorded != found[name]:
            raise CheckpointError(f"{path}: checkpoint of {name} changed since this run recorded it (sha256 "
                                  f"{found[name][:16]}, recorded {recorded[:16]}); restore that file or start "
                                  "a new run")
    return found


def stored_preset(checkpoint: str) -> str | None:
    """The preset a checkpoint was trained with, from its header (None when it records none)."""
    from ...checkpoint import load_metadata

    meta = load_metadata(checkpoint)
    preset = meta.get("preset") if isinstance(meta, dict) else None
    return str(preset) if preset else None
