"""``mfx compare``, ``mfx train``, ``mfx evaluate`` and ``mfx predict``: thin shells over ``engine.compare``.

The commands parse options and print; the work is in the engine so that the
four commands share one training function, one scoring loop and one report
builder. Under ``torchrun`` only rank 0 prints and writes.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from ..errors import MfxError
from . import cli, console
from .options import DATASET_ON_BAD, FILES_ON_BAD, detector_overrides, on_bad_option


class DetectorsFailed(MfxError):
    """Some detectors of a comparison failed (the report still holds the others)."""

    exit_code = 1


def _command_line() -> str:
    return "mfx " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``NAME=VALUE`` options (``--checkpoint dski=runs/x/dski.safetensors``)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise MfxError(f"{option} expects NAME=VALUE, got {value!r}")
        out[name.strip()] = rest.strip()
    return out


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _progress_and_run(runner):
    """Run ``runner(progress)`` inside a rich progress display (drawn only on a terminal)."""
    from ..engine.progress import RichProgress

    with RichProgress(console) as progress:
        return runner(progress)


def _finish_distributed() -> None:
    from ..engine import distributed

    distributed.shutdown()


def _report_outcome(report: dict, run_dir, rank: int) -> None:
    """Print the report tables (rank 0) and fail with exit code 1 when a detector failed."""
    if rank != 0:
        return
    from ..report import print_report

    print_report(console, report)
    console.print(f"run directory: [bold]{run_dir.path}[/]")
    failed = [name for name, entry in report["detectors"].items() if entry.get("status") != "ok"]
    if failed:
        raise DetectorsFailed(f"{len(failed)} detector(s) failed: {', '.join(failed)} "
                              f"(see {run_dir.path / 'mfx.log'}); the others are reported")


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _remember_allow(ctx: click.Context, _param, value) -> tuple[str, ...]:
    ctx.meta["mfx_allow"] = list(value)
    return value


def _allowed() -> list[str]:
    """The ``--allow`` values of the running command (kept out of every command's signature)."""
    return list(click.get_current_context().meta.get("mfx_allow", []))


def data_options(function):
    """Options every run command shares."""
    options = [
        click.option("--quick", is_flag=True, help="Without --data: use the quick build of the offline benchmark."),
        on_bad_option(DATASET_ON_BAD),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--data", type=click.Path(path_type=str),
                     help="Dataset: folder, folder with manifest.csv, or manifest CSV (default: offline benchmark)."),
        click.option("--allow", type=click.Choice(["split-overlap", "unknown-split", "outside-root"]), multiple=True,
                     expose_value=False, callback=_remember_allow,
                     help="Run despite this manifest problem (repeatable; mfx data check lists them)."),
    ]
    for option in options:
        function = option(function)
    return function


PRECISION = click.Choice(["fp32", "bf16", "fp16"])


PERTURB_FORMAT = "NAME:STRENGTH, comma-separated; a bare NAME takes the perturbation's default (jpeg = jpeg:75)."


def precision_option(function, scoring_only: bool = False):
    what = "scoring" if scoring_only else "training and scoring"
    return click.option("--precision", type=PRECISION, default=None,
                        help=f"Numeric precision of {what} (recorded in the report). "
                             "Default: each detector's own (fp32 for the baselines, as their official code).")(function)


def scoring_precision_option(function):
    """``--precision`` of a command that only scores (``mfx evaluate``)."""
    return precision_option(function, scoring_only=True)


WORKERS_HELP = ("Data-loading worker processes (decoding, preprocessing, DSKI's noise statistics), so that a GPU is "
                "not kept waiting for the CPU. 0 loads in the main process.")


def workers_option(function):
    return click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                        help=WORKERS_HELP + " Training draws its random augmentation in the workers: a run repeats "
                             "itself for the same --workers, and differs in those draws from another value; scores "
                             "of a trained model do not depend on it.")(function)


def scoring_workers_option(function):
    """``--workers`` of a command that only scores: the scores do not depend on it."""
    return click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                        help=WORKERS_HELP + " The scores do not depend on it.")(function)


