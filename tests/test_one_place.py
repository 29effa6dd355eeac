"""Helpers that exist once: the seed helper, the fake/real decision rule, the cache root."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medforensics_core import decision, locations, metrics, seeding
from medforensics_core.engine import features, schedules, training


def test_derived_seeds_are_stable_across_processes_and_differ_by_name():
    here = [seeding.derive_seed(7, "dski", "shots"), seeding.derive_seed(7, "univfd")]
    code = "from medforensics_core.seeding import derive_seed; print(derive_seed(7, 'dski', 'shots'), derive_seed(7, 'univfd'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.split()
    assert [int(v) for v in other] == here
    assert here[0] != here[1] != seeding.derive_seed(8, "univfd")
    assert seeding.derive_seed(7) == 7  # no names: the run seed itself
    assert 0 <= here[0] < 2**63


def test_seeded_block_is_reproducible_and_restores_the_callers_stream():
    torch.manual_seed(1)
    expected_after = torch.rand(3)
    torch.manual_seed(1)
    with seeding.seeded(5):
        a = torch.rand(4)
    with seeding.seeded(5):
        b = torch.rand(4)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_after)


def test_one_decision_rule_for_metrics_training_and_verdicts():
    scores = np.array([0.2, 0.5, 0.5, 0.9])
    labels = np.array([0, 0, 1, 1])
    assert decision.flag_fake(scores).tolist() == [False, False, False, True]  # a tie is real
    assert decision.verdict(0.5) == "real" and decision.verdict(0.5000001) == "fake"
    acc = metrics.compute_metrics(labels, scores).acc
    assert acc == decision.accuracy(scores, labels) == training.accuracy(scores, labels) == 0.75
    assert schedules.accuracy is decision.accuracy  # early stopping watches the same number


def test_every_cache_lives_under_the_one_cache_root(monkeypatch, tmp_path):
    from medforensics_core import benchmark

    monkeypatch.setenv(locations.CACHE_ENV, str(tmp_path))
    assert benchmark.cache_root() == tmp_path
    assert features.default_cache_root() == tmp_path / "features"
    monkeypatch.delenv(locations.CACHE_ENV)
    assert features.default_cache_root().parent == benchmark.cache_root() == locations.cache_root()


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_bootstrap_accuracy_uses_the_same_rule(threshold):
    scores = np.array([0.3, 0.5, 0.7, 0.3, 0.5, 0.7])
    labels = np.array([0, 0, 0, 1, 1, 1])
    distinct, order, starts = metrics._distinct_index(scores)
    ones = np.ones((1, scores.size))
    pos = metrics._collapse(ones * (labels == 1), order, starts)
    neg = metrics._collapse(ones * (labels == 0), order, starts)
    fast = metrics._weighted_metrics(pos, neg, distinct, threshold, ["acc"])["acc"][0]
    assert fast == pytest.approx(decision.accuracy(scores, labels, threshold))
