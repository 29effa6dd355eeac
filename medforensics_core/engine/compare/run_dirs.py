"""The run directory of a comparison: creating (or resuming) it, its ``config.json`` and its log file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...errors import MfxError
from .. import distributed
from ..rundir import RunDir, new_run_dir
from .plan import CompareOptions, RunPlan, absolute_path, with_absolute_paths
from .report_build import LOG_FILE
from .session import Session, run_log

CONFIG_FILE = "config.json"


@contextlib.contextmanager
def run_logging(run_dir: RunDir, enabled: bool = True) -> Iterator[None]:
    """Send the run's diagnostics (and every warning) to ``RUN_DIR/mfx.log`` for the run's duration."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir.file(LOG_FILE), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    run_log.setLevel(logging.INFO)
    run_log.addHandler(handler)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        run_log.removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        handler.close()


RUN_LOCK = ".run"
"""``locked(RUN_DIR / RUN_LOCK)`` holds ``RUN_DIR/.run.lock`` while a process works in the run."""
RUN_LOCK_FILE = RUN_LOCK + ".lock"


def prepare_run_dir(plan: RunPlan, session: Session, resume: RunDir | None,
                    hold: contextlib.ExitStack | None = None) -> RunDir:
    """A new run directory (or the resumed one), agreed on by every rank; rank 0 writes config.json.

    With ``hold``, rank 0 takes the run's lock into it before anything is written, and every rank
    refuses together when another process holds it (a refusal on rank 0 alone would leave the other
    ranks waiting in a collective for ever).
    """
    run_dir = resume
    if session.rank == 0 and run_dir is None:
        run_dir = _fixed_run_dir(plan.options.run_dir) if plan.options.run_dir else \
            new_run_dir(plan.options.out, plan.options.label)
    refusal = None
    if session.rank == 0 and hold is not None:
        try:
            hold.enter_context(run_lock(run_dir))
        except MfxError as exc:
            refusal = str(exc)
    path, refusal = distributed.broadcast_object(
        (str(run_dir.path) if run_dir is not None else None, refusal), session.world_size)
    if refusal:
        raise MfxError(refusal)
    run_dir = RunDir(path)
    if session.rank == 0 and resume is None:
        run_dir.write_json(CONFIG_FILE, resolved_config(plan))
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: RunDir) -> Iterator[None]:
    """Hold ``RUN_DIR/.run.lock`` for the block; refused at once, in one line, while another process holds it.

    Why: two ``--resume`` of one run would train the same detectors and overwrite each other's files.
    Waiting makes no sense here (the other run may take hours), so a second process is refused, not queued.
    """
    from ...locking import locked

    def refuse(_message: str) -> None:
        raise MfxError(f"{run_dir.path} is in use by another mfx process (it holds "
                       f"{run_dir.path / RUN_LOCK_FILE}); wait for it to finish, or stop it")

    with locked(run_dir.path / RUN_LOCK, waiting=refuse, timeout=0):
        yield


def _fixed_run_dir(path: str) -> RunDir:
    from ...outputs import writable_dir

    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()):
        raise MfxError(f"{folder}: run directory exists and is not empty (choose a new --out)")
    return RunDir(writable_dir(folder, "run directory (--out)"))


def resolved_config(plan: RunPlan) -> dict[str, Any]:
    """``config.json``: the options with data path and preset resolved, and every detector's full config."""
    from ...config import config_to_dict

    options = dataclasses.replace(with_absolute_paths(plan.options), data=str(plan.data_path), preset=plan.preset)
    from ...plugins import get_registry

    registry = get_registry()
    detectors = {spec.name: {"class": f"{spec.cls.__module__}.{spec.cls.__qualname__}", "preset": spec.preset,
                             **registry.origin("detector", spec.name),
                             "overrides": spec.overrides, "checkpoint": spec.checkpoint,
                             "config": None if spec.checkpoint else config_to_dict(spec.config())}
                 for spec in plan.specs}
    return {"options": dataclasses.asdict(options), "seed": plan.options.seed, "detectors": detectors}


def load_resume_options(run_dir: str | Path) -> tuple[CompareOptions, RunDir]:
    """The options recorded in ``RUN_DIR/config.json`` (the source of truth on resume)."""
    folder = RunDir(run_dir)
    if not folder.path.is_dir():
        raise MfxError(f"{folder.path}: no such run directory to resume")
    config = folder.read_json(CONFIG_FILE)
    options = config.get("options") if isinstance(config, dict) else None
    if not isinstance(options, dict):
        raise MfxError(f"{folder.file(CONFIG_FILE)}: damaged (no 'options' object); cannot resume from it")
    try:
        return CompareOptions.from_dict(options), folder
    except (TypeError, ValueError) as exc:
        raise MfxError(f"{folder.file(CONFIG_FILE)}: damaged options ({exc}); cannot resume from it") from None


MERGE_MAY_DIFFER = frozenset({"seed", "seeds", "out", "command", "run_dir", "extends", "checkpoint_sha256"})
"""The options in which single-seed runs of one comparison may differ when :func:`merge_seed_runs` joins them."""


