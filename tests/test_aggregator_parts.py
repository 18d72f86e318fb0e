"""Aggregators as parts (init / add / finish): property tests against the [K, D] rules and
hand-computed cases."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.aggregate import (
    FixedMean,
    ModularSum,
    Stacked,
    coordinate_median,
    weighted_mean,
)
from fedtune.algorithms.fold import RoundFold

rows = st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3),
             min_size=k, max_size=k),
    st.lists(st.floats(0.5, 100.0), min_size=k, max_size=k),
    st.permutations(range(k))))


def fold_all(part, updates, weights, steps=None, *, order=None, normalize=False):
    fold = RoundFold(part, normalize_by_steps=normalize)
    steps = steps or [1.0] * len(updates)
    for i in order or range(len(updates)):
        fold.offer(i, updates[i], weights[i], steps[i])
    fold.close()
    return fold.delta()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows)
def test_streaming_mean_is_the_stacked_mean_bit_for_bit_in_any_arrival_order(case):
    values, weights, order = case
    updates, w = torch.tensor(values, dtype=torch.float32), torch.tensor(weights)
    expected = weighted_mean(updates, w)
    got = fold_all(weighted_mean, list(updates), w.tolist(), order=list(order))
    assert weighted_mean.streaming
    assert torch.equal(got, expected)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(rows)
def test_stacked_adapter_copies_rows_and_applies_the_rule(case):
    values, weights, order = case
    updates = torch.tensor(values, dtype=torch.float32)
    buffers = [u.clone() for u in updates]
    part = Stacked(coordinate_median)
    fold = RoundFold(part)
    for i in order:
        fold.offer(i, buffers[i], weights[i], 1.0)
    fold.close()
    for b in buffers:  # a runtime reusing its receive buffers once they are folded
        b.fill_(float("nan"))
    assert not part.streaming
    assert torch.equal(fold.delta(), coordinate_median(updates, torch.tensor(weights)))


def test_fixed_denominator_mean_by_hand():
    # 2 * [1, 2] + 1 * [4, 0] = [6, 4]; over the fixed denominator 4 (not the 3 that came)
    got = fold_all(FixedMean(4.0), [torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.0])],
                   [2.0, 1.0])
    assert torch.equal(got, torch.tensor([1.5, 1.0]))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4), min_size=1,
                max_size=6), st.randoms(use_true_random=False))
def test_modular_sum_is_exact_order_free_and_cancels_pairwise_masks(values, rnd):
    part = ModularSum(bits=32)
    updates = [torch.tensor(v, dtype=torch.int64) for v in values]
    order = list(range(len(updates)))
    rnd.shuffle(order)
    want = torch.tensor([sum(col) % 2**32 for col in zip(*values, strict=True)])
    assert torch.equal(fold_all(part, updates, [1.0] * len(updates), order=order), want)
    # masked: node 0 adds m, the last node subtracts it (mod 2^32); the sum is unchanged
    mask = torch.tensor([rnd.randrange(2**32) for _ in range(4)])
    masked = [u.clone() for u in updates]
    masked[0] = (masked[0] + mask) % 2**32
    masked[-1] = (masked[-1] - mask) % 2**32
    assert torch.equal(fold_all(part, masked, [1.0] * len(masked)), want)


def test_modular_sum_refuses_float_updates():
    fold = RoundFold(ModularSum())
    try:
        fold.offer(0, torch.ones(2), 1.0, 1.0)
    except ValueError as exc:
        assert "integer" in str(exc)
    else:
        raise AssertionError("a float update was summed modulo 2^32")


def test_fednova_streaming_and_stacked_agree_with_the_hand_computed_value():
    # w = [1, 3], tau = [2, 4]: sum_k (w_k / W) u_k / tau_k * (sum_k w_k tau_k / W)
    u = [torch.tensor([2.0]), torch.tensor([8.0])]
    hand = (0.25 * 2 / 2 + 0.75 * 8 / 4) * (0.25 * 2 + 0.75 * 4)
    for part in (weighted_mean, Stacked(weighted_mean)):
        got = fold_all(part, u, [1.0, 3.0], [2.0, 4.0], normalize=True)
        torch.testing.assert_close(got, torch.tensor([hand]))