def random_init_option(function):
    return click.option("--allow-random-init", is_flag=True,
                        help="A detector whose pretrained weights are missing trains from random weights instead "
                             "of stopping; every report row of it is marked '(random init)'.")(function)


# --------------------------------------------------------------------------- compare


@cli.command("compare")
@click.argument("detectors", nargs=-1)
@data_options
@click.option("--protocol", type=click.Choice(["in-domain", "leave-one-generator-out", "cross-modality", "few-shot"]),
              default="in-domain", show_default=True, help="How the data is cut into train and test.")
@click.option("--preset", help="Detector preset (tiny|full); default tiny on the offline benchmark, full otherwise.")
@click.option("--epochs", type=int, help="Epochs for every detector (overrides their configs).")
@click.option("--budget-minutes", type=float, help="Wall-clock training budget per detector.")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME=PATH",
              help="Use this checkpoint for detector NAME instead of training it (repeatable).")
@click.option("--set", "settings", multiple=True, metavar="NAME.key=value", help="Override a detector config key.")
@click.option("--perturb", multiple=True, metavar="jpeg:50,blur:1.5,...",
              help="Also score test images under these perturbations (robustness). " + PERTURB_FORMAT)
@click.option("-o", "--out", default="runs", show_default=True, type=click.Path(path_type=str),
              help="Folder that receives the run directory.")
@click.option("--resume", type=click.Path(path_type=str), help="Finish an interrupted run (its config.json rules).")
@click.option("--merge", "merge", multiple=True, type=click.Path(path_type=str), metavar="RUN_DIR",
              help="Join single-seed runs of one comparison (e.g. cluster jobs with --seed 0, --seed 1, ...) into "
                   "a new multi-seed run under --out, as --seeds would have made it; finishes what they left and "
                   "reports mean +- sd (repeatable; only the seed may differ).")
@click.option("--extend", type=click.Path(path_type=str), metavar="RUN_DIR",
              help="Add DETECTORS to a finished comparison: train only them, on its folds and test images, and "
                   "report all together in a copy under --out (the run is left untouched).")
@click.option("--train-modalities", help="cross-modality: comma-separated modalities to train on.")
@click.option("--shots", type=int, default=5, show_default=True,
              help="few-shot: support images of the held-out generator.")
@click.option("--holdout", help="few-shot: generator to hold out (default: the first in name order).")
@click.option("--holdout-by", metavar="generator|network|family",
              help="leave-one-generator-out, few-shot: what one fold holds out. network (default): settings that "
                   "share a trained network go out together, so none of its output reaches training; family: a "
                   "whole generator family; generator: each setting alone (falls back to this, with a note, when "
                   "the manifest records no network).")
@click.option("--seeds", metavar="0,1,2",
              help="Train every detector once per seed and report mean +- sd over seeds beside each seed's CIs "
                   "(overrides --seed; each seed's run is kept in RUN_DIR/seeds/<seed>/).")
@click.option("--n-boot", type=int, default=1000, show_default=True,
              help="Bootstrap resamples (of test sources, or whole scans when the manifest has a scan column) "
                   "for CIs and paired tests.")
@click.option("--log", "log_sink", type=click.Choice(["tensorboard"]),
              help="Also log per-epoch metrics to TensorBoard (RUN_DIR/tensorboard; needs `pip install tensorboard`)."
                   " mfx.log and loss.png always have them.")
