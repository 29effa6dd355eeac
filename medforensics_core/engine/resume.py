"""Per-detector results saved the moment each detector finishes, so an interrupted run can resume.

``mfx compare`` writes ``results/<detector>.json`` (atomically, through the
run directory) right after a detector is scored: its report entries and its
per-image scores. ``--resume RUN_DIR`` loads these and skips the detectors that
finished; a detector that was interrupted restarts from scratch (no per-epoch
checkpoint protocol exists for detectors yet) and the run says so. A failed
detector is retried on resume: failures are often environmental.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import MfxError
from .rundir import RunDir

log = logging.getLogger(__name__)

RESULTS_FOLDER = "results"


def _file_name(detector: str) -> str:
    return f"{RESULTS_FOLDER}/{detector}.json"


class ResultStore:
    """Finished detector results of one fold, in ``<fold dir>/results/``."""

    def __init__(self, run_dir: RunDir, *, writable: bool = True):
        self.run_dir = run_dir
        self.writable = writable

    def finished(self, detector: str, test_paths: list[str]) -> dict[str, Any] | None:
        """The saved result of ``detector`` if it finished successfully on exactly these test images."""
        name = _file_name(detector)
        if not self.run_dir.exists(name):
            return None
        try:
            result = self.run_dir.read_json(name)
        except MfxError as exc:  # a damaged result costs a re-run of that detector, not the resume
            log.warning("%s; running that detector again", exc)
            return None
        if not isinstance(result, dict) or result.get("status") != "ok":
            return None
        if result.get("test_paths") != test_paths:
            log.warning("saved result of %s was scored on other test images; running it again", detector)
            return None
        return result

    def save(self, detector: str, result: dict[str, Any]) -> None:
        if self.writable:
            self.run_dir.write_json(_file_name(detector), result)