def merge_seed_runs(run_paths: Sequence[str | Path], out: str | Path) -> RunDir:
    """One multi-seed run directory under ``out`` made of single-seed runs of the same comparison.

    Why: ``--seeds 0,1,2`` trains the seeds one after another in one process; on a cluster each seed is
    better a job of its own (``--seed S``). Merging copies each run into ``seeds/<S>/`` of a new run
    directory and writes a ``config.json`` with ``seeds``, exactly the layout ``--seeds`` makes, so
    ``--resume`` then keeps every finished detector, trains what an interrupted job left, and writes the
    mean +- sd report with seed-paired tests. Runs are merged only if every option but the seed (and
    the output folder) and every detector's resolved config are the same: a changed default between two
    jobs would otherwise be averaged as if it were seed noise. The source runs are left untouched.
    """
    if len(run_paths) < 2:
        raise MfxError("--merge: give at least two run directories, one per seed")
    loaded = [(*load_resume_options(path), RunDir(path).read_json(CONFIG_FILE)) for path in run_paths]
    seeds = [_seed_of_mergeable(run, loaded[0]) for run in loaded]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise MfxError(f"--merge: seed(s) {', '.join(map(str, repeated))} trained by more than one of the runs "
                       "(merging them would count one training twice)")
    first, _, first_config = loaded[0]
    target = new_run_dir(out, f"{first.label}-seeds")
    for (_, folder, _), seed in zip(loaded, seeds):
        shutil.copytree(folder.path, target.path / "seeds" / str(seed),
                        ignore=shutil.ignore_patterns(CONFIG_FILE, LOG_FILE, RUN_LOCK_FILE))
    default_seed = next(f.default for f in dataclasses.fields(CompareOptions) if f.name == "seed")
    # ``seed`` of a multi-seed run only seeds the bootstrap: the value ``--seeds`` records without ``--seed``
    extends = [step for options, _, _ in loaded for step in options.extends or []]  # each job's --extend history
    digests = {name: digest for options, _, _ in loaded for name, digest in options.checkpoint_sha256.items()}
    options = dataclasses.replace(with_absolute_paths(first), seeds=seeds, seed=default_seed, out=absolute_path(out),
                                  run_dir=None, extends=extends or None, checkpoint_sha256=digests,
                                  command=f"{first.command} [merged: seeds {','.join(map(str, seeds))}]")
    target.write_json(CONFIG_FILE, {**first_config, "detectors": _comparable_detectors(first_config),
                                    "options": dataclasses.asdict(options), "seed": default_seed,
                                    "merged_from": {str(seed): str(folder.path.resolve())
                                                    for (_, folder, _), seed in zip(loaded, seeds)}})
    return target


def _seed_of_mergeable(run: tuple[CompareOptions, RunDir, dict[str, Any]],
                       first: tuple[CompareOptions, RunDir, dict[str, Any]]) -> int:
    """The seed of one run to merge, after checking it is the same comparison as ``first`` (one line if not)."""
    (options, folder, config), (first_options, first_dir, first_config) = run, first
    if len(options.seeds) > 1:
        raise MfxError(f"{folder.path}: already a multi-seed run (seeds {options.seeds}); --merge joins "
                       "single-seed runs")
    mine, theirs = with_absolute_paths(options), with_absolute_paths(first_options)
    differing = [f.name for f in dataclasses.fields(options)
                 if f.name not in MERGE_MAY_DIFFER and getattr(mine, f.name) != getattr(theirs, f.name)]
    differing += [f"the sha256 of {name}'s checkpoint" for name, digest in options.checkpoint_sha256.items()
                  if first_options.checkpoint_sha256.get(name, digest) != digest]
    if differing:
        raise MfxError(f"{folder.path}: not the same comparison as {first_dir.path} (differs in "
                       f"{', '.join(differing)}); only the seed may differ")
    if _comparable_detectors(config) != _comparable_detectors(first_config):
        raise MfxError(f"{folder.path}: its detectors' resolved configs differ from {first_dir.path}'s "
                       "(another mfx version or --set?); runs with different configs are not seeds of one "
                       "comparison")
    return options.seeds[0] if options.seeds else options.seed


def _comparable_detectors(config: dict[str, Any]) -> Any:
    """config.json's detectors with checkpoint paths absolute: runs recorded before paths were made absolute
    (relative to their working directory) still merge with newer runs of the same checkpoints."""
    detectors = config.get("detectors")
    if not isinstance(detectors, dict):
        return detectors
    return {name: {**entry, "checkpoint": absolute_path(entry["checkpoint"])}
            if isinstance(entry, dict) and entry.get("checkpoint") else entry for name, entry in detectors.items()}