@precision_option
@workers_option
@random_init_option
def compare_command(log_sink, detectors, data, device, seed, on_bad, quick, protocol, preset, epochs, budget_minutes,
                    checkpoints, settings, perturb, out, resume, merge, extend, train_modalities, shots, holdout,
                    holdout_by, seeds, n_boot, precision, workers, allow_random_init) -> None:
    """Train (or load) DETECTORS on the same data, evaluate them on the same images, report.

    \b
    Examples:
      mfx compare dski cnnspot univfd                    offline benchmark, tiny presets
      mfx compare freq npr --protocol leave-one-generator-out
      mfx compare freq npr --seeds 0,1,2                 mean +- sd over three trainings
      mfx compare dski univfd --perturb jpeg:50,blur:1.5
      mfx compare --resume runs/20261125-180000-compare  finish an interrupted run
      mfx compare --merge runs/A --merge runs/B          join two seeds run as separate jobs
      mfx compare --extend runs/A freq                   add a detector to a finished comparison
    """
    from ..engine.compare import CompareOptions, run_compare

    if epochs is not None and budget_minutes is not None:
        raise MfxError("give --epochs or --budget-minutes, not both")
    options = CompareOptions(
        allow=_allowed(), detectors=list(detectors), data=data, protocol=protocol, preset=preset, device=device, seed=seed,
        epochs=epochs, budget_minutes=budget_minutes, checkpoints=_pairs(checkpoints, "--checkpoint"),
        overrides=detector_overrides(settings), perturb=list(perturb), out=out, on_bad=on_bad, quick=quick,
        train_modalities=_csv(train_modalities), shots=shots, holdout=holdout, holdout_by=holdout_by,
        seeds=_seed_list(seeds), n_boot=n_boot, log=log_sink,
        label="compare-" + "-".join(detectors), command=_command_line(), precision=precision, workers=workers,
        allow_random_init=allow_random_init)
    _check_names(detectors)
    if merge and extend:
        raise MfxError("give --merge or --extend, not both (merge first, then extend the merged run)")
    if merge:
        resume = _merged_run(merge, resume, detectors, out)
    elif extend:
        resume = _extended_run(extend, resume, options)
    elif resume and detectors:
        _check_resume_detectors(resume, list(detectors))
    elif not resume and not detectors:
        raise MfxError("name the detectors to compare (e.g. `mfx compare dski cnnspot univfd`), or --resume RUN_DIR")
    try:
        report, run_dir = _progress_and_run(
            lambda progress: run_compare(options, console=console, progress=progress, resume=resume))
        _report_outcome(report, run_dir, _rank())
    except MfxError:
        if extend:  # a copy whose run stopped before any added detector finished is not left behind
            from ..engine.compare import discard_unstarted

            discard_unstarted(resume)
        raise
    finally:
        _finish_distributed()


def _merged_run(merge: tuple[str, ...], resume: str | None, detectors, out: str) -> str:
    """``--merge``: the new multi-seed run directory that joins the runs (then resumed like ``--resume``)."""
    from ..engine.compare import merge_seed_runs

    if resume or detectors:
        raise MfxError("--merge takes run directories only (no detector names, no --resume): the runs' "
                       "config.json says what was compared")
    merged = merge_seed_runs(list(merge), out)
    console.print(f"merged {len(merge)} runs into [bold]{merged.path}[/]")
    return str(merged.path)


EXTEND_TAKES = frozenset({"detectors", "extend", "settings", "checkpoints", "out"})
"""What ``--extend`` takes from the command line; every other option is the run's (its config.json)."""


def _extended_run(extend: str, resume: str | None, options) -> str:
    """``--extend``: a copy of the run with the new detectors (then resumed like ``--resume``)."""
    import os

    from ..engine.compare import extend_run

    if resume:
        raise MfxError("give --extend or --resume, not both")
    if _rank() != 0 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MfxError("--extend makes a copy in one process: run it without torchrun, stop it once it trains "
                       "if you like, then `torchrun ... mfx compare --resume COPY`")
    if not options.detectors:
        raise MfxError("--extend RUN_DIR: name the detectors to add (e.g. `mfx compare --extend RUN_DIR freq`)")
    given = _options_given(EXTEND_TAKES)
    if given:
        raise MfxError(f"--extend takes the run's own options (its config.json), not {', '.join(given)}: a "
                       "detector added with other options would not be paired fairly (run a new comparison)")
    extended = extend_run(extend, options.detectors, options.overrides, options.checkpoints, options.out,
                          options.command)
    console.print(f"extended {extend} into [bold]{extended.path}[/]: training {' '.join(options.detectors)}")
    return str(extended.path)


def _options_given(allowed: frozenset[str]) -> list[str]:
    """The options typed on the command line (or set from the environment) that are not in ``allowed``."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [param.opts[0] for param in ctx.command.params
            if param.name not in allowed and ctx.get_parameter_source(param.name)
            not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]


def _seed_list(text: str | None) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]``; anything else is one error line."""
    if text is None:
        return []
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MfxError(f"--seeds takes comma-separated integers (e.g. 0,1,2), not {text!r}") from None
    if not seeds:
        raise MfxError("--seeds: give at least one seed (e.g. 0,1,2)")
    return seeds


