"""Personalization: what travels and what stays, each method's node part checked against its
paper's update or the case it reduces to, and bad layouts refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedtune.energy import EnergyMeter
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.node.node import Node, Workbench
from fedtune.node.trainer import LocalPlan, train_locally
from fedtune.params import FlatModel
from fedtune.personal.layout import local_names
from fedtune.personal.meta_loop import HF_DELTA, perfedavg_loop
from fedtune.tasks import build_task
from fedtune.types import FitIns
from fedtune.wire import decode, encode

from .conftest import small_config

CPU = torch.device("cpu")


def _world(*overrides, local=(), buffers="travel"):
    cfg = small_config(*overrides)
    task = build_task(cfg)
    bench = Workbench.create(task, CPU, cfg.run.seed, local=local, buffers=buffers)
    nodes = [Node(d, seed=0, meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0, device=CPU)
             for d in task.data.nodes]
    return cfg, bench, nodes


def test_the_personal_head_is_the_suffix_and_never_travels():
    cfg, bench, nodes = _world(local=("head",))
    flat = bench.flat
    assert flat.spec.names == ("1.weight", "1.bias")  # the body only
    assert flat.local_names == ("3.weight", "3.bias")
    assert flat.shared.numel() + flat.local.numel() == flat.vector.numel()
    ins = FitIns(1, flat.shared.clone(), {**cfg.local.model_dump(), "personal": "fedper"})
    res = nodes[0].fit(ins, bench)
    head = nodes[0].state["personal"]["local"]
    assert not torch.equal(head, flat.initial_local), "the head trained"
    assert res.update.numel() == flat.spec.numel
    wire = encode(res)
    needle = head[:16].numpy().tobytes()  # any run of the head's own bytes
    assert needle not in wire and head.numpy().tobytes()[-64:] not in wire
    assert decode(wire).update.numel() == flat.spec.numel
    # the next site starts from the initial head, not from the first site's
    nodes[1].fit(ins, bench)
    assert not torch.equal(nodes[1].state["personal"]["local"], head)


def test_a_site_keeps_its_head_between_rounds_and_a_repeated_round_rolls_back():
    cfg, bench, nodes = _world(local=("head",))
    config = {**cfg.local.model_dump(), "personal": "fedper"}
    start = bench.flat.shared.clone()
    nodes[0].fit(FitIns(1, start, config), bench)
    after_one = nodes[0].state["personal"]["local"].clone()
    first = nodes[0].fit(FitIns(2, start, config), bench)
    again = nodes[0].fit(FitIns(2, start, config), bench)  # round 2 asked twice
    assert torch.equal(first.update, again.update)
    assert not torch.equal(nodes[0].state["personal"]["local"], after_one)


def test_fedper_without_local_layers_is_fedavg():
    cfg, bench, nodes = _world()
    start = bench.flat.shared.clone()
    plain = nodes[0].fit(FitIns(1, start, cfg.local.model_dump()), bench)
    fedper = nodes[1].fit(FitIns(1, start, {**cfg.local.model_dump(), "personal": "fedper"}),
                          bench)
    nodes[1].state.clear()
    twin = Node(nodes[0].data, seed=0, meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0,
                device=CPU)
    again = twin.fit(FitIns(1, start, {**cfg.local.model_dump(), "personal": "fedper"}), bench)
    assert torch.equal(plain.update, again.update)
    assert fedper.update.shape == plain.update.shape


def test_ditto_sends_fedavgs_update_and_its_personal_model_follows_lambda():
    cfg, bench, nodes = _world("local.momentum=0.0", "local.epochs=3")
    start = bench.flat.shared.clone()
    plain = nodes[0].fit(FitIns(1, start, cfg.local.model_dump()), bench)
    distances = []
    for lam in (0.0, 1.0 / cfg.local.lr):  # lr * lam = 1: each step lands next to w
        node = Node(nodes[0].data, seed=0, meter=EnergyMeter(use_rapl=False),
                    co2_per_joule=0.0, device=CPU)
        res = node.fit(FitIns(1, start, {**cfg.local.model_dump(), "personal": "ditto",
                                         "ditto_lam": lam}), bench)
        assert torch.equal(res.update, plain.update), "the update that travels is FedAvg's"
        distances.append(float((node.state["ditto"] - start).norm()))
    assert distances[1] < 0.2 * distances[0]


def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_alone():
    cfg, bench, nodes = _world(local=("head",))
    flat = bench.flat
    n = flat.spec.numel
    x, y = nodes[0].data.x_train, nodes[0].data.y_train
    before = flat.vector.clone()
    train_locally(flat, x, y, F.cross_entropy, LocalPlan(steps=5, momentum=0.9),
                  torch.Generator().manual_seed(0), trainable=slice(n, None))
    assert torch.equal(flat.vector[:n], before[:n]) and not torch.equal(flat.vector[n:],
                                                                          before[n:])
    config = {**cfg.local.model_dump(), "personal": "fedrep", "head_steps": 4}
    res = nodes[0].fit(FitIns(1, before[:n].clone(), config), bench)
    head_only = Node(nodes[0].data, seed=0, meter=EnergyMeter(use_rapl=False),
                     co2_per_joule=0.0, device=CPU)
    # the head's phase alone gives the head the site keeps: the body phase never moved it
    flat.load_(before[:n])
    flat.local.copy_(flat.initial_local)
    gen = head_only._generator(1, "head")
    plan = LocalPlan(steps=4, batch_size=cfg.local.batch_size, lr=cfg.local.lr)
    train_locally(flat, x, y, F.cross_entropy, plan, gen, trainable=slice(n, None))
    assert torch.equal(nodes[0].state["personal"]["local"], flat.local)
    assert float(res.update.norm()) > 0


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0]))

    def forward(self, x):
        return x @ self.w


def _mse(pred, y):
    return ((pred - y) ** 2).mean()


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_step_matches_the_paper_by_hand(variant):
    """One meta-step on a linear least-squares model, whose gradient is linear in w, so the
    Hessian is exact and the finite-difference product too: w - beta (I - alpha H'') g'."""
    torch.manual_seed(0)
    x = torch.randn(12, 2)
    y = torch.randn(12)
    flat = FlatModel(_Linear())
    flat.zero_grad()
    w = flat.vector.clone()
    alpha, beta = 0.1, 0.05
    plan = LocalPlan(steps=1, batch_size=4, lr=beta)
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    d1, d2, d3 = order[:4], order[4:8], order[8:12]
    perfedavg_loop(flat, x, y, _mse, plan, gen, alpha=alpha, variant=variant)

    def grad(v, idx):
        return 2 * x[idx].T @ (x[idx] @ v - y[idx]) / len(idx)

    tmp = w - alpha * grad(w, d1)
    g = grad(tmp, d2)
    if variant == "hf":
        hessian = 2 * x[d3].T @ x[d3] / len(d3)
        g = g - alpha * hessian @ g
    torch.testing.assert_close(flat.vector, w - beta * g, atol=1e-5, rtol=1e-5)
    assert HF_DELTA > 0


