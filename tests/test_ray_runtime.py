"""The Ray runtime on a local Ray instance gives the simulation's numbers (here with
generated sites, which the actors make themselves; the pinned runs cover held data)."""

from __future__ import annotations

import pytest

from fedtune.experiment import run

from .conftest import small_config

ray = pytest.importorskip("ray")


def test_ray_runtime_matches_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local instance
    overrides = ["strategy.name=\"scaffold\"", "run.rounds=3", "data.num_nodes=50",
                 "data.dataset=\"synthetic\"", "data.partition=\"natural\"",
                 "strategy.fraction=0.1"]
    local = run(small_config(*overrides), store=False)
    on_ray = run(small_config(*overrides, "runtime.kind=\"ray\"", "runtime.ray_actors=2"),
                 store=False)
    assert on_ray.final_test_loss == local.final_test_loss
    assert [r.nodes for r in on_ray.rounds] == [r.nodes for r in local.rounds]
    assert [r.train_loss for r in on_ray.rounds] == [r.train_loss for r in local.rounds]
    assert on_ray.total_bytes_down == local.total_bytes_down
    assert on_ray.node_accuracy_personalized == local.node_accuracy_personalized
    assert not ray.is_initialized(), "the runtime shut down the instance it started"
