"""A new protocol stage (messages + a node handler, registered from outside) travels through
every runtime without touching their dispatch: in one process and over real gRPC."""

from __future__ import annotations

import subprocess

import pytest
import torch

from fedtune import message_schema as schema
from fedtune import wire
from fedtune.energy import EnergyMeter
from fedtune.node import node as node_module
from fedtune.node.node import Node, Workbench
from fedtune.runtime.inprocess import InProcessRuntime
from fedtune.tasks import build_task
from fedtune.types import NodeFailure

from .conftest import FEDTUNE, ROOT, small_config
from .deployment import make_runtime
from .stage_module import CountLabels, LabelCounts, register


@pytest.fixture(autouse=True)
def stage():
    """The stage is registered for each test and forgotten after, so that the message set
    other tests see is fedtune's own."""
    saved = (dict(wire.MESSAGES), set(wire.REPLIES), dict(schema.FIELDS), dict(schema.TENSORS),
             dict(schema.REQUIRED), dict(node_module.STAGES))
    register()
    yield
    for live, old in zip((wire.MESSAGES, wire.REPLIES, schema.FIELDS, schema.TENSORS,
                          schema.REQUIRED, node_module.STAGES), saved, strict=True):
        live.clear()
        live.update(old)


def test_a_registered_stage_runs_in_process():
    cfg = small_config()
    task = build_task(cfg)
    bench = Workbench.create(task, torch.device("cpu"), 0)
    nodes = [Node(d, seed=0, meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0,
                  device=torch.device("cpu")) for d in task.data.nodes]
    runtime = InProcessRuntime(nodes, bench)
    replies = list(runtime.exchange(runtime.node_ids, CountLabels(1, 10)))
    assert [r.result.node_id for r in replies] == runtime.node_ids
    for reply, data in zip(replies, task.data.nodes, strict=True):
        assert isinstance(reply.result, LabelCounts)
        assert torch.equal(reply.result.counts, torch.bincount(data.y_train, minlength=10))
        assert reply.bytes_down > 0 and reply.bytes_up > 0


def test_a_registered_stage_runs_over_grpc(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the sites import the stage via --task
    runtime, address = make_runtime()
    sites = [subprocess.Popen([FEDTUNE, "join", "--server", address, "--site", f"node-{i}",
                               "--task", "tests.stage_module:build", "--max-attempts", "20"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / f"site{i}.log").open("w"))
             for i in range(2)]
    try:
        assert runtime.wait_for_nodes(2) == ["node-0", "node-1"]
        replies = {r.result.node_id: r for r in runtime.exchange(["node-0", "node-1", "gone"],
                                                                 CountLabels(1, 10))}
        task = build_task(small_config("data.num_nodes=2"))
        for data in task.data.nodes:
            got = replies[data.node_id].result
            assert isinstance(got, LabelCounts), got
            assert torch.equal(got.counts, torch.bincount(data.y_train, minlength=10))
        assert isinstance(replies["gone"].result, NodeFailure)
    finally:
        runtime.close()
        for proc in sites:
            proc.wait(timeout=60)