def _check_names(detectors) -> None:
    """Unknown detector names fail in one line before anything starts (the registry suggests a close name)."""
    from ..plugins import get_registry

    for name in detectors:
        get_registry().detector(name)


def _check_resume_detectors(resume: str, detectors: list[str]) -> None:
    from ..engine.compare import load_resume_options

    recorded, _ = load_resume_options(resume)
    if recorded.detectors != detectors:
        raise MfxError(f"{resume}: this run compares {' '.join(recorded.detectors)}; --resume takes them from its "
                       "config.json (leave the detector names out)")


# --------------------------------------------------------------------------- train


@cli.command("train")
@click.argument("detector")
@data_options
@click.option("--preset", help="Detector preset (tiny|full); default tiny on the offline benchmark, full otherwise.")
@click.option("--epochs", type=int, help="Override the config's epochs.")
@click.option("--budget-minutes", type=float, help="Wall-clock training budget.")
@click.option("--set", "settings", multiple=True, metavar="[NAME.]key=value",
              help="Override a config key (DETECTOR.key=value as in compare, or just key=value).")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="Checkpoint file to write (default DETECTOR.safetensors).")
@precision_option
@workers_option
@random_init_option
def train_command(detector, data, device, seed, on_bad, quick, preset, epochs, budget_minutes, settings,
                  output, precision, workers, allow_random_init) -> None:
    """Train DETECTOR on the train split and save a safetensors checkpoint.

    \b
    Examples:
      mfx train freq -o freq.safetensors                   offline benchmark, tiny preset
      mfx train univfd --data my-data --set univfd.epochs=5 --device cuda
      torchrun --nproc_per_node 2 --no-python mfx train cnnspot --data my-data
    """
    from ..engine import distributed
    from ..engine.compare import CompareOptions, make_context, open_manifest, plan_run, train_detector
    from ..engine.device import resolve_device
    from ..engine.progress import RichProgress
    from ..engine.protocols import DataBundle, ProtocolOptions, in_domain
    from ..outputs import writable_file

    options = CompareOptions(allow=_allowed(), detectors=[detector], data=data, preset=preset, device=device,
                             seed=seed, epochs=epochs, budget_minutes=budget_minutes,
                             overrides={detector: detector_overrides(settings, detector=detector).get(detector, {})},
                             on_bad=on_bad, quick=quick, command=_command_line(), precision=precision,
                             workers=workers, allow_random_init=allow_random_init)
    plan = plan_run(options)
    target = writable_file(output or f"{detector}.safetensors", "checkpoint (-o)")  # fail now, not after training
    try:
        rank, world_size, torch_device = distributed.init_from_env(resolve_device(device))
        with RichProgress(console, enabled=console.is_terminal and rank == 0) as progress:
            data_bundle = DataBundle(open_manifest(plan.data_path), plan.data_path, on_bad=on_bad,
                                     progress=progress)
            fold = in_domain(data_bundle, ProtocolOptions(seed=seed))[0]
            ctx = make_context(options, torch_device, rank, world_size, progress, detector_cls=plan.specs[0].cls)
            trained, seconds = train_detector(plan.specs[0], fold.train, fold.val, ctx)
        if rank == 0:
            trained.save(target)
            console.print(f"trained [bold]{detector}[/] ({plan.preset} preset, {ctx.precision}, "
                          f"{trained.weights_info()}) on "
                          f"{len(fold.train)} images in {seconds:.1f} s -> [bold]{target}[/]")
            for key, value in trained.train_info.items():
                console.print(f"  {key}: {value}")
    finally:
        _finish_distributed()


# --------------------------------------------------------------------------- evaluate


@cli.command("evaluate")
@click.argument("detector")
@click.option("--checkpoint", required=True, type=click.Path(path_type=str),
              help="Checkpoint written by mfx train/compare.")
@data_options
@click.option("--split", default="test", show_default=True, help="Manifest split to evaluate on.")
@click.option("--perturb", multiple=True, metavar="jpeg:50,...",
              help="Also score under these perturbations. " + PERTURB_FORMAT)