def test_reptile_is_fedavg_with_the_meta_step_size(tmp_path):
    base = ["run.rounds=2", "data.num_nodes=3", "energy.enabled=false"]
    reptile = run(small_config(*base, 'personalization.method="reptile"',
                               "personalization.meta_lr=0.5"), store=False)
    fedavg = run(small_config(*base, "strategy.server_lr=0.5"), store=False)
    assert reptile.final_test_loss == fedavg.final_test_loss
    assert reptile.extra["personal"]["mean_acc"] == pytest.approx(
        fedavg.fairness_personalized.mean)


def test_batchnorm_statistics_travel_as_a_mean_or_stay_at_each_site():
    travel = run(small_config('model.norm="batch"', "energy.enabled=false"), store=False)
    assert travel.status == "complete" and travel.final_test_accuracy > 0.7
    cfg, bench, nodes = _world('model.norm="batch"', buffers="local")
    assert bench.flat.buffers("travel").numel() == 0
    start = bench.flat.shared.clone()
    for node in nodes[:2]:
        node.fit(FitIns(1, start, cfg.local.model_dump()), bench)
    a, b = (node.state["personal"]["local_buffers"] for node in nodes[:2])
    assert a.numel() == 2 * 128 and not torch.equal(a, b), "each site its own statistics"


def test_fedbn_keeps_norm_layers_and_their_statistics():
    _cfg, bench, _nodes = _world('model.norm="batch"', local=("norm",))
    assert bench.flat.local_names == ("2.weight", "2.bias")
    assert bench.flat.buffers("travel").numel() == 0, "FedBN's statistics stay too"
    res = run(small_config('model.norm="batch"', 'personalization.method="fedbn"',
                           "energy.enabled=false"), store=False)
    assert res.extra["personal"]["local"] == ["norm"] and res.extra["personal"]["sites"] == 4


