"""The run directory of a comparison: creating (or resuming) it, its ``config.json`` and its log file."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import MfxError
from .. import distributed
from ..rundir import RunDir, new_run_dir
from .plan import CompareOptions, RunPlan
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


def prepare_run_dir(plan: RunPlan, session: Session, resume: RunDir | None) -> RunDir:
    """A new run directory (or the resumed one), agreed on by every rank; rank 0 writes config.json."""
    run_dir = resume
    if session.rank == 0 and run_dir is None:
        run_dir = _fixed_run_dir(plan.options.run_dir) if plan.options.run_dir else \
            new_run_dir(plan.options.out, plan.options.label)
    path = distributed.broadcast_object(str(run_dir.path) if run_dir is not None else None, session.world_size)
    run_dir = RunDir(path)
    if session.rank == 0 and resume is None:
        run_dir.write_json(CONFIG_FILE, resolved_config(plan))
    return run_dir


def _fixed_run_dir(path: str) -> RunDir:
    from ...outputs import writable_dir

    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()):
        raise MfxError(f"{folder}: run directory exists and is not empty (choose a new --out)")
    return RunDir(writable_dir(folder, "run directory (--out)"))


def resolved_config(plan: RunPlan) -> dict[str, Any]:
    """``config.json``: the options with data path and preset resolved, and every detector's full config."""
    from ...config import config_to_dict

    options = dataclasses.replace(plan.options, data=str(plan.data_path), preset=plan.preset)
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
