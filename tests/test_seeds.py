"""``mfx compare --seeds``: one training per seed, per-seed rows with CIs, mean +- sd over seeds, seed-paired tests.

Runs on the quick build of the offline benchmark with two cheap detectors: ``freq`` (a spectrum
classifier) and the seeded logistic probe of ``test_compare`` (its result moves with the seed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_compare import error_lines, only_run_dir, run_mfx, test_detectors  # noqa: F401 - fixture

from medforensics_core import metrics as M


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_seeds_give_per_seed_rows_and_mean_sd_in_report_json_html_and_terminal(quick_benchmark, test_detectors,
                                                                                tmp_path):
    result = run_mfx("compare", "freq", "test-probe", "--quick", "--seeds", "0,1", "--n-boot", "200",
                     "--out", str(tmp_path), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["seeds"] == [0, 1]
    singles = {s: json.loads((run / "seeds" / str(s) / "report.json").read_text()) for s in (0, 1)}
    assert [r["seed"] for r in singles.values()] == [0, 1]

    rows = {(r["detector"], r["seed"]): r for r in report["per_seed"]}
    assert set(rows) == {(d, s) for d in ("freq", "test-probe") for s in (0, 1)}
    for (name, seed), row in rows.items():
        own = singles[seed]["detectors"][name]["overall"]
        assert row["auc"] == own["auc"] and row["auc_ci"] == own["auc_ci"]  # each seed keeps its own CI
        assert row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
        assert (run / "seeds" / str(seed) / "checkpoints" / f"{name}.safetensors").is_file()
    for name in ("freq", "test-probe"):
        overall = report["detectors"][name]["overall"]
        aucs = [rows[(name, s)]["auc"] for s in (0, 1)]
        assert overall["auc"] == pytest.approx(np.mean(aucs))
        assert overall["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
        assert overall["n_seeds"] == 2 and overall["n"] == rows[(name, 0)]["n"]
        assert set(report["detectors"][name]["seed_runs"]) == {"0", "1"}
    # the probe's training depends on the seed, so its two runs differ
    assert report["detectors"]["test-probe"]["overall"]["auc_sd"] > 0

    # the paired test pairs the detectors seed by seed on the same source resamples
    (paired,) = report["paired"]
    assert paired["seeds"] == [0, 1] and paired["resampled"] == "clusters"
    best, other = paired["a"], paired["b"]
    assert paired["delta"] == pytest.approx(np.mean([rows[(best, s)]["auc"] - rows[(other, s)]["auc"] for s in (0, 1)]))
    assert paired["per_seed"] == {str(s): pytest.approx(rows[(best, s)]["auc"] - rows[(other, s)]["auc"]) for s in (0, 1)}
    assert paired["ci"][0] <= paired["delta"] <= paired["ci"][1]

    html = (run / "report.html").read_text()
    for text in ("Per seed", "freq seed 0", "freq seed 1", "test-probe mean+-sd",
                 f"+-{report['detectors']['test-probe']['overall']['auc_sd']:.3f}"):
        assert text in html, text
        assert text in result.output, text  # the terminal shows the same table
    assert "mean +- sd over seeds 0, 1" in html


def test_paired_bootstrap_over_one_seed_is_the_paired_bootstrap():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    a = np.clip(rng.normal(0.5 + 0.3 * (labels - 0.5), 0.2), 0, 1)
    b = np.clip(rng.normal(0.5 + 0.1 * (labels - 0.5), 0.2), 0, 1)
    assert M.paired_bootstrap_over_seeds(labels, [a], [b], n_boot=300, seed=1) == \
        M.paired_bootstrap(labels, a, b, n_boot=300, seed=1)
    # two seeds with the same scores: the same difference, and no wider an interval
    twice = M.paired_bootstrap_over_seeds(labels, [a, a], [b, b], n_boot=300, seed=1)
    once = M.paired_bootstrap(labels, a, b, n_boot=300, seed=1)
    assert twice["delta"] == pytest.approx(once["delta"]) and twice["per_run"] == [once["delta"]] * 2
    assert twice["ci"] == pytest.approx(once["ci"])


def test_bad_seeds_are_one_line(tmp_path):
    for value, reason in (("0,x", "--seeds takes comma-separated integers"), ("1,1", "seed(s) 1 given twice")):
        result = run_mfx("compare", "freq", "--seeds", value, "--data", str(tmp_path), "--out", str(tmp_path / "r"))
        assert result.exit_code == 2 and len(error_lines(result.output)) == 1, result.output
        assert reason in error_lines(result.output)[0] and "Traceback" not in result.output


def test_an_interrupted_multi_seed_run_resumes_without_redoing_finished_seeds(test_detectors, tmp_path):
    from test_compare import build_small_dataset

    data = build_small_dataset(tmp_path / "data")
    args = ["compare", "freq", "test-interrupted", "--data", str(data), "--seeds", "3,4", "--n-boot", "100"]
    straight = tmp_path / "straight"
    assert run_mfx(*args, "--out", str(straight)).exit_code == 0
    reference = json.loads((only_run_dir(straight) / "report.json").read_text())

    broken = tmp_path / "broken"
    interrupted = run_mfx(*args, "--out", str(broken), env={"MFX_TEST_INTERRUPT": "1"})
    assert interrupted.exit_code == 130
    run = only_run_dir(broken)
    kept = (run / "seeds" / "3" / "results" / "freq.json").stat().st_mtime_ns
    assert not (run / "report.json").exists()
    resumed = run_mfx("compare", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    assert (run / "seeds" / "3" / "results" / "freq.json").stat().st_mtime_ns == kept  # not trained again
    report = json.loads((run / "report.json").read_text())
    assert report["seeds"] == [3, 4]
    for name in ("freq", "test-interrupted"):
        assert report["detectors"][name]["overall"] == reference["detectors"][name]["overall"]
    assert report["per_seed"] == reference["per_seed"] and report["paired"] == reference["paired"]


def test_fold_bootstrap_draws_the_sources_once_for_every_fold():
    """Two folds that are the same fold: the shared draw gives exactly the one-fold interval (independent
    draws per fold would shrink it by about sqrt 2), and one fold reproduces the seed-paired bootstrap."""
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(90), np.ones(60)].astype(int)
    sources = [f"s{i % 70}" for i in range(150)]
    a = [labels * 0.4 + rng.random(150) for _ in range(2)]
    b = [labels * 0.3 + rng.random(150) for _ in range(2)]
    one = M.paired_bootstrap_over_folds([M.FoldRuns(labels, sources, a, b)], n_boot=400, seed=3)
    seeds = M.paired_bootstrap_over_seeds(labels, a, b, n_boot=400, seed=3, clusters=sources)
    assert (one["delta"], one["ci"], one["p_value"]) == (seeds["delta"], seeds["ci"], seeds["p_value"])
    twice = M.paired_bootstrap_over_folds([M.FoldRuns(labels, sources, a, b)] * 2, n_boot=400, seed=3)
    assert twice["ci"] == pytest.approx(one["ci"]) and twice["runs"] == 4
    same = M.paired_bootstrap_over_folds([M.FoldRuns(labels, sources, a, a)], n_boot=100)
    assert same["delta"] == 0 and same["p_value"] == 1.0


def test_seeds_run_as_separate_jobs_merge_into_the_multi_seed_report(test_detectors, tmp_path):
    """``--merge`` of ``--seed 3`` and ``--seed 4`` runs gives the report ``--seeds 3,4`` gives, training nothing."""
    from test_compare import build_small_dataset

    data = build_small_dataset(tmp_path / "data")
    args = ["compare", "freq", "test-probe", "--data", str(data), "--n-boot", "100"]
    assert run_mfx(*args, "--seeds", "3,4", "--out", str(tmp_path / "together")).exit_code == 0
    reference = json.loads((only_run_dir(tmp_path / "together") / "report.json").read_text())
    jobs = []
    for seed in (3, 4):
        assert run_mfx(*args, "--seed", str(seed), "--out", str(tmp_path / f"job{seed}")).exit_code == 0
        jobs.append(only_run_dir(tmp_path / f"job{seed}"))
    kept = (jobs[0] / "results" / "freq.json").read_text()

    merged = run_mfx("compare", "--merge", str(jobs[0]), "--merge", str(jobs[1]), "--out", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.output
    assert ": training (" not in merged.output and "finished in an earlier attempt" in merged.output
    run = only_run_dir(tmp_path / "merged")
    report = json.loads((run / "report.json").read_text())
    assert report["seeds"] == [3, 4]
    for name in ("freq", "test-probe"):
        assert report["detectors"][name]["overall"] == reference["detectors"][name]["overall"]
    assert report["per_seed"] == reference["per_seed"] and report["paired"] == reference["paired"]
    assert (run / "seeds" / "3" / "results" / "freq.json").read_text() == kept
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["seeds"] == [3, 4] and set(config["merged_from"]) == {"3", "4"}
    assert (jobs[0] / "results" / "freq.json").read_text() == kept  # the jobs' own folders are untouched


def test_merge_finishes_a_job_that_was_interrupted(test_detectors, tmp_path):
    """A seed's job killed mid-run: the merge keeps what it finished, trains the rest, and matches --seeds."""
    from test_compare import build_small_dataset

    data = build_small_dataset(tmp_path / "data")
    args = ["compare", "freq", "test-interrupted", "--data", str(data), "--n-boot", "100"]
    assert run_mfx(*args, "--seeds", "3,4", "--out", str(tmp_path / "together")).exit_code == 0
    reference = json.loads((only_run_dir(tmp_path / "together") / "report.json").read_text())
    assert run_mfx(*args, "--seed", "3", "--out", str(tmp_path / "job3")).exit_code == 0
    killed = run_mfx(*args, "--seed", "4", "--out", str(tmp_path / "job4"), env={"MFX_TEST_INTERRUPT": "1"})
    assert killed.exit_code == 130
    job4 = only_run_dir(tmp_path / "job4")
    assert (job4 / "results" / "freq.json").is_file() and not (job4 / "results" / "test-interrupted.json").exists()

    merged = run_mfx("compare", "--merge", str(only_run_dir(tmp_path / "job3")), "--merge", str(job4),
                     "--out", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.output
    assert "test-interrupted: training (" in merged.output  # the one detector the killed job left
    report = json.loads((only_run_dir(tmp_path / "merged") / "report.json").read_text())
    for name in ("freq", "test-interrupted"):
        assert report["detectors"][name]["overall"] == reference["detectors"][name]["overall"]
    assert not (job4 / "results" / "test-interrupted.json").exists()  # the job's folder is left as it was


def test_merge_refuses_runs_that_are_not_seeds_of_one_comparison(test_detectors, tmp_path):
    from test_compare import build_small_dataset

    data = build_small_dataset(tmp_path / "data")
    base = ["compare", "freq", "--data", str(data), "--n-boot", "50", "--epochs", "1"]
    variants = {"a": ["--seed", "0"], "b": ["--seed", "1"], "same-seed": ["--seed", "0"],
                "other-protocol": ["--seed", "2", "--perturb", "jpeg:50"],
                "other-config": ["--seed", "3", "--set", "freq.max_iter=50"]}
    runs = {}
    for name, extra in variants.items():
        assert run_mfx(*base, *extra, "--out", str(tmp_path / name)).exit_code == 0
        runs[name] = str(only_run_dir(tmp_path / name))
    # seed 1's job as another mfx version would have recorded it: a changed default in the resolved config
    runs["other-version"] = str(tmp_path / "other-version")
    shutil.copytree(runs["b"], runs["other-version"])
    config_path = Path(runs["other-version"]) / "config.json"
    config = json.loads(config_path.read_text())
    config["detectors"]["freq"]["config"]["n_bins"] += 1
    config_path.write_text(json.dumps(config))
    for pair, reason in ((("a", "same-seed"), "seed(s) 0 trained by more than one"),
                         (("a", "other-protocol"), "differs in perturb"),
                         (("a", "other-config"), "differs in overrides"),
                         (("a", "other-version"), "resolved configs differ")):
        result = run_mfx("compare", "--merge", runs[pair[0]], "--merge", runs[pair[1]], "--out", str(tmp_path / "m"))
        assert result.exit_code == 2 and len(error_lines(result.output)) == 1, result.output
        assert reason in error_lines(result.output)[0] and "Traceback" not in result.output
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())  # nothing half-made
    one = run_mfx("compare", "--merge", runs["a"], "--out", str(tmp_path / "m"))
    assert one.exit_code == 2 and "at least two run directories" in one.output
    named = run_mfx("compare", "freq", "--merge", runs["a"], "--merge", runs["b"], "--out", str(tmp_path / "m"))
    assert named.exit_code == 2 and "run directories only" in named.output
