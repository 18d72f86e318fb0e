"""RoundFold: updates folded in selection order whatever order they arrive in."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedtune.algorithms.aggregate import coordinate_median, weighted_mean
from fedtune.algorithms.fold import RoundFold
from fedtune.algorithms.strategy import aggregate_updates, build_strategy

K, D = 5, 1001


@pytest.fixture
def rows():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(K, D, generator=gen) * torch.logspace(-3, 3, D), \
        [float(w) for w in torch.randint(1, 500, (K,), generator=gen)]


def test_any_arrival_order_gives_the_same_bits_as_the_stacked_mean(rows):
    updates, weights = rows
    expected = weighted_mean(updates, torch.tensor(weights))
    for order in itertools.islice(itertools.permutations(range(K)), 0, None, 7):
        fold = RoundFold(weighted_mean)
        for k in order:
            fold.offer(k, updates[k], weights[k], 1.0)
        assert fold.count == K and not fold.pending
        assert torch.equal(fold.delta(weighted_mean), expected)
    # arrival order changes the bits of a plain running sum: the fold's ordering matters
    backwards = sum(updates[k] * weights[k] for k in reversed(range(K))) / sum(weights)
    forwards = sum(updates[k] * weights[k] for k in range(K)) / sum(weights)
    assert not torch.equal(backwards, forwards)


def test_an_early_update_waits_only_for_its_predecessors(rows):
    updates, weights = rows
    fold = RoundFold(weighted_mean)
    fold.offer(2, updates[2], weights[2], 1.0)
    fold.offer(1, updates[1], weights[1], 1.0)
    assert sorted(fold.pending) == [1, 2] and fold.count == 0
    fold.skip(0)  # node 0 failed: 1 and 2 fold at once
    assert not fold.pending and fold.count == 2
    fold.offer(4, updates[4], weights[4], 1.0)
    assert list(fold.pending) == [4]
    fold.close()  # node 3 never answered
    assert fold.count == 3
    expected = weighted_mean(updates[[1, 2, 4]], torch.tensor([weights[i] for i in (1, 2, 4)]))
    assert torch.equal(fold.delta(weighted_mean), expected)


def test_offering_a_position_twice_is_refused(rows):
    updates, weights = rows
    fold = RoundFold(weighted_mean)
    fold.offer(0, updates[0], weights[0], 1.0)
    with pytest.raises(ValueError, match="already"):
        fold.offer(0, updates[0], weights[0], 1.0)
    fold.skip(0)  # a no-op for a folded position
    assert fold.count == 1


def test_fednova_and_robust_aggregators_match_the_stacked_path(rows):
    updates, weights = rows
    steps = [3.0, 1.0, 7.0, 2.0, 5.0]
    for name, agg in (("fednova", "mean"), ("fedavg", "median")):
        from fedtune.algorithms.strategy import StrategyParams

        s = build_strategy(name, StrategyParams(aggregator=agg))
        fold = RoundFold(s.aggregator, normalize_by_steps=s.normalize_by_steps)
        for k in (4, 0, 3, 1, 2):
            fold.offer(k, updates[k], weights[k], steps[k])
        got = fold.delta(s.aggregator)
        want = aggregate_updates(s, updates, torch.tensor(weights), torch.tensor(steps))
        assert torch.equal(got, want), name
    assert torch.equal(got, coordinate_median(updates, torch.tensor(weights)))


def test_the_robust_path_keeps_copies_not_the_received_buffers(rows):
    updates, _ = rows
    fold = RoundFold(coordinate_median)
    received = updates[0].clone()
    fold.offer(0, received, 1.0, 1.0)
    received.fill_(1e9)  # a runtime reuses its buffer
    fold.offer(1, updates[1], 1.0, 1.0)
    fold.offer(2, updates[2], 1.0, 1.0)
    assert torch.equal(fold.delta(coordinate_median), coordinate_median(updates[:3],
                                                                        torch.ones(3)))
