"""The node as hooks around training: typed instructions, hooks around a custom train_fn,
rollback of exactly the state the hooks declare."""

from __future__ import annotations

import pytest
import torch

from fedtune.errors import MessageError
from fedtune.node.node import Node, Workbench
from fedtune.runtime.base import Reply
from fedtune.runtime.inprocess import InProcessRuntime
from fedtune.task import make_task
from fedtune.tasks import build_task
from fedtune.types import FitIns, FitRes, NodeFailure

from .conftest import small_config


def _world(train_fn=None):
    cfg = small_config()
    task = build_task(cfg)
    if train_fn is not None:
        nodes = {n.node_id: ((n.x_train, n.y_train), (n.x_test, n.y_test))
                 for n in task.data.nodes}
        task = make_task(task.model_factory, nodes, (task.data.x_test, task.data.y_test),
                         train_fn=train_fn)
    bench = Workbench.create(task, torch.device("cpu"), 0)
    from fedtune.energy import EnergyMeter

    node = Node(task.data.nodes[0], seed=0, meter=EnergyMeter(use_rapl=False),
                co2_per_joule=0.0, device=torch.device("cpu"))
    return cfg, bench, node


def test_an_unknown_instruction_key_is_refused_by_name():
    cfg, bench, node = _world()
    ins = FitIns(1, bench.flat.vector.clone(), {**cfg.local.model_dump(), "prox_muu": 0.1})
    with pytest.raises(MessageError, match="'prox_muu'"):
        node.fit(ins, bench)
    reply: Reply = next(InProcessRuntime([node], bench).fit([node.node_id], ins))
    assert isinstance(reply.result, NodeFailure) and "prox_muu" in reply.result.reason


def test_a_custom_train_fn_still_runs_the_hooks():
    def train_fn(model, x, y, plan, generator):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        return 3

    cfg, bench, node = _world(train_fn)
    params = bench.flat.vector.clone()
    config = {**cfg.local.model_dump(), "uplink": "topk:0.5", "error_feedback": True,
              "block": 256}
    res = node.fit(FitIns(1, params, config, {"scaffold_c": torch.zeros_like(params)}), bench)
    assert isinstance(res, FitRes)
    assert res.encoding == "topk:0.5@256" and res.update.numel() == 0  # uplink transforms
    assert "scaffold_dc" in res.aux and "scaffold_ci" in node.state  # SCAFFOLD's node part
    assert node.state["uplink"][0] is not None  # the error-feedback residual is kept


def test_rollback_restores_only_the_declared_state_and_repeats_the_answer():
    cfg, bench, node = _world()
    params = bench.flat.vector.clone()
    untouched = torch.ones(10)
    node.state["mine"] = untouched  # a key no hook declares
    config = {**cfg.local.model_dump(), "uplink": "randk:0.3", "error_feedback": True}
    aux = {"scaffold_c": torch.full_like(params, 0.01)}
    first = node.fit(FitIns(4, params, config, aux), bench)
    assert set(node._state_before_last_fit) == set()  # nothing was declared before round 4
    again = node.fit(FitIns(4, params, config, aux), bench)  # the same round, asked again
    assert torch.equal(first.aux["scaffold_dc"], again.aux["scaffold_dc"])
    assert torch.equal(first.aux["packed.values"], again.aux["packed.values"])
    nxt = node.fit(FitIns(5, params, config, aux), bench)
    assert set(node._state_before_last_fit) == {"scaffold_ci", "uplink"}
    assert node.state["mine"] is untouched  # never copied, never rolled back
    assert not torch.equal(nxt.aux["packed.values"], again.aux["packed.values"])