@click.option("-o", "--out", type=click.Path(path_type=str),
              help="Run directory to write (default: a new one under runs/).")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for CIs.")
@scoring_precision_option
@scoring_workers_option
def evaluate_command(detector, checkpoint, data, device, seed, on_bad, quick, split, perturb, out, n_boot,
                     precision, workers) -> None:
    """Evaluate a trained DETECTOR checkpoint: metrics per modality and generator, with CIs, and a run directory.

    \b
    Examples:
      mfx evaluate freq --checkpoint freq.safetensors                  offline benchmark, test split
      mfx evaluate dski --checkpoint dski.safetensors --data my-data -o runs/dski-eval --perturb jpeg:50
    """
    from ..engine.compare import CompareOptions, run_compare

    options = CompareOptions(allow=_allowed(), detectors=[detector], data=data, device=device, seed=seed,
                             on_bad=on_bad, quick=quick,
                             checkpoints={detector: checkpoint}, perturb=list(perturb), test_split=split,
                             n_boot=n_boot, label=f"evaluate-{detector}", command=_command_line(),
                             run_dir=out, precision=precision, workers=workers)
    try:
        report, run_dir = _progress_and_run(
            lambda progress: run_compare(options, console=console, progress=progress))
        _report_outcome(report, run_dir, _rank())
    finally:
        _finish_distributed()


# --------------------------------------------------------------------------- predict


class NothingScored(MfxError):
    """``mfx predict`` scored no image at all (no input, or only bad ones)."""

    exit_code = 1


