"""Run directories a user can rely on: resumable from anywhere, pinned to their checkpoints, one process at a time.

What a user relies on: ``config.json`` names its data, checkpoints and folders by absolute paths (``mfx compare
--resume RUN_DIR`` works from any directory; runs recorded with relative paths still resume from the directory
they were started in); a checkpoint replaced after an evaluation is refused on ``--resume`` instead of silently
changing the numbers; a second process on a run directory in use is refused at once, in one line; the run
directory is named before any work starts, so an interrupted run can be finished.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from medforensics_core.cli import cli
from medforensics_core.data.manifest import sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ("--preset", "tiny", "--n-boot", "50")


def run_mfx(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def train(data: str, target: str, *settings: str) -> None:
    result = run_mfx("train", "freq", "--data", data, "--preset", "tiny", *settings, "-o", target)
    assert result.exit_code == 0, result.output


@pytest.fixture
def evaluated(quick_benchmark, tmp_path, monkeypatch) -> Path:
    """``mfx evaluate`` of a freq checkpoint, every path given relative to the working directory ``tmp_path/work``."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = os.path.relpath(quick_benchmark, work)
    train(data, "ck/freq.safetensors")
    result = run_mfx("evaluate", "freq", "--checkpoint", "ck/freq.safetensors", "--data", data, "-o", "runs/ev",
                     "--n-boot", "50")
    assert result.exit_code == 0, result.output
    return work / "runs" / "ev"


def test_config_records_absolute_paths_and_resume_works_from_another_directory(evaluated, quick_benchmark,
                                                                               tmp_path, monkeypatch):
    options = config_of(evaluated)["options"]
    checkpoint = evaluated.parent.parent / "ck" / "freq.safetensors"
    assert options["data"] == os.path.abspath(quick_benchmark)
    assert options["checkpoints"] == {"freq": str(checkpoint)}
    assert options["run_dir"] == str(evaluated) and options["out"] == os.path.abspath("runs")
    assert config_of(evaluated)["detectors"]["freq"]["checkpoint"] == str(checkpoint)
    before = json.loads((evaluated / "report.json").read_text())["detectors"]["freq"]["overall"]

    (evaluated / "results" / "freq.json").unlink()  # scored again on resume: the checkpoint must be found
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_mfx("compare", "--resume", str(evaluated))
    assert result.exit_code == 0, result.output
    assert (evaluated / "results" / "freq.json").is_file()
    assert json.loads((evaluated / "report.json").read_text())["detectors"]["freq"]["overall"] == before


def test_a_run_recorded_with_relative_paths_still_resumes_from_its_directory(evaluated, tmp_path, monkeypatch):
    config = config_of(evaluated)
    work = evaluated.parent.parent
    options = config["options"]
    old = {"data": os.path.relpath(options["data"], work), "checkpoints": {"freq": "ck/freq.safetensors"},
           "out": "runs", "run_dir": "runs/ev"}  # what runs recorded before paths were made absolute
    options.update(old)
    del options["checkpoint_sha256"]
    (evaluated / "config.json").write_text(json.dumps(config))
    (evaluated / "results" / "freq.json").unlink()

    monkeypatch.chdir(tmp_path)
    assert run_mfx("compare", "--resume", str(evaluated)).exit_code != 0  # relative to the first directory only
    monkeypatch.chdir(work)
    result = run_mfx("compare", "--resume", "runs/ev")
    assert result.exit_code == 0, result.output
    assert (evaluated / "results" / "freq.json").is_file()
    assert config_of(evaluated)["options"]["checkpoints"] == old["checkpoints"]  # the run's record is not rewritten


def test_resume_refuses_a_checkpoint_replaced_since_the_run(evaluated, quick_benchmark):
    checkpoint = evaluated.parent.parent / "ck" / "freq.safetensors"
    recorded = config_of(evaluated)["options"]["checkpoint_sha256"]
    assert recorded == {"freq": sha256_file(checkpoint)}
    train(str(quick_benchmark), str(checkpoint), "--set", "freq.C=0.01")  # another model at the same path
    assert sha256_file(checkpoint) != recorded["freq"]
    (evaluated / "results" / "freq.json").unlink()

    result = run_mfx("compare", "--resume", str(evaluated))
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert str(checkpoint) in line and "changed since this run recorded it" in line
    assert "Traceback" not in result.output
    assert not (evaluated / "results" / "freq.json").exists()  # nothing scored with the other model


def test_a_run_directory_in_use_is_refused_at_once(evaluated):
    from medforensics_core.engine.compare.run_dirs import RUN_LOCK
    from medforensics_core.locking import locked

    with locked(evaluated / RUN_LOCK):  # another mfx process working in the run
        start = time.monotonic()
        result = run_mfx("compare", "--resume", str(evaluated))
        waited = time.monotonic() - start
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert f"{evaluated} is in use by another mfx process" in line
    assert "Traceback" not in result.output and waited < 60
    result = run_mfx("compare", "--resume", str(evaluated))  # released: the run is usable again
    assert result.exit_code == 0, result.output


def test_the_run_directory_is_named_before_training_and_resume_extend_merge_still_work(quick_benchmark, tmp_path):
    data = ("--data", str(quick_benchmark), *FAST)
    runs = {}
    for seed in (0, 1):
        result = run_mfx("compare", "freq", *data, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}"))
        assert result.exit_code == 0, result.output
        (runs[seed],) = [p for p in (tmp_path / f"s{seed}").iterdir() if p.is_dir()]
        lines = result.output.splitlines()
        first = lines.index(f"run directory: {runs[seed]}")
        assert first < next(i for i, line in enumerate(lines) if line.startswith("freq: training"))
    assert config_of(runs[0])["options"]["checkpoint_sha256"] == {}  # trained, not loaded: nothing to pin

    resumed = run_mfx("compare", "--resume", str(runs[0]))
    assert resumed.exit_code == 0, resumed.output
    assert "freq: finished in an earlier attempt, kept" in resumed.output
    merged = run_mfx("compare", "--merge", str(runs[0]), "--merge", str(runs[1]), "--out", str(tmp_path / "m"))
    assert merged.exit_code == 0, merged.output
    extended = run_mfx("compare", "--extend", str(runs[0]), "npr", "--out", str(tmp_path / "x"),
                       "--set", "npr.epochs=1")
    assert extended.exit_code == 0, extended.output
    for root in ("m", "x"):
        (run,) = [p for p in (tmp_path / root).iterdir() if p.is_dir()]
        assert os.path.isabs(config_of(run)["options"]["out"]) and (run / "report.json").is_file()
