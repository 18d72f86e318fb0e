"""Node-side algorithm hooks: FedProx's pull, SCAFFOLD's control variates, DiLoCo's kept
inner optimizer state, invalid updates dropped by the coordinator, Dataset inputs."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from fedtune.algorithms.strategy import build_strategy
from fedtune.coordinator import Coordinator
from fedtune.energy import EnergyMeter
from fedtune.experiment import run
from fedtune.node.node import Node, Workbench
from fedtune.rounds.sync import sync_round
from fedtune.runtime.inprocess import InProcessRuntime
from fedtune.task import make_task
from fedtune.tasks import build_task
from fedtune.types import FitIns

from .conftest import small_config


def _world(*overrides):
    cfg = small_config(*overrides)
    task = build_task(cfg)
    bench = Workbench.create(task, torch.device("cpu"), cfg.run.seed)
    meter = EnergyMeter(use_rapl=False)
    nodes = [Node(d, seed=0, meter=meter, co2_per_joule=0.0, device=torch.device("cpu"))
             for d in task.data.nodes]
    return cfg, task, bench, nodes


def test_fedprox_term_pulls_towards_the_global_model():
    cfg, _, bench, nodes = _world()
    start = bench.flat.vector.clone()
    norms = []
    for mu in (0.0, 5.0):
        ins = FitIns(1, start, {**cfg.local.model_dump(), "prox_mu": mu, "epochs": 3.0})
        norms.append(float(nodes[0].fit(ins, bench).update.norm()))
    assert norms[1] < 0.7 * norms[0]


def test_scaffold_server_control_is_mean_of_node_controls():
    cfg, _, bench, nodes = _world("strategy.name=\"scaffold\"", "run.rounds=3")
    strategy = build_strategy("scaffold")
    runtime = InProcessRuntime(nodes, bench)
    coord = Coordinator(cfg, strategy, runtime, bench, meter=EnergyMeter(use_rapl=False),
                        co2_per_joule=0.0)
    for r in (1, 2, 3):
        sync_round(coord, r)
        mean_ci = torch.stack([n.state["scaffold_ci"] for n in nodes]).mean(0)
        torch.testing.assert_close(coord.state.control, mean_ci, atol=1e-5, rtol=1e-4)
    assert float(coord.state.control.norm()) > 0


def test_diloco_keeps_inner_adamw_state_between_rounds():
    cfg, _, bench, nodes = _world()
    plan = {**cfg.local.model_dump(), "optimizer": "adamw", "keep_optimizer_state": True,
            "steps": 4, "lr": 1e-3}
    nodes[0].fit(FitIns(1, bench.flat.vector.clone(), plan), bench)
    state = nodes[0].state["optimizer"]["adamw"]["state"][0]
    assert int(state["step"]) == 4
    nodes[0].fit(FitIns(2, bench.flat.vector.clone(), plan), bench)
    assert int(nodes[0].state["optimizer"]["adamw"]["state"][0]["step"]) == 8


def test_nan_update_is_dropped_and_the_run_goes_on():
    def train_fn(model, x, y, plan, generator):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float("nan") if x.shape[0] == 11 else 0.01)
        return 1

    g = torch.Generator().manual_seed(0)

    def data(n):
        x = torch.randn(n, 4, generator=g)
        return x, (x[:, 0] > 0).long()

    task = make_task(lambda: torch.nn.Linear(4, 2),
                     {"ok": (data(20), data(5)), "poisoned": (data(11), data(5))},
                     test=data(30), train_fn=train_fn)
    res = run(small_config("run.rounds=2", "evaluation.personalize_steps=0"), task=task,
              store=False)
    assert [r.failed for r in res.rounds] == [["poisoned"], ["poisoned"]]
    assert all(r.nodes == ["ok"] for r in res.rounds)
    assert res.final_test_loss == res.final_test_loss  # finite, not NaN


def test_torch_datasets_are_accepted_as_node_data():
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    task = make_task(lambda: torch.nn.Linear(3, 2),
                     {"a": (TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:]))},
                     test=(x, y))
    node = task.data.nodes[0]
    assert node.x_train.shape == (20, 3) and node.y_test.dtype == torch.int64
    res = run(small_config("run.rounds=1", "evaluation.personalize_steps=0"), task=task,
              store=False)
    assert res.rounds[0].nodes == ["a"]
