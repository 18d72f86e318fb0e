"""Contribution scores: GTG-Shapley exact on a hand-made game, efficient and symmetric when
sampled, leave-one-out by hand, and in a real run a free-rider scored 0 while a round's
scores add up to its accuracy gain."""

from __future__ import annotations

import math

import pytest

from fedtune.equity.contribution import gtg_shapley, leave_one_out
from fedtune.errors import ConfigError
from fedtune.experiment import run

from .conftest import small_config


def _game(coalition: tuple[int, ...]) -> float:
    """Sites 0 and 1 are worth 2 and 4 alone and 3 more together; site 2 adds 1; site 3 adds
    nothing (a null player)."""
    s = set(coalition)
    return 2.0 * (0 in s) + 4.0 * (1 in s) + 3.0 * ({0, 1} <= s) + 1.0 * (2 in s)


def test_gtg_shapley_is_exact_on_a_hand_made_game():
    phi, evaluated = gtg_shapley(_game, 4, permutations=24)  # 4! orderings: enumerated
    assert phi == pytest.approx([3.5, 5.5, 1.0, 0.0])  # the synergy of 3 split in half
    assert evaluated == 16  # every coalition once, from the cache
    loo, evaluated = leave_one_out(_game, 4)
    assert loo == pytest.approx([5.0, 7.0, 1.0, 0.0]) and evaluated == 5  # not efficient


def test_sampled_gtg_shapley_is_efficient_symmetric_and_truncates():
    n = 9  # 9! orderings: sampled

    def concave(coalition: tuple[int, ...]) -> float:
        return math.sqrt(sum(1.0 + (k == 0) for k in coalition))

    phi, evaluated = gtg_shapley(concave, n, permutations=200, seed=3)
    assert sum(phi) == pytest.approx(concave(tuple(range(n))) - concave(()))
    # exact: site 0 comes after s of the 8 others, each s equally likely
    exact0 = sum(math.sqrt(s + 2) - math.sqrt(s) for s in range(n)) / n
    exact_other = (concave(tuple(range(n))) - exact0) / (n - 1)
    assert phi[0] == pytest.approx(exact0, abs=0.05)
    assert phi[1:] == pytest.approx([exact_other] * (n - 1), abs=0.06)

    def saturating(coalition: tuple[int, ...]) -> float:  # two sites do all there is
        return float(min(len(coalition), 2))

    truncated, evaluated = gtg_shapley(saturating, n, permutations=200, truncation=0.1, seed=3)
    assert evaluated <= 1 + n + n * (n - 1) // 2 + 1  # never a coalition of three or more
    assert sum(truncated) == pytest.approx(2.0)
    assert gtg_shapley(concave, n, truncation=10.0)[0] == [0.0] * n  # the round gained little


def test_a_free_rider_scores_zero_and_a_round_splits_its_gain():
    cfg = small_config("data.num_nodes=5", "run.rounds=3", "energy.enabled=false",
                       'attack.kind="free_rider"', 'attack.sites=["node-3"]',
                       'fairness.contribution="gtg"', "fairness.truncation=0",
                       "fairness.shapley_permutations=120")  # 5! orderings: exact
    result = run(cfg, store=False)
    c = result.extra["contribution"]
    assert c["sites"]["node-3"]["total"] == 0.0 and c["sites"]["node-3"]["rounds"] == 3
    honest = [c["sites"][f"node-{i}"]["total"] for i in (0, 1, 2, 4)]
    assert sum(honest) > 0 and "node-3" in c["no_gain"]
    accuracy = [r.test_accuracy for r in result.rounds]
    for r in (1, 2):  # rounds 2 and 3: the gain over the previous round's model
        gain = sum(s["per_round"][r] for s in c["sites"].values())
        assert gain == pytest.approx(100 * (accuracy[r] - accuracy[r - 1]), abs=1e-3)
    loo = run(small_config("data.num_nodes=5", "run.rounds=2", "energy.enabled=false",
                           'fairness.contribution="loo"'), store=False)
    assert loo.extra["contribution"]["method"] == "loo"


def test_contribution_scores_are_refused_where_single_updates_are_private():
    with pytest.raises(ConfigError, match=r"fairness\.contribution"):
        small_config('fairness.contribution="gtg"', 'privacy.mode="central"')
