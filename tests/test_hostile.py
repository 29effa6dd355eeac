"""Hostile input: bad files, memory bombs, lying headers, races and read-only targets (issue #15).

Every bad file is generated here at test time (see ``hostile_files.py``; no
binary fixtures). Each command runs in its own process under a memory cap
(``RLIMIT_DATA``) and a time cap, and must answer with one line per bad file,
no traceback, a non-zero exit when it scored nothing, and a peak RSS that shows
no bomb was decoded.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import hostile_files
from medforensics_core.cli import cli
from test_compare import build_small_dataset

# The child writes its own peak RSS (VmHWM of its post-exec address space) when it exits. The kernel's ru_maxrss
# would not do: a forked child inherits the parent's high-water mark, so a pytest worker that had grown to 1.7 GB
# in earlier tests made every command here look 1.7 GB big.
_CHILD = """
import atexit, os, resource
if "MFX_TEST_MEMORY_CAP" in os.environ:
    cap = int(os.environ["MFX_TEST_MEMORY_CAP"])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
def _peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["MFX_TEST_PEAK_FILE"], "w") as out:
        out.write(kb)
if "MFX_TEST_PEAK_FILE" in os.environ:
    atexit.register(_peak)
from medforensics_core.cli import main
main()
"""
MFX = [sys.executable, "-c", _CHILD]
MEMORY_CAP = 2 * 1024**3  # RLIMIT_DATA of every command: a decoded bomb (>= 1.7 GB) would hit it
PEAK_RSS_BUDGET_MB = 1400  # interpreter + torch is about 660 MB here; no bomb may add its decoded size to it
SECONDS_PER_FILE = 15  # time cap per file on a busy 2-core machine (plus a fixed start-up allowance)
START_UP_SECONDS = 90


def run_capped(args: list[str], n_files: int, env: dict | None = None) -> tuple[int, str, float, float]:
    """(exit status, output, peak RSS in MB, seconds) of one ``mfx`` process under the memory and time caps."""
    import tempfile

    timeout = START_UP_SECONDS + SECONDS_PER_FILE * n_files
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak-kb"
        full_env = {**os.environ, "COLUMNS": "400", "MFX_LOCK_TIMEOUT": "60", "MFX_TEST_MEMORY_CAP": str(MEMORY_CAP),
                    "MFX_TEST_PEAK_FILE": str(peak_file), **(env or {})}
        start = time.perf_counter()
        with open(os.devnull, "rb") as stdin, _Capture() as out:
            proc = subprocess.Popen(MFX + args, stdin=stdin, stdout=out.handle, stderr=subprocess.STDOUT,
                                    env=full_env)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                proc.wait()
            finally:
                timer.cancel()
        seconds = time.perf_counter() - start
        assert seconds < timeout, f"mfx {' '.join(args)} ran past its time cap ({timeout} s)"
        assert peak_file.is_file(), f"mfx {' '.join(args)} died without exiting (no peak recorded):\n{out.text}"
        return proc.returncode, out.text, int(peak_file.read_text()) / 1024, seconds


class _Capture:
    """A temporary file for a child's output (a pipe could fill up while we wait for the child)."""

    def __enter__(self):
        import tempfile

        self.handle = tempfile.TemporaryFile()
        return self

    def __exit__(self, *exc):
        self.handle.seek(0)
        self.text = self.handle.read().decode("utf-8", errors="replace")
        self.handle.close()


def assert_one_line_each(output: str, bad: list[Path]) -> None:
    """Every bad file is named by exactly one line (a report's "skipped files: N (first: ...)" summary aside)."""
    assert "Traceback" not in output, output
    for path in bad:
        lines = [line for line in output.splitlines() if path.name in line and "skipped files:" not in line]
        assert len(lines) == 1, (path.name, lines, output[-3000:])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_small_dataset(tmp_path_factory.mktemp("hostile-data"))


