"""End-to-end training behaviour: FedAvg = centralized GD, determinism, non-IID quality,
hybrid central phase, personalization, failures of one node."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fedtune.experiment import run
from fedtune.task import make_task
from fedtune.tasks import build_task

from .conftest import small_config


def test_fedavg_one_full_batch_step_equals_centralized_gd():
    """One full-batch local SGD step per node, weighted by examples, is exactly one GD step
    on the union of the nodes' data (mean loss)."""
    cfg = small_config("run.rounds=4", "local.steps=1", "local.batch_size=100000",
                       "local.momentum=0.0", "local.lr=0.3", "data.partition=\"dirichlet\"",
                       "evaluation.personalize_steps=0", "energy.enabled=false")
    task = build_task(cfg)
    result = run(cfg, task=task, store=False)
    x = torch.cat([n.x_train for n in task.data.nodes])
    y = torch.cat([n.y_train for n in task.data.nodes])
    torch.manual_seed(cfg.run.seed)
    model = task.model_factory()
    for _ in range(4):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad
    with torch.no_grad():
        central_loss = float(F.cross_entropy(model(task.data.x_test), task.data.y_test))
    assert result.final_test_loss == pytest.approx(central_loss, abs=1e-5)


def _final_params(*overrides):
    return run(small_config(*overrides), store=False)


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "diloco", "fedyogi"])
def test_same_seed_same_numbers(strategy):
    a = _final_params(f"strategy.name=\"{strategy}\"", "strategy.fraction=0.5")
    b = _final_params(f"strategy.name=\"{strategy}\"", "strategy.fraction=0.5")
    c = _final_params(f"strategy.name=\"{strategy}\"", "strategy.fraction=0.5", "run.seed=1")
    assert a.final_test_loss == b.final_test_loss
    assert [r.train_loss for r in a.rounds] == [r.train_loss for r in b.rounds]
    assert [r.nodes for r in a.rounds] == [r.nodes for r in b.rounds]
    assert a.node_accuracy_personalized == b.node_accuracy_personalized
    assert a.final_test_loss != c.final_test_loss


def test_sampling_by_fraction_and_count():
    res = _final_params("data.num_nodes=10", "strategy.fraction=0.3")
    assert all(len(r.nodes) == 3 for r in res.rounds)
    assert len({tuple(r.nodes) for r in res.rounds}) > 1, "different nodes each round"
    res = _final_params("data.num_nodes=10", "strategy.count=4")
    assert all(len(r.nodes) == 4 for r in res.rounds)


def test_noniid_digits_strategies_not_worse_than_fedavg():
    """Digits, Dirichlet(0.1), 10 nodes, 30 rounds, plain local SGD."""
    base = ["data.alpha=0.1", "run.rounds=30", "data.num_nodes=10", "local.momentum=0.0",
            "evaluation.personalize_steps=0", "run.eval_every=30"]
    acc = {}
    for name in ("fedavg", "scaffold", "fedprox", "fedadam"):
        cfg = small_config(*base, f"strategy.name=\"{name}\"")
        acc[name] = run(cfg, store=False).final_test_accuracy
    assert acc["fedavg"] > 0.8
    for name in ("scaffold", "fedprox", "fedadam"):
        assert acc[name] >= acc["fedavg"] - 0.02, acc


def test_hybrid_central_pretraining_helps_and_personalization_is_reported():
    base = ["data.central_fraction=0.3", "run.rounds=2", "evaluation.personalize_steps=20"]
    without = run(small_config(*base), store=False)
    with_pre = run(small_config(*base, "central.pretrain_steps=200",
                                "central.steps_between_rounds=20"), store=False)
    assert with_pre.final_test_accuracy > without.final_test_accuracy + 0.05
    assert set(with_pre.node_accuracy_personalized) == set(with_pre.node_accuracy_global)
    assert with_pre.fairness_personalized.mean >= with_pre.fairness_global.mean - 0.05
    assert 0 < with_pre.fairness_global.jain_index <= 1


def test_custom_task_and_a_failing_node():
    torch.manual_seed(0)
    w = torch.randn(5, 2)

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 5, generator=g)
        return x, (x @ w).argmax(1)

    calls = []

    def train_fn(model, x, y, plan, generator):
        if x.shape[0] == 7:
            raise RuntimeError("this site's GPU fell over")
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(5):
            opt.zero_grad()  # sets .grad to None: fedtune must re-seat its flat buffer
            F.cross_entropy(model(x), y).backward()
            opt.step()
        calls.append(x.shape[0])
        return 5

    task = make_task(lambda: torch.nn.Linear(5, 2),
                     {"a": (data(40, 1), data(10, 2)), "b": (data(30, 3), data(10, 4)),
                      "bad": (data(7, 5), data(5, 6))},
                     test=data(200, 7), train_fn=train_fn)
    res = run(small_config("run.rounds=5", "evaluation.personalize_steps=3"), task=task,
              store=False)
    assert all(r.failed == ["bad"] and r.nodes == ["a", "b"] for r in res.rounds)
    assert res.final_test_accuracy > 0.8
    assert sorted(set(calls)) == [30, 40]
