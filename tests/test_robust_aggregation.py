"""Byzantine-robust aggregation rules against cases worked by hand and the properties their
papers state (Krum's pick, the geometric median of symmetric points, Bulyan's and Krum's
bounds, centered clipping's step, norm bounding)."""

from __future__ import annotations

import pytest
import torch

from fedtune.algorithms.robust import (
    bulyan,
    centered_clipping,
    geometric_median,
    krum_scores,
    multi_krum,
    norm_bounded_mean,
    pairwise_sq_distances,
)


def _line(*xs: float) -> torch.Tensor:
    return torch.tensor([[x] for x in xs], dtype=torch.float32)


def test_krum_picks_the_point_worked_out_by_hand():
    x = _line(0, 1, 2, 4, 100)  # f = 1: each score sums the 2 nearest squared distances
    torch.testing.assert_close(krum_scores(x, 1),
                               torch.tensor([5.0, 2.0, 5.0, 13.0, 96.0**2 + 98.0**2],
                                            dtype=torch.float64), rtol=1e-4, atol=1e-3)
    ones = torch.ones(5)
    assert multi_krum(x, ones, f=1).item() == 1.0  # Krum: the point 1
    # Multi-Krum, m = 3: 1, then 0 and 2 (tied at 5): their mean
    assert multi_krum(x, ones, f=1, m=3).item() == pytest.approx(1.0)
    weighted = multi_krum(x, torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0]), f=1, m=3)
    assert weighted.item() == pytest.approx((0 + 1 + 2 * 2) / 4)


def test_pairwise_distances_from_one_product_match_the_direct_ones():
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    exact = torch.cdist(x.double(), x.double()) ** 2  # the float32 product: close, not exact
    torch.testing.assert_close(pairwise_sq_distances(x), exact, rtol=1e-5, atol=1e-4)


def test_geometric_median_of_symmetric_points_and_on_a_line():
    square = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) + 3.0
    torch.testing.assert_close(geometric_median(square, torch.ones(4)), torch.tensor([3.0, 3.0]))
    # on a line the geometric median is the median: the far point does not pull it
    assert geometric_median(_line(0, 1, 10), torch.ones(3)).item() == pytest.approx(1.0, abs=1e-3)
    # weights count: a point with more than half of the weight is the median
    assert geometric_median(_line(0, 1, 10), torch.tensor([1.0, 1.0, 3.0])).item() == \
        pytest.approx(10.0, abs=1e-3)


def test_centered_clipping_step_by_hand():
    x = _line(1, 1, 100)
    # from 0 with radius 2: differences 1, 1, 100 clipped to 1, 1, 2; their mean 4/3
    assert centered_clipping(x, torch.ones(3), radius=2.0, iters=1).item() == \
        pytest.approx(4 / 3)
    # a radius above every distance: one step is the weighted mean
    assert centered_clipping(x, torch.tensor([2.0, 1.0, 1.0]), radius=1e3, iters=1).item() \
        == pytest.approx(103 / 4)
    # from the honest centre: the far point pulls by radius / 3, the honest ones pull back
    # (1/6; then 0.5/3 - 2/3 x 1/6 = 1/18; then 0.5/3 - 2/3 x 2/9 = 1/54)
    out = centered_clipping(x, torch.ones(3), radius=0.5, center=torch.tensor([1.0]), iters=3)
    assert out.item() == pytest.approx(1.0 + 1 / 6 + 1 / 18 + 1 / 54)


def test_norm_bounding_by_hand_fixed_and_adaptive():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    expected = torch.tensor([0.3, 0.9])  # [3, 4] scaled to norm 1, then the mean
    torch.testing.assert_close(norm_bounded_mean(x, torch.ones(2), bound=1.0), expected)
    torch.testing.assert_close(norm_bounded_mean(x, torch.ones(2)), expected)  # median: 1


@pytest.mark.parametrize("seed", range(5))
def test_outputs_stay_with_the_honest_updates_under_far_attackers(seed):
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(9, 20, generator=gen) * 0.1 + 1.0
    attackers = torch.randn(2, 20, generator=gen) * 50 + 40
    x = torch.cat([honest, attackers])
    w = torch.ones(11)
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    for out in (multi_krum(x, w, f=2), multi_krum(x, w, f=2, m=5), bulyan(x, w, f=2)):
        # Krum's picks are honest rows (a convex combination of them); Bulyan stays in the
        # honest range in every coordinate (El Mhamdi et al. 2018)
        assert bool(((out >= low - 1e-5) & (out <= high + 1e-5)).all())
    # the geometric median moves by at most a bounded amount: close to the honest centre
    assert float((geometric_median(x, w) - honest.mean(0)).norm()) < 0.5
    assert float((x.mean(0) - honest.mean(0)).norm()) > 10, "the plain mean is dragged away"


def test_rules_refuse_more_attackers_than_they_tolerate():
    x, w = torch.randn(6, 3), torch.ones(6)
    with pytest.raises(ValueError, match="2f \\+ 2 < K"):
        multi_krum(x, w, f=2)
    with pytest.raises(ValueError, match="4f \\+ 3 <= K"):
        bulyan(x, w, f=1)
    with pytest.raises(ValueError, match="radius"):
        centered_clipping(x, w, radius=0.0)


@pytest.mark.parametrize("rule", ["krum", "multi_krum", "bulyan", "geometric_median",
                                  "centered_clipping", "norm_bound"])
def test_each_rule_runs_a_federation_and_is_deterministic(rule):
    from fedtune.experiment import run

    from .conftest import small_config

    cfg = small_config(f'strategy.aggregator="{rule}"', "data.num_nodes=7", "run.rounds=3",
                       "energy.enabled=false",
                       *(["strategy.byzantine=1"] if rule in ("krum", "multi_krum", "bulyan")
                         else []))
    a, b = run(cfg, store=False), run(cfg, store=False)
    assert a.final_test_accuracy == b.final_test_accuracy
    # Krum follows one site's update a round: with skewed sites it learns slowest
    assert a.final_test_accuracy > (0.25 if rule == "krum" else 0.5)


def test_a_rule_asked_to_tolerate_too_many_is_refused_at_config_time():
    from fedtune.errors import ConfigError

    from .conftest import small_config

    with pytest.raises(ConfigError, match="4f \\+ 3 <= K"):
        small_config('strategy.aggregator="bulyan"', "strategy.byzantine=1")  # K = 4
    with pytest.raises(ConfigError, match="2f \\+ 2 < K"):
        small_config('strategy.aggregator="krum"', "strategy.byzantine=1")
    with pytest.raises(ConfigError, match="read by the krum"):
        small_config("strategy.byzantine=1")
    with pytest.raises(ConfigError, match="needs every single"):
        small_config('strategy.aggregator="multi_krum"', 'strategy.mode="secagg"')