def extend_run(run_path: str | Path, added: Sequence[str], overrides: dict[str, dict[str, str]],
               checkpoints: dict[str, str], out: str | Path, command: str) -> RunDir:
    """A copy of a finished comparison under ``out`` with detectors ``added``: resuming it trains only those.

    Why: a researcher who finished a comparison and then installs (or writes) one more detector wants it
    in the same report, on the same folds and test images, paired against the detectors already there,
    without training those again. The copy keeps every finished result (``results/<detector>.json``);
    its ``config.json`` lists the old detectors (with the configs they were trained with) and the new
    ones, so ``--resume`` of the copy trains the new ones only and reports all of them together. The kept
    results were computed by the code that made the source run: ``options.extends`` records that run,
    its mfx version and what was kept, and the report says so. Refused, before anything is written, when
    a name is already compared, when ``--set``/``--checkpoint`` name a kept detector, when the run is not
    finished (a detector missing or failed: ``--resume`` it first), or when the data's images differ from
    the ones the kept results were scored on. The source run is left untouched.
    """
    from .plan import plan_run

    options, source = load_resume_options(run_path)
    already = [name for name in added if name in options.detectors]
    if already:
        raise MfxError(f"--extend: {', '.join(already)} already compared in {source.path} (name only new detectors)")
    foreign = sorted((set(overrides) | set(checkpoints)) - set(added))
    if foreign:
        raise MfxError(f"--extend: --set/--checkpoint name {', '.join(foreign)}, which is not added (the kept "
                       "detectors keep the settings they were trained with)")
    _check_finished(source, options.detectors)
    config = source.read_json(CONFIG_FILE)
    extended = dataclasses.replace(
        options, detectors=[*options.detectors, *added], overrides={**options.overrides, **overrides},
        checkpoints={**options.checkpoints, **checkpoints}, out=str(out), run_dir=None,
        label=f"{options.label}-{'-'.join(added)}", command=f"{command} [extends {source.path.name}]",
        extends=[*(options.extends or []), {"run": str(source.path.resolve()), "kept": list(options.detectors),
                                            "mfx_version": _run_version(source), "added": list(added)}])
    plan = plan_run(extended)
    _check_same_images(source, plan.data_path)
    target = new_run_dir(out, extended.label)
    shutil.copytree(source.path, target.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
    new_config = resolved_config(plan)
    new_config["detectors"] = {**new_config["detectors"], **config.get("detectors", {})}  # kept ones as trained
    target.write_json(CONFIG_FILE, new_config)
    return target


NOT_COPIED = (CONFIG_FILE, LOG_FILE, "report.json", "report.md", "report.html", "metrics.csv", RUN_LOCK_FILE)
"""Left out of an extended copy: written anew for it (a stale report would name only the old detectors)."""


def discard_unstarted(run_path: str | Path) -> None:
    """Remove an extended copy that stopped before any added detector finished: it holds nothing new, and a
    copy that looks like an extension but is none should not be left for a later ``--resume`` to mistake."""
    from ..resume import RESULTS_FOLDER

    folder = Path(run_path)
    if not (folder / CONFIG_FILE).is_file():
        return
    options, _ = load_resume_options(folder)
    added = (options.extends or [{}])[-1].get("added", [])
    made = [path for name in added for path in folder.rglob(f"{RESULTS_FOLDER}/{name}.json")]
    if not made:
        shutil.rmtree(folder)


def _check_finished(source: RunDir, detectors: Sequence[str]) -> None:
    """Every detector of the run finished on every fold and seed (else its result would be trained anew by
    another version of the code, while the report called it kept)."""
    from ..resume import RESULTS_FOLDER

    folders = [p for p in source.path.rglob(RESULTS_FOLDER) if p.is_dir()]
    if not source.exists("report.json") or not folders:
        raise MfxError(f"--extend: {source.path} is not finished (no report); finish it with "
                       f"`mfx compare --resume {source.path}` first")
    for folder in folders:
        for name in detectors:
            status = _result_status(folder / f"{name}.json")
            if status != "ok":
                raise MfxError(f"--extend: {name} {status} in {folder.parent}; finish the run with "
                               f"`mfx compare --resume {source.path}` first")


def _result_status(path: Path) -> str:
    """``ok``, or what went wrong with a saved result, in words."""
    if not path.is_file():
        return "did not finish"
    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return "has a damaged result file"
    return "ok" if status == "ok" else "failed"


def _run_version(run: RunDir) -> str | None:
    """The mfx version that made a run (its environment.json), if recorded."""
    if not run.exists("environment.json"):
        return None
    return run.read_json("environment.json").get("mfx_version")


def _check_same_images(source: RunDir, data_path: Path) -> None:
    """Refuse to extend a run whose data changed since: its kept scores would pair with other pixels."""
    from .plan import open_manifest
    from .report_build import data_fingerprint

    recorded = (source.read_json("report.json").get("data") or {}).get("images_sha256")
    now = data_fingerprint(data_path, open_manifest(data_path).rows).get("images_sha256")
    if recorded and now and recorded != now:
        raise MfxError(f"--extend: {data_path} now holds other images (sha256 {now[:16]}) than the ones "
                       f"{source.path} was scored on ({recorded[:16]}); run the comparison again instead")