@pytest.fixture(scope="module")
def dski_checkpoint(dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile-ckpt") / "dski.safetensors"
    result = CliRunner().invoke(cli, ["train", "dski", "--preset", "tiny", "--epochs", "1", "--data", str(dataset),
                                      "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A folder of bad files only: the cheap ones, the three memory bombs of #15, two lying DICOMs, a dangling
    link and a symlink loop."""
    folder = tmp_path_factory.mktemp("hostile")
    files = hostile_files.small_bad_files(folder)
    for name in ("tiny_1x1.png", "thin_64x3.png"):  # valid, only small: they belong to the per-image tests
        files.pop(name).unlink()
    files["tiff"] = hostile_files.tiff_many_samples(folder)
    files["nifti"] = hostile_files.nifti_gz_bomb(folder)
    files["png"] = hostile_files.png_bomb(folder)
    files["dicom"] = hostile_files.dicom_lying_frames(folder)
    files["dangling"] = hostile_files.links(folder)["dangling"]  # plus a symlink loop the walkers must not follow
    return folder, sorted(files.values())


# --------------------------------------------------------------------------- the hostile suite


@pytest.mark.slow
def test_data_check_names_every_bad_file_once_within_the_caps(hostile_dir):
    folder, bad = hostile_dir
    status, output, peak_mb, _ = run_capped(["data", "check", str(folder)], len(bad))
    assert status == 1, output
    assert_one_line_each(output, bad)
    assert peak_mb < PEAK_RSS_BUDGET_MB, peak_mb


@pytest.mark.slow
def test_predict_on_only_bad_files_scores_nothing_and_fails(hostile_dir, dski_checkpoint):
    folder, bad = hostile_dir
    status, output, peak_mb, _ = run_capped(["predict", "dski", "--checkpoint", str(dski_checkpoint), str(folder)],
                                            len(bad))
    assert status != 0, output
    assert_one_line_each(output, bad)
    assert peak_mb < PEAK_RSS_BUDGET_MB, peak_mb


@pytest.mark.slow
def test_index_add_skips_bad_files_and_writes_nothing_when_nothing_was_added(hostile_dir, dski_checkpoint, tmp_path):
    folder, bad = hostile_dir
    checkpoint = tmp_path / "dski.safetensors"
    shutil.copy(dski_checkpoint, checkpoint)
    before = checkpoint.read_bytes()
    status, output, peak_mb, _ = run_capped(["index", "add", str(checkpoint), str(folder), "--label", "real",
                                             "--modality", "fundus", "--on-bad", "skip"], len(bad))
    assert status != 0 and "nothing added" in output, output
    assert_one_line_each(output, bad)
    assert checkpoint.read_bytes() == before
    assert peak_mb < PEAK_RSS_BUDGET_MB, peak_mb


@pytest.mark.slow
def test_compare_on_bad_skip_keeps_per_image_failures_per_image(hostile_dir, dataset, tmp_path):
    """Bad files and tiny (1x1, 64x3) images in the test split: listed one line each, the rest scored."""
    folder, bad = hostile_dir
    tiny = hostile_files.small_bad_files(tmp_path / "tiny")
    tiny_files = [tiny["tiny_1x1.png"], tiny["thin_64x3.png"]]
    with open(dataset / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    template = next(r for r in rows if r["split"] == "test")
    extra = [dict(template, path=str(p), label=str(i % 2), sha256="", source=f"hostile:{p.name}")
             for i, p in enumerate([*bad, *tiny_files])]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, path=str(dataset / row["path"])))
        writer.writerows(extra)
    status, output, peak_mb, _ = run_capped(["compare", "freq", "--data", str(manifest), "--on-bad", "skip",
                                             "--allow", "outside-root", "--out", str(tmp_path / "runs"),
                                             "--n-boot", "50"], len(bad) + 40)
    assert status == 0, output
    assert_one_line_each(output, bad)
    assert "FAILED" not in output
    assert peak_mb < PEAK_RSS_BUDGET_MB, peak_mb


# --------------------------------------------------------------------------- races


@pytest.mark.slow
def test_two_concurrent_index_add_keep_both_sets_of_references(dataset, dski_checkpoint, tmp_path):
    from medforensics_core.plugins import get_registry

    checkpoint = tmp_path / "dski.safetensors"
    shutil.copy(dski_checkpoint, checkpoint)
    before = len(get_registry().detector("dski").load(checkpoint).bank)
    reals = sorted((dataset / "test" / "fundus" / "real").glob("*.png"))[:3]
    fakes = sorted(p for p in (dataset / "test" / "fundus").glob("*/*.png") if p.parent.name != "real")[:4]
    assert len(reals) == 3 and len(fakes) == 4
    commands = [["index", "add", str(checkpoint), "--label", "real", "--modality", "fundus", *map(str, reals)],
                ["index", "add", str(checkpoint), "--label", "fake", "--generator", "gan", "--modality", "fundus",
                 *map(str, fakes)]]
    env = {**os.environ, "MFX_LOCK_TIMEOUT": "300"}
    procs = [subprocess.Popen(MFX + c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for c in commands]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    after = get_registry().detector("dski").load(checkpoint).bank
    assert len(after) == before + 7, outputs


# --------------------------------------------------------------------------- outputs checked before any work


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: chmod 555, or (root ignores modes) a sysfs folder."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    sysfs = Path("/sys/kernel")
    if not sysfs.is_dir():
        pytest.skip("no folder is read-only for this user")
    return sysfs


@pytest.fixture
def counting_detector(fresh_registry):
    """A runtime detector that counts its fit calls (a check after training would show a count of 1)."""
    import numpy as np

    from medforensics_core.hookspecs import hookimpl
    from medforensics_core.interfaces import Detector

    calls: list[int] = []

    class Counting(Detector):
        name = "counting"
        description = "counts fit calls"
        presets = {"tiny": {}}

        def fit(self, train, val=None, ctx=None):
            calls.append(len(train))
            self.fitted = True
            return self

        def predict_proba(self, batch):
            return np.full(len(batch), 0.5)

    import types

    plugin = types.ModuleType("counting_plugin")
    plugin.register_detectors = hookimpl(lambda register: register(Counting))
    fresh_registry.register_plugin(plugin)
    yield calls
    fresh_registry.unregister_plugin(plugin)


@pytest.mark.parametrize("where", ["read-only", "file-in-the-way", "folder"])
def test_train_output_that_cannot_be_written_fails_before_training(where, dataset, counting_detector, tmp_path):
    if where == "read-only":
        target = _read_only_folder(tmp_path) / "model.safetensors"
    elif where == "file-in-the-way":
        (tmp_path / "a-file").write_text("x")
        target = tmp_path / "a-file" / "model.safetensors"
    else:
        target = tmp_path
    result = CliRunner().invoke(cli, ["train", "counting", "--data", str(dataset), "-o", str(target)])
    assert result.exit_code != 0
    assert counting_detector == [], "trained before checking the output path"
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(target) in errors[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_compare_out_that_is_a_file_or_read_only_is_one_line(dataset, counting_detector, tmp_path):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", _read_only_folder(tmp_path)):
        result = CliRunner().invoke(cli, ["compare", "counting", "--data", str(dataset), "--out", str(out)])
        assert result.exit_code != 0 and counting_detector == []
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(out) in errors[0], result.output


def test_index_add_into_a_read_only_folder_fails_before_reading(dski_checkpoint, tmp_path):
    target = _read_only_folder(tmp_path) / "adapted.safetensors"
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    result = CliRunner().invoke(cli, ["index", "add", str(dski_checkpoint), str(image), "--label", "real",
                                      "--modality", "fundus", "--output", str(target)])
    assert result.exit_code != 0 and "lock file" in result.output, result.output


def test_run_files_get_normal_permissions(tmp_path):
    from medforensics_core.checkpoint import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.md", b"# report")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- plan-time validation


@pytest.mark.parametrize("args, expected", [
    (["freq", "--epochs", "0"], "--epochs"),
    (["freq", "--epochs", "-1"], "--epochs"),
    (["dski", "--budget-minutes", "-1"], "--budget-minutes"),
    (["freq", "--perturb", "jpeg:500"], "jpeg:500"),
    (["freq", "--perturb", "resize:0"], "resize:0"),
    (["freq", "--perturb", "resize:1e9"], "resize:1e9"),
    (["freq", "--perturb", "noise:nan"], "noise:nan"),
    (["freq", "--perturb", "blur:1000"], "blur:1000"),
    (["dski", "--set", "dski.batch_size=0"], "batch_size"),
    (["dski", "--set", "dski.lr=nan"], "lr"),
    (["dski", "--set", "dski.top_k=0"], "top_k"),
    (["dski", "--set", "dski.retriever=faiss-flt"], "faiss-flt"),
    (["dski", "--set", "dski.noise_extractors=srm,nosuch"], "nosuch"),
    (["dski", "--set", "dski.trace_extractor=nprr"], "`trace_extractor=` (empty) turns it off"),
    (["dski", "--set", "dski.epochs="], "'' is not a valid int"),
])
def test_nonsense_values_fail_at_plan_time_before_a_run_directory(args, expected, dataset, tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["compare", *args, "--data", str(dataset), "--out", str(runs)])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert not runs.exists() or not any(runs.iterdir())


def test_train_with_zero_epochs_writes_nothing(dataset, tmp_path):
    target = tmp_path / "m.safetensors"
    result = CliRunner().invoke(cli, ["train", "freq", "--data", str(dataset), "--epochs", "0", "-o", str(target)])
    assert result.exit_code != 0 and "--epochs" in result.output and not target.exists()


def test_nan_threshold_is_refused_not_a_verdict(dski_checkpoint, tmp_path):
    from PIL import Image

    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    result = CliRunner().invoke(cli, ["predict", "dski", "--checkpoint", str(dski_checkpoint), "--threshold", "nan",
                                      str(image)])
    assert result.exit_code != 0 and "finite" in result.output, result.output
    for outside in ("7", "-1"):  # scores are probabilities: such a threshold gives every image one verdict
        result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(dski_checkpoint), "--threshold", outside,
                                          str(image)])
        assert result.exit_code != 0 and "must lie in [0, 1]" in result.output and "Traceback" not in result.output


def test_non_finite_scores_are_an_error():
    import numpy as np

    from medforensics_core.engine.evaluate import check_finite_scores
    from medforensics_core.errors import MfxError

    check_finite_scores("ok", np.array([0.1, 0.9]))
    with pytest.raises(MfxError, match="non-finite"):
        check_finite_scores("broken", np.array([0.1, np.nan]))


# --------------------------------------------------------------------------- manifest sanity


def _rewrite_manifest(dataset: Path, target: Path, change) -> Path:
    """A copy of the dataset's manifest (paths kept relative to the dataset) with ``change(rows)`` applied."""
    with open(dataset / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows = change(rows)
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def _leak(rows):
    test_row = next(r for r in rows if r["split"] == "test")
    return [*rows, dict(test_row, split="train")]


def _typo(rows):
    return [dict(r, split="Train") if i % 7 == 0 and r["split"] == "train" else r for i, r in enumerate(rows)]


def _outside(rows):
    return [*rows[:-1], dict(rows[-1], path="../elsewhere/" + Path(rows[-1]["path"]).name)]


@pytest.mark.parametrize("change, kind, words", [
    (_leak, "split-overlap", "more than one split"),
    (_typo, "unknown-split", "did you mean 'train'"),
    (_outside, "outside-root", "outside the dataset folder"),
])
def test_manifest_problems_are_reported_by_check_and_refused_by_runs(change, kind, words, dataset, tmp_path):
    manifest = _rewrite_manifest(dataset, dataset / f"manifest-{kind}.csv", change)
    try:
        checked = CliRunner().invoke(cli, ["data", "check", str(manifest), "--no-hash"])
        assert checked.exit_code == 1 and words in checked.output, checked.output
        runs = tmp_path / "runs"
        refused = CliRunner().invoke(cli, ["compare", "freq", "--data", str(manifest), "--out", str(runs)])
        errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert refused.exit_code != 0 and len(errors) == 1 and f"--allow {kind}" in errors[0], refused.output
        assert not runs.exists()
        from medforensics_core.engine.compare import CompareOptions, plan_run

        plan_run(CompareOptions(detectors=["freq"], data=str(manifest), allow=[kind]))  # allowed: plans fine
    finally:
        manifest.unlink()


def test_manifest_csv_is_read_the_way_spreadsheets_write_it(dataset, tmp_path):
    from medforensics_core.data.manifest import read_manifest

    plain = read_manifest(dataset / "manifest.csv")
    with open(dataset / "manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header = [f" {name.capitalize()} " for name in rows[0]]
    label_at = rows[0].index("label")
    body = [[(f"{float(v):.1f}" if i == label_at else v) for i, v in enumerate(row)] for row in rows[1:]]
    text = "\r\n".join(";".join(cells) for cells in [header, *body]) + "\r\n\r\n"
    excel = tmp_path / "manifest.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    read = read_manifest(excel)
    assert [(r.path, r.label, r.split, r.modality) for r in read.rows] == \
        [(r.path, r.label, r.split, r.modality) for r in plain.rows]


def test_ctrl_c_message_fits_the_command(monkeypatch, tmp_path):
    """Only a command with a run directory talks about --resume."""
    import medforensics_core.data.check as check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "check_target", interrupted)
    (tmp_path / "a.png").write_bytes(b"")
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path)])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "--resume" not in result.output
    from medforensics_core.cli.run_cmds import compare_command

    assert "--resume" in compare_command.interrupt_hint


# --------------------------------------------------------------------------- untrusted text


def test_untrusted_text_is_shown_literally_everywhere(tmp_path):
    from rich.console import Console

    from medforensics_core.report.plots import plain
    from medforensics_core.report.tables import _rich_row
    from medforensics_core.report.views import Row, TableView
    from medforensics_core.report.writers import _md_escape

    hostile = "[/]<script>alert(1)</script> $x_1$ | *b*\nnext"
    (tmp_path / f"{hostile.splitlines()[0].replace('/', '')}.png").write_bytes(b"<html>")
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "Traceback" not in result.output and "[]<script>" in result.output
    escaped = _md_escape(hostile)
    assert "<script>" not in escaped and "&lt;script&gt;" in escaped and "\\|" in escaped and "\n" not in escaped
    assert plain("$x$") == r"\$x\$"
    row = _rich_row(TableView(title="t", lead_header="detector", columns=[hostile], rows=[]),
                    Row(name=hostile, cells=[]))
    Console(file=open(os.devnull, "w")).print(*row)  # raw text: no MarkupError on "[/]"


# --------------------------------------------------------------------------- hostile checkpoints


def _with_metadata(source: Path, target: Path, change) -> Path:
    """A copy of a checkpoint whose JSON metadata is replaced by ``change(metadata)`` (anything JSON)."""
    import json

    from safetensors.torch import save

    from medforensics_core.checkpoint import FORMAT, FORMAT_VERSION, load_tensors

    tensors, meta = load_tensors(source)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "mfx": json.dumps(change(meta))}
    target.write_bytes(save({k: v.contiguous() for k, v in tensors.items()}, metadata=header))
    return target