def scoring_options(command):
    """The options ``mfx predict`` and ``mfx calibrate`` share: how a file is scored, on what, and bad files."""
    options = [
        click.option("--crop", type=click.Choice(["tiles", "center"]), default="tiles", show_default=True,
                     help="tiles: score the whole image by tiles of the detector's input size; center: only the "
                          "centre crop the detector's preprocessing takes."),
        click.option("--aggregate", type=click.Choice(["max", "mean"]), default="max", show_default=True,
                     help="Image score from tile scores: max (local edits) or mean (fully generated images)."),
        click.option("--stride", type=float, default=0.5, show_default=True,
                     help="Tile step, as a fraction of a tile."),
        on_bad_option(FILES_ON_BAD),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps."),
        click.option("--modality",
                     help="Modality of every input (ct, mri, xray, ultrasound... or a DICOM code such as MR) "
                          "[default: the DICOM Modality tag / NIfTI header of each file]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("predict")
@click.argument("inputs", nargs=-1, required=True, metavar="[DETECTOR] FILES_OR_DIRS...")
@click.option("--checkpoint", required=True, type=click.Path(path_type=str),
              help="Checkpoint written by mfx train/compare/calibrate (it names its detector).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--threshold", type=float, default=None,
              help="Score above which an image is called fake [default: the checkpoint's validated threshold, "
                   "else 0.5].")
@click.option("--explain", type=click.Path(path_type=Path), metavar="OUTDIR",
              help="Write a heat-map overlay PNG per input (its most suspicious frame) into OUTDIR.")
@scoring_options
def predict_command(inputs, checkpoint, as_json, threshold, crop, aggregate, stride, explain, on_bad,
                    device, modality) -> None:
    """Score real-world files (DICOM incl. multi-frame, NIfTI slices, PNG, JPEG, TIFF) with a trained detector.

    The detector is the one the checkpoint was written by; naming it first is optional (it is checked).

    \b
    Examples:
      mfx predict --checkpoint dski.safetensors scan.dcm
      mfx predict dski scans/ --checkpoint dski.safetensors --explain heatmaps/ --json
    """
    from ..api import checkpoint_detector_name, load_detector
    from ..engine.calibrate import scoring_mismatch
    from ..engine.context import FitContext
    from ..engine.device import resolve_device
    from ..engine.predict import (PredictionInterrupted, PredictOptions, check_explain_dir, checkpoint_threshold,
                                  predict_files)
    from ..engine.progress import RichProgress
    from ..engine.tiles import TileConfig

    detector = checkpoint_detector_name(checkpoint)
    inputs = _drop_detector_name(inputs, detector, checkpoint)
    tiles = TileConfig(mode=crop, aggregate=aggregate, stride=stride)
    if explain is not None:
        check_explain_dir(explain)
    torch_device = resolve_device(device)
    model = load_detector(checkpoint, device=str(torch_device))
    value, source = checkpoint_threshold(model, threshold)
    mismatch = scoring_mismatch(model, tiles) if threshold is None else None
    options = PredictOptions(threshold=value, on_bad=on_bad, modality=modality, tiles=tiles, explain=explain)
    interrupted = None
    with RichProgress(console, enabled=console.is_terminal and not as_json) as progress:
        ctx = FitContext(device=torch_device, progress=progress)
        try:
            predictions, bad = predict_files(model, inputs, ctx, options)
        except PredictionInterrupted as stop:  # show what was scored, then stop as interrupted
            interrupted, predictions, bad = stop, stop.predictions, stop.bad
        scoring = _scoring_line(model, tiles)
    verdict = {"detector": detector, "checkpoint": checkpoint, "weights": model.weights_status(),
               "weights_info": model.weights_info(), "threshold": value, "threshold_source": source,
               "threshold_warning": mismatch, "scoring": scoring, "predictions": [p.to_dict() for p in predictions],
               "bad": [{"path": p, "reason": r} for p, r in bad], "interrupted": interrupted is not None}
    if as_json:
        click.echo(json.dumps(verdict, indent=2))
    else:
        _print_predictions(verdict, predictions, bad)
    if interrupted is not None:
        raise KeyboardInterrupt
    if not predictions:
        raise NothingScored(f"no image was scored ({len(bad)} bad input(s))" if bad else "no image was scored")


def _scoring_line(model, tiles) -> dict:
    from ..engine.tiles import input_size

    size = input_size(model)
    return {"mode": tiles.mode, "aggregate": tiles.aggregate, "tile_size": size, "stride_fraction": tiles.stride}


def _drop_detector_name(inputs: tuple[str, ...], detector: str, checkpoint: str) -> tuple[str, ...]:
    """``mfx predict NAME FILES...``: a first argument naming a detector (not a file) must match the checkpoint."""
    from ..plugins import get_registry

    first = inputs[0]
    if Path(first).exists() or first not in {reg.name for reg in get_registry().all() if reg.kind == "detector"}:
        return inputs
    if first != detector:
        raise MfxError(f"{checkpoint}: checkpoint of detector {detector!r}, not {first!r}")
    if len(inputs) == 1:
        raise MfxError("name the files or folders to score after the detector")
    return inputs[1:]


def _print_predictions(verdict: dict, predictions, bad) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..report.views import weights_banner

    banner = weights_banner(verdict["weights"], [verdict["detector"]])
    if banner:
        console.print(f"[bold yellow]WARNING[/] {escape(banner)}")
    scoring = verdict["scoring"]
    if scoring["mode"] == "center":
        how = "centre crop only"
    elif scoring["tile_size"] is None:
        how = "whole image (the detector takes any input size)"
    else:
        how = (f"whole image by {scoring['tile_size']} px tiles (stride {scoring['stride_fraction']:g} tile), "
               f"{scoring['aggregate']} of tile scores")
    console.print(f"weights: {escape(verdict['weights'])} ({escape(verdict['weights_info'])})")
    console.print(f"threshold {verdict['threshold']:.3f} ({escape(verdict['threshold_source'])}); scoring: {how}")
    if verdict["threshold_warning"]:
        console.print(f"[bold yellow]WARNING[/] {escape(verdict['threshold_warning'])}")
    table = Table(title=f"{verdict['detector']}: fake probability")
    for column in ("file", "frame", "modality", "score", "verdict"):
        table.add_column(column, justify="right" if column in ("frame", "score") else "left",
                         overflow="fold", no_wrap=column in ("score", "verdict", "frame"))
    for p in predictions:
        colour = "red" if p.verdict == "fake" else "green"
        table.add_row(escape(p.path), "" if p.frame is None else str(p.frame), escape(p.modality), f"{p.score:.3f}",
                      f"[{colour}]{p.verdict}[/]")
    if predictions:  # nothing scored: the skipped lines and the one-line error say it all
        console.print(table)
    _print_skipped(bad)


predict_command.interrupt_hint = ("the files scored before the interruption are listed above (JSON: "
                                  "\"interrupted\": true); the rest were not scored")
compare_command.interrupt_hint = ("finished detectors are kept in the run directory named above "
                                  "(finish with mfx compare --resume RUN_DIR)")


# --------------------------------------------------------------------------- calibrate


@cli.command("calibrate")
@click.argument("reals", nargs=-1, required=True, metavar="REAL_FILES_OR_DIRS...")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint written by mfx train/compare/calibrate (left as it is).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="New checkpoint to write: the same model with the new threshold.")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Share of these reals the new threshold may call fake.")
@scoring_options
def calibrate_command(reals, checkpoint, output, fpr, crop, aggregate, stride, on_bad, device, modality) -> None:
    """Fix a checkpoint's decision threshold again on reals you trust, scored as mfx predict will score them.

    The threshold mfx compare stores is fixed on the validation split's reals, each scored by its centre
    crop. On whole images scored by tiles, and on reals of another scanner, it flags more reals than its
    rule says (docs: metrics, "The detector's threshold"). Give real images only (at least 20 frames
    for --fpr 0.05; files under a 1_fake folder are left out), and the same --crop/--aggregate/--stride
    you will predict with.

    \b
    Examples:
      mfx calibrate --checkpoint dski.safetensors reals/ -o dski-our-ct.safetensors
      mfx calibrate --checkpoint dski.safetensors ct/ mr/ --fpr 0.01 --crop center -o dski-1pct.safetensors
    """
    from ..api import load_detector
    from ..engine.calibrate import CalibrationRefused, calibrate_files, check_output, write_calibrated
    from ..engine.context import FitContext
    from ..engine.device import resolve_device
    from ..engine.predict import PredictOptions
    from ..engine.progress import RichProgress
    from ..engine.tiles import TileConfig

    check_output(output)  # before any scoring: a refused output must not cost the scoring
    tiles = TileConfig(mode=crop, aggregate=aggregate, stride=stride)
    torch_device = resolve_device(device)
    model = load_detector(checkpoint, device=str(torch_device))
    options = PredictOptions(on_bad=on_bad, modality=modality, tiles=tiles)
    try:
        with RichProgress(console, enabled=console.is_terminal) as progress:
            result, bad = calibrate_files(model, reals, FitContext(device=torch_device, progress=progress), options,
                                          fpr)
    except CalibrationRefused as exc:
        _print_skipped(exc.skipped)  # why so few reals were left
        raise
    _print_skipped(bad)
    if result.left_out_fakes:
        console.print(f"[yellow]left out[/] {result.left_out_fakes} file(s) under 1_fake folders: fakes by the "
                      "dataset layout, so not reals to calibrate on")
    if result.left_out_repeats:
        console.print(f"[yellow]left out[/] {result.left_out_repeats} repeated file(s): each file counts once")
    _print_calibration(result, write_calibrated(model, output))


def _print_skipped(bad) -> None:
    """One line per bad input that ``mfx predict``/``calibrate`` listed and went past."""
    from rich.markup import escape

    for path, reason in bad:
        console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(str(reason))}", soft_wrap=True)


def _print_calibration(result, written: Path) -> None:
    """The share of the given reals flagged at the old and the new threshold, per modality, and both rules."""
    from rich.markup import escape
    from rich.table import Table

    from ..engine.calibrate import percent

    table = Table(title=f"share of these reals called fake (target {percent(result.fpr)})")
    for column in ("modality", "frames", "old threshold", "new threshold"):
        table.add_column(column, justify="left" if column == "modality" else "right")
    for modality in ("all", *result.counts):
        count = result.n_frames if modality == "all" else result.counts[modality]
        table.add_row(escape(modality), str(count), f"{result.flagged_before[modality]:.3f}",
                      f"{result.flagged_after[modality]:.3f}")
    console.print(table)
    console.print(f"old threshold {result.previous:.3f} ({escape(result.previous_source)})")
    console.print(f"new threshold {result.threshold:.3f} ({escape(result.rule)})")
    console.print(f"wrote {escape(str(written))}")
