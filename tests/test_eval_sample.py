"""Many sites: the final per-site evaluation visits a seeded sample and says how sure its
mean is (a 95 % interval with the finite-population correction)."""

from __future__ import annotations

import math

import pytest

from fedtune.experiment import run
from fedtune.rounds.federation import sample_interval

from .conftest import small_config


def test_a_sample_of_sites_is_evaluated_and_its_interval_reported():
    cfg = small_config("data.num_nodes=12", "evaluation.max_sites=5", "run.rounds=2",
                       "evaluation.personalize_steps=0")
    result = run(cfg, store=False)
    assert len(result.node_accuracy_global) == 5
    sample = result.extra["node_eval_sample"]
    assert (sample["sites"], sample["of"]) == (5, 12)
    lo, hi = sample["accuracy_mean_ci95"]
    values = list(result.node_accuracy_global.values())
    assert lo <= sum(values) / 5 <= hi
    again = run(cfg, store=False)
    assert again.node_accuracy_global.keys() == result.node_accuracy_global.keys()
    everyone = run(small_config("data.num_nodes=12", "run.rounds=2",
                                "evaluation.personalize_steps=0"), store=False)
    assert len(everyone.node_accuracy_global) == 12
    assert "node_eval_sample" not in everyone.extra


def test_the_interval_by_hand():
    # values 0.5, 0.7, 0.9: mean 0.7, sd 0.2; k = 3 of N = 12
    lo, hi = sample_interval([0.5, 0.7, 0.9], 12)
    half = 1.96 * 0.2 / math.sqrt(3) * math.sqrt(1 - 3 / 12)
    assert (lo, hi) == pytest.approx((0.7 - half, 0.7 + half))
    assert sample_interval([0.5, 0.7], 2) == pytest.approx((0.6, 0.6))  # everyone: exact