@pytest.mark.parametrize("label, change", [
    ("list", lambda meta: [meta]),
    ("extra-list", lambda meta: dict(meta, extra=[1])),
    ("weight-text", lambda meta: dict(meta, config=dict(meta["config"], mfrm_weight="heavy"))),
    ("bank-list", lambda meta: dict(meta, extra=dict(meta.get("extra") or {}, bank=[1]))),
])
def test_hostile_checkpoint_metadata_is_one_line(label, change, dski_checkpoint, tmp_path):
    from PIL import Image

    checkpoint = _with_metadata(dski_checkpoint, tmp_path / f"{label}.safetensors", change)
    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    for args in (["predict", "dski", "--checkpoint", str(checkpoint), str(image)],
                 ["index", "add", str(checkpoint), str(image), "--label", "real", "--modality", "fundus"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(checkpoint) in errors[0], (args, result.output)


def test_a_checkpoint_of_an_unknown_format_version_is_one_line(dski_checkpoint, tmp_path):
    """A layout this mfx does not know (a newer mfx wrote it) is refused by name, not read as if it were version 1."""
    from safetensors.torch import save

    from medforensics_core.checkpoint import FORMAT, load_tensors

    tensors, meta = load_tensors(dski_checkpoint)
    future = tmp_path / "future.safetensors"
    future.write_bytes(save({k: v.contiguous() for k, v in tensors.items()},
                            metadata={"format": FORMAT, "format_version": "999", "mfx": json.dumps(meta)}))
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(future), str(dski_checkpoint)])
    assert result.exit_code != 0 and "format version '999'" in result.output and "Traceback" not in result.output


