"""One meaning per flag: -o/--out vs -o/--output, one --on-bad vocabulary, --set forms, examples in every --help."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

import medforensics_core as mfx
from medforensics_core.cli import cli
from medforensics_core.cli.options import detector_overrides
from medforensics_core.engine.context import FitContext
from medforensics_core.errors import MfxError

RUN_DIR_COMMANDS = {("compare",), ("evaluate",), ("data", "demo")}
ONE_FILE_COMMANDS = {("train",), ("calibrate",), ("index", "add"), ("data", "index"), ("data", "show")}


def _commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _option(command: click.Command, long_name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and long_name in p.opts), None)


def test_every_command_has_examples_and_consistent_flags():
    commands = dict(_commands(cli))
    assert {("predict",), ("index", "show"), ("plugins",)} <= set(commands)
    for path, command in commands.items():
        assert "Example" in (command.help or ""), f"mfx {' '.join(path)} --help has no example"
        out, output = _option(command, "--out"), _option(command, "--output")
        if path in RUN_DIR_COMMANDS:
            assert out is not None and "-o" in out.opts and output is None, path
        elif path in ONE_FILE_COMMANDS:
            assert output is not None and "-o" in output.opts and out is None, path
        else:
            assert out is None and output is None, path
        on_bad = _option(command, "--on-bad")
        if on_bad is not None:
            assert {"skip", "fail"} <= set(on_bad.type.choices), path


def test_set_has_one_syntax_and_train_takes_the_short_form():
    assert detector_overrides(("dski.epochs=2", "cnnspot.lr=0.1")) == {"dski": {"epochs": "2"},
                                                                        "cnnspot": {"lr": "0.1"}}
    assert detector_overrides(("epochs=2", "freq.n_bins=8"), detector="freq") == {"freq": {"epochs": "2",
                                                                                             "n_bins": "8"}}
    assert detector_overrides(("dski.trace_extractor=",)) == {"dski": {"trace_extractor": ""}}  # "none" is a value
    with pytest.raises(MfxError, match="DETECTOR.key=value"):
        detector_overrides(("epochs=2",))
    with pytest.raises(MfxError, match="NAME.key=value"):
        detector_overrides(("dski.epochs",))
    with pytest.raises(MfxError, match="this command runs 'freq'"):
        detector_overrides(("dski.epochs=2",), detector="freq")


@pytest.fixture(scope="module")
def freq_checkpoint(quick_benchmark, tmp_path_factory):
    detector = mfx.create_detector("freq", preset="tiny").fit(mfx.open_images(quick_benchmark, split="train"), None,
                                                               FitContext())
    return detector.save(tmp_path_factory.mktemp("ckpt") / "freq.safetensors")


def test_predict_takes_the_detector_from_the_checkpoint(freq_checkpoint, quick_benchmark):
    image = next((quick_benchmark / "test").rglob("*.png"))
    plain = CliRunner().invoke(cli, ["predict", "--checkpoint", str(freq_checkpoint), str(image), "--json"])
    assert plain.exit_code == 0, plain.output
    named = CliRunner().invoke(cli, ["predict", "freq", "--checkpoint", str(freq_checkpoint), str(image), "--json"])
    assert json.loads(named.output)["predictions"] == json.loads(plain.output)["predictions"]
    assert json.loads(plain.output)["detector"] == "freq"
    wrong = CliRunner().invoke(cli, ["predict", "cnnspot", "--checkpoint", str(freq_checkpoint), str(image)])
    assert wrong.exit_code != 0 and "checkpoint of detector 'freq', not 'cnnspot'" in wrong.output


def test_evaluate_reports_the_preset_the_checkpoint_was_trained_with(freq_checkpoint, quick_benchmark, tmp_path):
    """With --data (so no benchmark default), evaluate names the checkpoint's preset, not 'full'."""
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint), "--data",
                                      str(quick_benchmark), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "loading checkpoint (tiny preset)" in result.output and "preset: tiny" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "tiny" and report["detectors"]["freq"]["preset"] == "tiny"


def test_train_accepts_both_set_forms(quick_benchmark, tmp_path):
    for form in ("n_bins=12", "freq.n_bins=12"):
        out = tmp_path / f"{form}.safetensors"
        result = CliRunner().invoke(cli, ["train", "freq", "--quick", "--set", form, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert mfx.load_detector(out).config.n_bins == 12


def test_only_the_readers_complaints_are_kept_off_the_terminal():
    """pydicom's log and warnings raised while reading a file are hidden without -v; a solver's warning is not."""
    import logging

    from medforensics_core.cli import about_a_read_file

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, "x", 1, message, None, None)

    assert about_a_read_file(record("pydicom.pixels", "libjpeg error"))
    assert about_a_read_file(record("py.warnings", "/site-packages/pydicom/valuerep.py:440: UserWarning: Invalid"))
    assert about_a_read_file(record("py.warnings", "/work/medforensics_core/data/readers.py:721: RuntimeWarning"))
    assert not about_a_read_file(record("py.warnings", "/site-packages/sklearn/svm/_base.py: ConvergenceWarning"))
    assert not about_a_read_file(record("medforensics_core.engine", "skipping x"))
