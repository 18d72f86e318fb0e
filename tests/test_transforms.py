"""Update transforms (init / apply / chain): compression round trips and error feedback's
stated property, checked on generated vectors."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.compression import unpack_vector
from fedtune.algorithms.transforms import (
    Compress,
    ErrorFeedback,
    TransformContext,
    chain,
    uplink_chain,
)

vectors = st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=300).map(
    lambda v: torch.tensor(v, dtype=torch.float32))


def sent(transform, update, state, seed):
    """Apply ``transform`` and decode what it put on the wire."""
    ctx = TransformContext(seed=seed)
    out, state = transform.apply(update, state, ctx)
    assert out.numel() == 0, "an encoder's update no longer travels dense"
    return unpack_vector(ctx.aux, ctx.encoding, numel=update.numel(), seed=seed), state


@settings(max_examples=50, deadline=None, derandomize=True)
@given(vectors, st.integers(0, 2**31))
def test_dense_float32_round_trip_is_exact(update, seed):
    decoded, _ = sent(Compress("topk:1.0"), update, None, seed)
    assert torch.equal(decoded, update)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(vectors, st.floats(0.01, 1.0))
def test_topk_keeps_exactly_the_largest_magnitudes(update, fraction):
    decoded, _ = sent(Compress(f"topk:{fraction}"), update, None, 7)
    kept = decoded != 0
    if kept.any() and (~kept).any():
        assert update[kept].abs().min() >= update[~kept].abs().max()
    assert torch.equal(decoded[kept], update[kept])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(vectors.filter(lambda v: v.numel() >= 8).map(lambda v: v[:8]), min_size=1,
                max_size=6), st.sampled_from(["topk:0.25", "randk:0.5", "q4", "topk:0.5+q8",
                                               "bf16"]))
def test_error_feedback_sends_everything_eventually(updates, spec):
    """Stich et al. 2018: sum(sent) + residual == sum(updates) (up to float rounding)."""
    ef = ErrorFeedback(Compress(spec))
    state = ef.init()
    total_sent = torch.zeros(8)
    for r, u in enumerate(updates):
        decoded, state = sent(ef, u, state, seed=r)
        total_sent += decoded
    torch.testing.assert_close(total_sent + state, torch.stack(updates).sum(0),
                               rtol=1e-4, atol=1e-3)


def test_chain_keeps_one_state_per_part_and_the_empty_chain_is_identity():
    u = torch.arange(4, dtype=torch.float32)
    empty = chain()
    out, state = empty.apply(u, empty.init(), TransformContext(seed=0))
    assert out is u and state == ()
    parts = uplink_chain("topk:0.5", error_feedback=True, block=256)
    ctx = TransformContext(seed=1)
    _, state = parts.apply(u, parts.init(), ctx)
    assert len(state) == 1 and torch.equal(state[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert ctx.encoding == "topk:0.5@256" and "packed.gaps" in ctx.aux
    assert uplink_chain("", error_feedback=True, block=256).parts == ()