def test_predict_scores_a_file_whose_name_holds_a_hash(dski_checkpoint, tmp_path):
    """``scan#1.png`` is a file, not frame 1 of ``scan``: scored, explained and listed under its own name."""
    import json

    import numpy as np
    from PIL import Image

    image = tmp_path / "scan#1.png"
    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype("uint8")).save(image)
    result = CliRunner().invoke(cli, ["predict", "dski", "--checkpoint", str(dski_checkpoint), str(image), "--json",
                                      "--explain", str(tmp_path / "heat")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert [p["path"] for p in payload["predictions"]] == [str(image)]


def test_data_check_of_a_folder_without_images_fails(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1 and "no image files" in result.output


def test_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from medforensics_core.errors import MfxError
    from medforensics_core.locations import cache_root

    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("MFX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MfxError, match="MFX_CACHE_DIR"):
        cache_root("benchmarks")


@pytest.mark.parametrize("config", ["[1]", '{"options": [1]}', '{"options": {"detectors": ["freq"], "epochs": "x"}}',
                                    '{"options": {"detectors": ["freq"], "no_such_option": 1, "shots": -3}}'])
def test_resume_from_a_damaged_config_is_one_line(config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config)
    result = CliRunner().invoke(cli, ["compare", "--resume", str(run)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output


def test_damaged_saved_result_is_run_again_not_a_crash(tmp_path):
    from medforensics_core.engine.resume import ResultStore
    from medforensics_core.engine.rundir import RunDir

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "freq.json").write_text("[1")
    (tmp_path / "results" / "npr.json").write_text("[1]")
    store = ResultStore(RunDir(tmp_path))
    assert store.finished("freq", []) is None and store.finished("npr", []) is None


def test_disk_full_is_one_line_and_leaves_no_half_file(tmp_path, monkeypatch):
    import errno

    from medforensics_core.checkpoint import atomic_write_bytes
    from medforensics_core.errors import MfxError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(MfxError, match="No space left on device") as info:
        atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert isinstance(info.value, OSError) and str(tmp_path / "report.json") in str(info.value)
    assert list(tmp_path.iterdir()) == []
