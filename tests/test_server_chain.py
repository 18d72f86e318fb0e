"""Server optimizers chained after update transforms (optax's chain on the aggregate)."""

from __future__ import annotations

import torch

from fedtune.algorithms.server_opt import SGD, OptState, WithTransforms
from fedtune.algorithms.transforms import ClipByNorm, TransformContext, chain
from fedtune.coordinator_state import CoordinatorState


def test_clip_then_sgd_by_hand():
    opt = WithTransforms(chain(ClipByNorm(1.0)), SGD(lr=0.5, momentum=0.9))
    params = torch.tensor([1.0, 1.0])
    state = opt.init(params)
    delta = torch.tensor([3.0, 4.0])  # norm 5 -> clipped to [0.6, 0.8]
    new, state = opt.apply(params, delta, state)
    torch.testing.assert_close(new, torch.tensor([1.3, 1.4]))  # x + 0.5 * m, m = clipped
    torch.testing.assert_close(state.optimizer.m, torch.tensor([0.6, 0.8]))
    small = torch.tensor([0.3, 0.0])  # under the bound: unchanged; m = 0.9 m + d
    new, state = opt.apply(new, small, state)
    torch.testing.assert_close(state.optimizer.m, torch.tensor([0.84, 0.72]))
    assert state.step == 2


def test_clip_by_norm_bounds_every_update():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        u = torch.randn(20, generator=gen) * float(torch.rand(1, generator=gen) * 10)
        out, _ = ClipByNorm(2.0).apply(u, None, TransformContext(seed=0))
        assert float(out.norm()) <= 2.0 + 1e-5
        if float(u.norm()) <= 2.0:
            assert torch.equal(out, u)


def test_a_chained_optimizer_state_resumes_through_the_state_file():
    opt = WithTransforms(chain(ClipByNorm(1.0)), SGD(lr=1.0, momentum=0.5))
    st = CoordinatorState(torch.zeros(2), parts={"opt": opt.init(torch.zeros(2))})
    st.params, st.parts["opt"] = opt.apply(st.params, torch.tensor([2.0, 0.0]), st.parts["opt"])
    saved = st.snapshot()
    assert set(saved) == {"params", "opt.optimizer.step", "opt.optimizer.m"}
    resumed = CoordinatorState(torch.zeros(2), parts={"opt": opt.init(torch.zeros(2))})
    resumed.restore(1, saved, [])
    assert isinstance(resumed.parts["opt"].optimizer, OptState)
    assert resumed.parts["opt"].step == 1
    torch.testing.assert_close(resumed.parts["opt"].optimizer.m, torch.tensor([1.0, 0.0]))
