"""``mfx compare``: train (or load) several detectors on the same data, score them on the same images, report.

Fairness is structural: one decoded dataset shared by every detector, one
protocol cutting it into folds, one seed re-applied before each detector, one
budget, one scoring loop (``engine.evaluate.score_with_timing``) with each
detector's own preprocessing. A detector that raises is reported as FAILED (its
traceback goes to the run's log file) and the others still finish. Results are
saved per detector as soon as each one finishes, so ``--resume`` skips them.

``mfx train`` and ``mfx evaluate`` are this module's building blocks run on
their own (:func:`train_detector`, :func:`run_compare` with a checkpoint).

The package is split by concept: :mod:`.plan` (options, detectors, data, checked
up front), :mod:`.detector_run` (one detector on one fold), :mod:`.report_build`
(the report dict and ``scores.csv``), :mod:`.fold_merge` (folds into one
report), :mod:`.run_dirs` (run directory, config, log); this module runs the
protocol fold by fold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from ...errors import MfxError
from .. import distributed
from ..context import ProgressFn, no_progress
from ..device import resolve_device
from ..protocols import DataBundle, Fold, ProtocolOptions, make_folds
from ..resume import ResultStore
from ..rundir import RunDir, environment
from .detector_run import (
    PerturbedImages,
    add_references,
    failed_result,
    fit_context,
    make_context,
    obtain_detector,
    run_detector,
    train_detector,
    trainable_params,
)
from .fold_merge import combine_folds, fold_paired_tests, fold_pairing_note
from .plan import (
    CompareOptions,
    DetectorSpec,
    RunPlan,
    check_checkpoint,
    checkpoint_detector_name,
    open_manifest,
    parse_perturbations,
    plan_run,
    resolve_data,
    run_seeds,
)
from .report_build import LOG_FILE, SCORE_COLUMNS, fold_report, ok_rows, paired_tests, summarize_scores, write_scores
from .seed_merge import combine_seeds, seed_paired_tests
from .run_dirs import (CONFIG_FILE, discard_unstarted, extend_run, load_resume_options, merge_seed_runs,
                       prepare_run_dir, resolved_config, run_logging)
from .session import Session, run_log

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "LOG_FILE", "SCORE_COLUMNS", "CompareOptions", "DetectorSpec", "PerturbedImages", "RunPlan",
           "Session", "add_references", "check_checkpoint", "checkpoint_detector_name", "combine_folds",
           "discard_unstarted", "extend_run", "failed_result", "fit_context", "fold_report", "load_resume_options",
           "merge_seed_runs", "make_context",
           "obtain_detector", "ok_rows", "open_manifest", "paired_tests", "parse_perturbations", "plan_run",
           "prepare_run_dir",
           "resolve_data", "resolved_config", "run_compare", "run_detector", "run_fold", "run_logging",
           "summarize_scores", "train_detector", "trainable_params", "write_scores"]


def resummarised(saved: dict[str, Any], fold: Fold, options: CompareOptions) -> dict[str, Any]:
    """A finished result of an earlier attempt with its metrics and CIs computed again from its saved scores.

    Why: the scores are what was computed; the summary also depends on how this version resamples
    (whole scans since the manifest's ``scan`` column, no interval for a degenerate group), and a
    report that mixed intervals over sources with intervals over scans would compare unlike things.
    """
    for row in saved["rows"].values():
        entry = row.get("entry") or {}
        if entry.get("status") == "ok" and "" in (row.get("scores") or {}):
            entry.update(summarize_scores(fold.test, np.asarray(row["scores"][""]), options,
                                          entry.get("threshold", 0.5)))
    return saved


def run_fold(plan: RunPlan, fold: Fold, fold_dir: RunDir, session: Session) -> dict[str, dict[str, Any]]:
    """Every detector on one fold; finished detectors of an earlier attempt are taken from disk."""
    store = ResultStore(fold_dir, writable=session.rank == 0)
    if any(spec.checkpoint is None for spec in plan.specs):
        _ = fold.val  # decode up front: a bad file stops the run here, not inside a detector
        if len(fold.train) == 0:
            raise MfxError(f"{plan.data_path}: no training images for this protocol (fold {fold.name or 'all'})")
    test_paths = [r.path for r in fold.test.rows]
    perturbed = {p.label(): PerturbedImages(fold.test, p, plan.options.seed) for p in plan.perturbations}
    results: dict[str, dict[str, Any]] = {}
    prefix = f"\\[{fold.name}] " if fold.name else ""
    for spec in plan.specs:
        saved = store.finished(spec.name, test_paths)
        if saved is not None:
            session.say(f"{prefix}[dim]{spec.name}: finished in an earlier attempt, kept[/]")
            results[spec.name] = resummarised(saved, fold, plan.options)
            continue
        if session.resumed and spec.checkpoint is None and spec.name not in session.added:
            session.say(f"{prefix}{spec.name}: unfinished in the earlier attempt; restarting it from scratch "
                        "(detectors keep no per-epoch checkpoints)")
        session.say(f"{prefix}[bold]{spec.name}[/]: {'loading checkpoint' if spec.checkpoint else 'training'} "
                    f"({spec.preset} preset)")
        ctx = make_context(plan.options, session.device, session.rank, session.world_size, session.progress,
                           fold_dir.path, spec.cls)
        try:
            result = run_detector(spec, fold, plan, ctx, fold_dir, perturbed)
        except Exception as exc:  # noqa: BLE001 - one broken detector must not sink the comparison
            run_log.error("%s failed (fold %s):\n%s", spec.name, fold.name or "-", traceback.format_exc())
            result = failed_result(spec, exc)
            session.say(f"{prefix}[red]{spec.name}: FAILED[/] {escape(result['rows'][spec.name]['entry']['error'])} "
                        f"(traceback in {session.log_path})")
        result["test_paths"] = test_paths
        store.save(spec.name, result)
        results[spec.name] = result
    return results


def run_compare(options: CompareOptions, *, console: Console | None = None, progress: ProgressFn = no_progress,
                resume: str | Path | None = None) -> tuple[dict[str, Any], RunDir]:
    """Run a comparison end to end; returns the report dict and the run directory (rank 0 wrote it)."""
    resumed = None
    if resume is not None:
        options, resumed = load_resume_options(resume)
    plan = plan_run(options, progress)
    data = DataBundle(open_manifest(plan.data_path), plan.data_path, on_bad=options.on_bad, progress=progress)
    seeds = run_seeds(options)
    folds = protocol_folds(options, data, seeds[0])  # protocol errors come before any folder is made
    rank, world_size, device = distributed.init_from_env(resolve_device(options.device))
    session = Session(device, rank, world_size, progress, console if rank == 0 else None, resumed=resumed is not None,
                      added=_never_started(options, resumed))
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until the run ends
        run_dir = prepare_run_dir(plan, session, resumed, hold=held)
        session.log_path = run_dir.file(LOG_FILE)
        with run_logging(run_dir, enabled=rank == 0):
            run_log.info("%s %s", "resuming" if resumed else "starting", options.command or options.detectors)
            announce_run_dir(run_dir, session)
            if len(seeds) == 1:
                report = _run_protocol(_with_seed(plan, seeds[0]), data, folds, run_dir, session)
            else:
                report = _run_seeds(plan, data, seeds, run_dir, session)
    return report, run_dir


def announce_run_dir(run_dir: RunDir, session: Session) -> None:
    """Name the run directory before any work: an interrupted run is finished with ``--resume RUN_DIR``, and
    the interrupt message points back to this line."""
    if session.resumed:
        session.say(f"resuming [bold]{escape(str(run_dir.path))}[/] (its config.json is the source of truth)",
                    soft_wrap=True)
    else:
        session.say(f"run directory: [bold]{escape(str(run_dir.path))}[/]", soft_wrap=True)


def _never_started(options: CompareOptions, resumed: RunDir | None) -> frozenset[str]:
    """The detectors the last ``--extend`` added, while the extended copy has not run yet (no ``mfx.log``)."""
    if resumed is None or not options.extends or resumed.exists(LOG_FILE):
        return frozenset()
    return frozenset(options.extends[-1]["added"])


def protocol_folds(options: CompareOptions, data: DataBundle, seed: int) -> list[Fold]:
    return make_folds(options.protocol, data, ProtocolOptions(
        test_split=options.test_split, train_modalities=tuple(options.train_modalities), shots=options.shots,
        holdout=options.holdout, holdout_by=options.holdout_by, seed=seed))


def _with_seed(plan: RunPlan, seed: int) -> RunPlan:
    return dataclasses.replace(plan, options=dataclasses.replace(plan.options, seed=seed, seeds=[]))


def _run_seeds(plan: RunPlan, data: DataBundle, seeds: list[int], run_dir: RunDir,
               session: Session) -> dict[str, Any]:
    """The whole protocol once per seed (each in ``seeds/<seed>/``), then one report: mean +- sd over seeds."""
    if session.rank == 0:
        run_dir.write_json("environment.json", environment(session.device))
    reports: dict[int, dict[str, Any]] = {}
    runs: dict[int, dict[str, tuple[Fold, dict[str, dict[str, Any]]]]] = {}
    for i, seed in enumerate(seeds, start=1):
        session.say(f"[bold]seed {seed}[/] ({i} of {len(seeds)})")
        seed_dir = RunDir(run_dir.path / "seeds" / str(seed))
        seed_dir.path.mkdir(parents=True, exist_ok=True)
        seed_plan = _with_seed(plan, seed)
        reports[seed], runs[seed] = _run_folds(seed_plan, data, protocol_folds(seed_plan.options, data, seed),
                                               seed_dir, session)
        if session.rank == 0:
            _write_reports(seed_dir, reports[seed])
    single = all(len(r) == 1 for r in runs.values())
    paired = seed_paired_tests({s: next(iter(r.values())) for s, r in runs.items()}, plan.options) if single \
        else fold_paired_tests(runs, plan.options.n_boot, plan.options.seed)
    report = combine_seeds(reports, paired, folds=1 if single else len(next(iter(runs.values()))))
    if session.rank == 0:
        _write_reports(run_dir, report)
    return report


def _run_protocol(plan: RunPlan, data: DataBundle, folds: list[Fold], run_dir: RunDir,
                  session: Session) -> dict[str, Any]:
    """Every fold of the protocol, then one report (folds combined for leave-one-generator-out)."""
    report, runs = _run_folds(plan, data, folds, run_dir, session)
    if len(folds) > 1:
        report["paired"] = fold_paired_tests({plan.options.seed: runs}, plan.options.n_boot, plan.options.seed)
        report["notes"].insert(2, fold_pairing_note([plan.options.seed]))
    if session.rank == 0:
        _write_reports(run_dir, report)
    return report


def _run_folds(plan: RunPlan, data: DataBundle, folds: list[Fold], run_dir: RunDir,
               session: Session) -> tuple[dict[str, Any], dict[str, tuple[Fold, dict[str, dict[str, Any]]]]]:
    """Every fold's detectors and report; returns the (combined) report and each fold's raw results."""
    env = environment(session.device)
    if session.rank == 0:
        run_dir.write_json("environment.json", env)
    reports: dict[str, dict[str, Any]] = {}
    runs: dict[str, tuple[Fold, dict[str, dict[str, Any]]]] = {}
    for fold in folds:
        fold_dir = RunDir(run_dir.path / "folds" / fold.name) if len(folds) > 1 else run_dir
        fold_dir.path.mkdir(parents=True, exist_ok=True)
        results = run_fold(plan, fold, fold_dir, session)
        runs[fold.name] = (fold, results)
        reports[fold.name] = fold_report(plan, fold, results, data, env)
        if session.rank == 0:
            write_scores(fold_dir, fold, results)
            if len(folds) > 1:
                _write_reports(fold_dir, reports[fold.name])
    report = combine_folds(plan, reports) if len(folds) > 1 else reports[folds[0].name]
    return report, runs


def _write_reports(run_dir: RunDir, report: dict[str, Any]) -> None:
    from ...report import write_reports

    write_reports(run_dir, report)
