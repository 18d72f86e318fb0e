"""Server optimizers and strategies against hand computations on tiny vectors."""

from __future__ import annotations

import math

import pytest
import torch

from fedtune.algorithms.aggregate import coordinate_median, trimmed_mean, weighted_mean
from fedtune.algorithms.server_opt import SGD, Adaptive
from fedtune.algorithms.strategy import (
    STRATEGIES,
    StrategyParams,
    aggregate_updates,
    build_strategy,
    scaffold_control_step,
    server_step,
)

X0 = torch.tensor([1.0, -2.0])
U = torch.tensor([[0.2, 0.4], [-0.6, 0.0]])
W = torch.tensor([3.0, 1.0])
MEAN = torch.tensor([0.75 * 0.2 + 0.25 * -0.6, 0.75 * 0.4])  # [0.0, 0.3]


def _two_rounds(opt, delta1, delta2):
    st = opt.init(X0)
    x1, st = opt.apply(X0, delta1, st)
    x2, st = opt.apply(x1, delta2, st)
    return x1, x2


D1, D2 = torch.tensor([0.1, -0.2]), torch.tensor([0.3, 0.1])

# name, optimizer, expected x1, expected x2 (computed by hand below each row)
CASES = [
    ("sgd lr 1", SGD(1.0), X0 + D1, X0 + D1 + D2),
    ("sgd lr 0.5", SGD(0.5), X0 + 0.5 * D1, X0 + 0.5 * (D1 + D2)),
    # momentum 0.9: m1 = d1, m2 = 0.9 d1 + d2
    ("momentum", SGD(1.0, 0.9), X0 + D1, X0 + D1 + (0.9 * D1 + D2)),
    # nesterov: step = d + 0.9 m; m1 = d1 -> 1.9 d1; m2 = 0.9 d1 + d2 -> d2 + 0.81 d1 + 0.9 d2
    ("nesterov", SGD(0.7, 0.9, nesterov=True), X0 + 0.7 * 1.9 * D1,
     X0 + 0.7 * 1.9 * D1 + 0.7 * (D2 + 0.9 * (0.9 * D1 + D2))),
]


@pytest.mark.parametrize(("name", "opt", "x1", "x2"), CASES, ids=[c[0] for c in CASES])
def test_sgd_family(name, opt, x1, x2):
    got1, got2 = _two_rounds(opt, D1, D2)
    torch.testing.assert_close(got1, x1)
    torch.testing.assert_close(got2, x2)


@pytest.mark.parametrize("lr", [1.0, 0.37])
def test_sgd_step_into_a_given_up_delta_is_the_same_bits(lr):
    gen = torch.Generator().manual_seed(3)
    params, delta = torch.randn(100_003, generator=gen), torch.randn(100_003, generator=gen)
    opt = SGD(lr)
    fresh, _ = opt.apply(params, delta, opt.init(params))
    kept = params.clone()
    given = delta.clone()
    reused, state = opt.apply(params, given, opt.init(params), consume=True)
    assert reused.data_ptr() == given.data_ptr()  # no new model-size tensor
    assert torch.equal(reused, fresh)
    assert torch.equal(params, kept)  # params itself is never written
    assert state.step == 1


def _adaptive_by_hand(kind, lr=0.1, b1=0.9, b2=0.99, tau=1e-3):
    m, v, x = [0.0, 0.0], [tau**2, tau**2], list(X0.tolist())
    for d in (D1.tolist(), D2.tolist()):
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * d[i]
            if kind == "adam":
                v[i] = b2 * v[i] + (1 - b2) * d[i] ** 2
            elif kind == "yogi":
                v[i] = v[i] - (1 - b2) * d[i] ** 2 * math.copysign(1, v[i] - d[i] ** 2)
            else:
                v[i] = v[i] + d[i] ** 2
            x[i] = x[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
    return torch.tensor(x)


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_adaptive_matches_reddi_algorithm(kind):
    _, x2 = _two_rounds(Adaptive(kind=kind, lr=0.1), D1, D2)
    torch.testing.assert_close(x2, _adaptive_by_hand(kind))


def test_aggregators_by_hand():
    torch.testing.assert_close(weighted_mean(U, W), MEAN)
    three = torch.tensor([[1.0, 5.0], [2.0, -1.0], [9.0, 0.0]])
    torch.testing.assert_close(coordinate_median(three, torch.ones(3)), torch.tensor([2.0, 0.0]))
    ten = torch.arange(10.0).unsqueeze(1)
    torch.testing.assert_close(trimmed_mean(ten, torch.ones(10), trim=0.2), torch.tensor([4.5]))
    with pytest.raises(ValueError):
        weighted_mean(U, torch.zeros(2))


def test_fednova_normalizes_by_local_steps():
    s = build_strategy("fednova")
    steps = torch.tensor([2.0, 4.0])
    # p = [0.75, 0.25]; d = 0.75 u0/2 + 0.25 u1/4; tau_eff = 0.75*2 + 0.25*4 = 2.5
    expected = 2.5 * (0.75 * U[0] / 2 + 0.25 * U[1] / 4)
    torch.testing.assert_close(aggregate_updates(s, U, W, steps), expected)
    # equal step counts: FedNova reduces to FedAvg
    same = torch.tensor([3.0, 3.0])
    torch.testing.assert_close(aggregate_updates(s, U, W, same), MEAN)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_and_steps(name):
    s = build_strategy(name, StrategyParams())
    state = s.server_opt.init(X0)
    x1, _ = server_step(s, X0, U, W, torch.tensor([1.0, 1.0]), state)
    assert x1.shape == X0.shape and bool(torch.isfinite(x1).all())
    assert not torch.equal(x1, X0)


def test_strategy_node_plans():
    assert build_strategy("fedprox", StrategyParams(prox_mu=0.3)).node_plan["prox_mu"] == 0.3
    assert build_strategy("scaffold").scaffold
    diloco = build_strategy("diloco")
    assert diloco.node_plan["optimizer"] == "adamw"
    assert diloco.server_opt == SGD(0.7, 0.9, nesterov=True)
    assert build_strategy("fedavgm").server_opt == SGD(1.0, 0.9)


def test_scaffold_control_step():
    c = torch.tensor([1.0, 1.0])
    dcs = torch.tensor([[0.5, 0.0], [0.5, 1.0]])
    torch.testing.assert_close(scaffold_control_step(c, dcs.sum(dim=0), num_nodes=4),
                               torch.tensor([1.25, 1.25]))


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="allowed"):
        build_strategy("fedmagic")
    with pytest.raises(ValueError, match="aggregator"):
        build_strategy("fedavg", StrategyParams(aggregator="mode"))