@pytest.mark.parametrize(("overrides", "says"), [
    (['personalization.method="fedper"', 'personalization.local=["nothing.*"]'],
     "matches no trainable parameter"),
    (['personalization.method="fedper"', 'personalization.local=["*"]'], "nothing would be shared"),
    (['personalization.method="fedbn"'], "no normalization layer"),
    (['personalization.local=["head"]'], "shares the whole model"),
    (['personalization.method="reptile"', 'strategy.name="fedprox"'], "strategy.name"),
    (['personalization.method="ditto"', 'local.optimizer="adamw"'], "local.optimizer"),
    (['personalization.method="fedper"', "personalization.holdout_sites=4"], "no site to train"),
])
def test_a_layout_or_method_that_cannot_work_is_refused_by_name(overrides, says):
    with pytest.raises(ConfigError, match=says):
        run(small_config(*overrides), store=False)


def test_patterns_and_built_in_sets():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert local_names(model, ["head"]) == {"2.weight", "2.bias"}
    assert local_names(model, ["norm"]) == {"1.weight", "1.bias"}
    assert local_names(model, ["0.*"]) == {"0.weight", "0.bias"}


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_apfl_with_a_fixed_mix_reduces_to_sgd_for_its_models(alpha):
    """alpha = 0: the personal model never moves; alpha = 1: it trains exactly as local SGD
    does, and the shared model's update is plain SGD's either way."""
    cfg, bench, nodes = _world("local.momentum=0.0", "local.steps=6")
    start = bench.flat.shared.clone()
    plain = nodes[0].fit(FitIns(1, start, cfg.local.model_dump()), bench)
    node = Node(nodes[0].data, seed=0, meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0,
                device=CPU)
    res = node.fit(FitIns(1, start, {**cfg.local.model_dump(), "personal": "apfl",
                                     "apfl_alpha": alpha, "apfl_alpha_lr": 0.0}), bench)
    torch.testing.assert_close(res.update, plain.update, atol=1e-6, rtol=0)
    v = node.state["apfl"]["v"]
    expected = start if alpha == 0.0 else start + plain.update
    torch.testing.assert_close(v, expected, atol=1e-6, rtol=0)
    assert node.state["apfl"]["alpha"] == alpha


def test_travelling_buffers_are_averaged_in_site_order_and_bad_ones_left_out():
    from fedtune.personal.round_part import Personalization
    from fedtune.personal.settings import PersonalizationSection

    part = Personalization(PersonalizationSection(), torch.zeros(3))
    state = part.init()
    part.receive(None, {"buffers": torch.tensor([3.0, 3.0, 3.0])}, state, "b")
    part.receive(None, {"buffers": torch.tensor([1.0, 2.0, 3.0])}, state, "a")
    part.receive(None, {"buffers": torch.tensor([float("nan"), 0.0, 0.0])}, state, "c")
    part.receive(None, {"buffers": torch.ones(5)}, state, "d")  # the wrong size
    part.release(torch.zeros(1), state, 1)
    torch.testing.assert_close(state, torch.tensor([2.0, 2.5, 3.0]))
    assert part.instruction_aux(state)["buffers"] is state
    assert Personalization(PersonalizationSection(), torch.zeros(0)).init() is None


def test_a_last_batch_of_one_joins_the_one_before_so_batchnorm_trains():
    from fedtune.node.trainer import shuffled_batches

    gen = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(65, 32, 4, gen, torch.device("cpu")))
    assert [len(b) for b in batches] == [32, 33, 32, 33]  # two epochs of 65
    assert sorted(torch.cat(batches[:2]).tolist()) == list(range(65))
    assert LocalPlan(epochs=1.0, batch_size=32).num_steps(65) == 2
    assert LocalPlan(epochs=1.0, batch_size=32).num_steps(1) == 1
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    flat = FlatModel(model)
    x, y = torch.randn(33, 4), torch.randint(0, 2, (33,))
    stats, _ = train_locally(flat, x, y, F.cross_entropy, LocalPlan(epochs=2.0, batch_size=32),
                             torch.Generator().manual_seed(1))
    assert stats.steps == 2 and stats.examples == 66
