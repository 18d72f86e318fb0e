"""Fair aggregation: q-FFL against a hand-computed step and its q = 0 case (FedAvg), the
streaming part against the one-expression direction, AFL's simplex step, the sites' start
losses, a resumed AFL run, and the combinations refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.aggregate import WeightedMean
from fedtune.algorithms.fold import RoundFold
from fedtune.energy import EnergyMeter
from fedtune.equity.fair_aggregation import (
    FairAggregation,
    afl_step,
    project_simplex,
    qffl_direction,
)
from fedtune.equity.settings import FairnessSection
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.node.node import Node, Workbench
from fedtune.tasks import build_task
from fedtune.types import FitIns

from .conftest import small_config


def test_qffl_step_matches_the_hand_computed_one():
    # u1 = [1, 0], F1 = 2; u2 = [0, 2], F2 = 0.5; q = 1, L = 1, equal weights.
    # h1 = 1 * 1 * 1 + 2 = 3; h2 = 1 * 1 * 4 + 0.5 = 4.5; sum h = 7.5
    # direction = (2 * [1, 0] + 0.5 * [0, 2]) / 7.5 = [0.2667, 0.1333]
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = qffl_direction(u, torch.tensor([2.0, 0.5]), torch.ones(2), q=1.0, lipschitz=1.0)
    torch.testing.assert_close(out, torch.tensor([2 / 7.5, 1 / 7.5]))


def test_qffl_with_q_zero_is_the_weighted_mean():
    gen = torch.Generator().manual_seed(0)
    u, w = torch.randn(5, 7, generator=gen), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    out = qffl_direction(u, torch.rand(5, generator=gen) + 0.1, w, q=0.0, lipschitz=20.0)
    torch.testing.assert_close(out, (w[:, None] * u).sum(0) / w.sum())


def _part(kind: str = "qffl", **knobs: float) -> FairAggregation:
    return FairAggregation(kind, FairnessSection(**knobs), ["a", "b", "c"],
                           lipschitz=knobs.get("lipschitz", 4.0))


def test_the_streaming_part_takes_the_q_ffl_step():
    gen = torch.Generator().manual_seed(1)
    u, losses = torch.randn(3, 11, generator=gen), torch.tensor([0.3, 1.2, 2.5])
    w = torch.tensor([10.0, 30.0, 20.0])
    part = _part(q=2.0, lipschitz=4.0)
    state = part.init()
    fold = RoundFold(WeightedMean())
    for k, node in enumerate(["a", "b", "c"]):
        aux = {"start_loss": losses[k:k + 1]}
        weight = part.weigh(float(w[k]), aux, state, node)
        update = part.receive(lambda k=k: u[k].clone(), aux, state, node)  # a spilled update
        fold.offer(k, update, weight, 1.0)
    out = part.release(fold.delta(), state, 1)
    torch.testing.assert_close(out, qffl_direction(u, losses, w, q=2.0, lipschitz=4.0))
    # the worst-served site pulls harder than under the mean
    mean = (w[:, None] * u).sum(0) / w.sum()
    assert float(torch.dot(out / out.norm(), u[2])) > float(torch.dot(mean / mean.norm(), u[2]))


def test_a_site_without_a_finite_loss_cannot_buy_the_round():
    part, u = _part(q=1.0), torch.ones(4)
    state = part.init()
    assert part.weigh(5.0, {"start_loss": torch.tensor([math.inf])}, state, "a") < 1e-6
    assert part.weigh(5.0, {}, state, "b") < 1e-6
    assert part.weigh(5.0, {"start_loss": torch.tensor([1e30])}, state, "c") == 5.0 * 1e4
    assert part.receive(u, {}, state, "a") is u


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=12))
def test_the_simplex_projection_is_a_distribution_and_the_nearest(values):
    v = torch.tensor(values, dtype=torch.float64)
    p = project_simplex(v)
    assert float(p.min()) >= 0 and abs(float(p.sum()) - 1) < 1e-9
    # optimality (KKT): p_i > 0 exactly where v_i is above the common threshold
    theta = v - p
    positive = p > 1e-12
    if positive.any():
        t = theta[positive]
        assert float(t.max() - t.min()) < 1e-9
        assert bool((v[~positive] <= t[0] + 1e-9).all())


def test_afl_moves_the_mixture_toward_the_worse_served_sites():
    torch.testing.assert_close(project_simplex(torch.tensor([0.6, 0.6], dtype=torch.float64)),
                               torch.tensor([0.5, 0.5], dtype=torch.float64))
    lam = torch.full((4,), 0.25, dtype=torch.float64)
    losses = torch.tensor([2.0, 1.0, math.nan, math.nan], dtype=torch.float64)
    out = afl_step(lam, losses, lr=0.05)
    # g = [2, 1, 0, 0] x 4/2; lam + 0.05 g = [0.45, 0.35, 0.25, 0.25]; minus 0.075 each
    torch.testing.assert_close(out, torch.tensor([0.375, 0.275, 0.175, 0.175],
                                                 dtype=torch.float64))


def test_a_site_reports_the_loss_of_the_model_it_was_sent():
    cfg = small_config()
    task = build_task(cfg)
    bench = Workbench.create(task, torch.device("cpu"), cfg.run.seed)
    data = task.data.nodes[0]
    node = Node(data, seed=0, meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0,
                device=torch.device("cpu"))
    start = bench.flat.shared.clone()
    with torch.no_grad():
        expected = float(task.loss_fn(bench.flat.module(data.x_train), data.y_train))
    res = node.fit(FitIns(1, start, {**cfg.local.model_dump(), "fair_loss_rows": 10**6}), bench)
    assert abs(float(res.aux["start_loss"]) - expected) < 1e-5
    assert float(res.aux["start_loss"]) > res.train_loss  # measured before training
    plain = node.fit(FitIns(2, start, cfg.local.model_dump()), bench)
    assert "start_loss" not in plain.aux


def test_q_ffl_with_q_zero_runs_as_fedavg_and_afl_resumes_exactly(tmp_path):
    base = ["data.num_nodes=6", "run.rounds=4", "energy.enabled=false"]
    fedavg = run(small_config(*base), store=False)
    q0 = run(small_config(*base, 'strategy.name="qffl"', "fairness.q=0"), store=False)
    assert abs(q0.final_test_loss - fedavg.final_test_loss) < 1e-5
    afl = [*base, 'strategy.name="afl"', "fairness.afl_lr=0.5"]
    whole = run(small_config(*afl, f'run.workspace="{tmp_path / "a"}"'))
    lam = whole.extra["fairness"]["lambda"]
    assert abs(sum(lam.values()) - 1) < 1e-9 and max(lam.values()) > 1 / 6 + 0.01

    def stop_after_two(record):
        if record.round == 2:
            raise KeyboardInterrupt

    cfg = small_config(*afl, f'run.workspace="{tmp_path / "b"}"')
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_round=stop_after_two)
    resumed = run(cfg, resume=True)
    assert resumed.extra["fairness"] == whole.extra["fairness"]
    assert resumed.final_test_loss == whole.final_test_loss


@pytest.mark.parametrize(("override", "message"), [
    ('strategy.mode="async"', "synchronous"),
    ('strategy.aggregator="median"', "reweighs the mean"),
    ('privacy.mode="central"', "client-level DP"),
    ("fairness.q=-1", "greater than or equal to 0"),
    ("fairness.qq=1", "unknown config key 'fairness.qq'"),
])
def test_fair_aggregation_refuses_what_its_weights_cannot_mean(override, message):
    with pytest.raises(ConfigError, match=message):
        small_config('strategy.name="qffl"', override)
