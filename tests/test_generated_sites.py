"""Synthetic sites are made when a round asks for them: the same data in any order and in
any process, sizes known up front, a bounded cache, and Nodes only for sites that worked."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fedtune.data import build_federated_data
from fedtune.data.sites import GeneratedSites
from fedtune.data.synthetic import (
    CENTRAL_SITES,
    SyntheticNodes,
    group_sizes,
    load_synthetic,
    make_group,
    synthetic_federation,
)
from fedtune.energy import EnergyMeter
from fedtune.experiment import run
from fedtune.models import mlp
from fedtune.node.node import Node, Workbench
from fedtune.runtime.inprocess import InProcessRuntime
from fedtune.task import Task
from fedtune.types import FitIns, FitRes

from .conftest import small_config


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k))
               for k in ("x_train", "y_train", "x_test", "y_test"))


def test_a_site_is_the_same_data_in_any_order_and_after_pickling():
    fd = synthetic_federation(5, num_nodes=40, num_groups=100, central_fraction=0.1)
    forward = [fd.nodes[i] for i in range(40)]
    fresh = synthetic_federation(5, num_nodes=40, num_groups=100, central_fraction=0.1)
    for i in reversed(range(40)):
        assert same(fresh.nodes[i], forward[i])
    copy = pickle.loads(pickle.dumps(fd.nodes))  # what a Ray actor receives
    assert copy._held_bytes == 0, "a pickled copy carries no cached data"
    assert same(copy[17], forward[17])


def test_sizes_and_cuts_add_up_without_making_the_data():
    maker = SyntheticNodes(1, 7, group_sizes(1, 30), alpha=1.0, beta=1.0, dim=60, classes=10,
                           test_fraction=0.2, central_fraction=0.1, node_test_fraction=0.25)
    sizes = group_sizes(1, 30)
    for i in range(7):
        data, (xt, yt), (xc, yc) = maker.shares(i)
        total = int(sizes[i::7].sum())  # node i owns groups i, i + 7, ...
        assert data.num_train == maker.num_train[i], "known before the data is made"
        assert data.num_train + len(data.y_test) + len(yt) + len(yc) == total
        assert len(yt) == round(0.2 * total) and len(yc) == round(0.1 * total)
        rows = torch.cat([data.x_train, data.x_test, torch.from_numpy(xt), torch.from_numpy(xc)])
        groups = [make_group(1, j, int(sizes[j]), alpha=1.0, beta=1.0, dim=60, classes=10)[0]
                  for j in range(i, 30, 7)]
        pooled = np.concatenate(groups)
        assert sorted(map(tuple, rows.numpy().tolist())) == sorted(map(tuple, pooled.tolist()))


def test_the_pooled_dataset_is_the_same_groups():
    ds = load_synthetic(2, num_groups=12)
    sizes = group_sizes(2, 12)
    x3, y3 = make_group(2, 3, int(sizes[3]), alpha=1.0, beta=1.0, dim=60, classes=10)
    assert np.array_equal(ds.x.numpy()[ds.groups == 3], x3)
    assert np.array_equal(ds.y.numpy()[ds.groups == 3], y3)


def test_the_central_sets_come_from_a_sample_of_sites_above_the_cap():
    fd = synthetic_federation(0, num_nodes=CENTRAL_SITES + 500)
    # about 20 % of the samples of CENTRAL_SITES sites, not of all of them
    maker = fd.nodes._make
    expected_all = int(maker.to_test.sum())
    assert 0.5 * expected_all < len(fd.y_test) < 0.85 * expected_all
    assert len(fd.nodes) == CENTRAL_SITES + 500
    assert fd.nodes._held_bytes <= 256 * 2**20


def test_the_cache_keeps_to_its_byte_budget_and_makes_a_dropped_site_again():
    maker = SyntheticNodes(0, 50, group_sizes(0, 50), alpha=1.0, beta=1.0, dim=60, classes=10,
                           test_fraction=0.2, central_fraction=0.0, node_test_fraction=0.2)
    calls = []

    def make(i):
        calls.append(i)
        return maker(i)

    sites = GeneratedSites(maker.ids, maker.num_train, make, cache_bytes=200_000)
    first = sites[0]
    for i in range(1, 50):
        sites[i]
        assert sites._held_bytes <= 200_000 or len(sites._cache) == 1
    again = sites[0]
    assert calls.count(0) == 2, "site 0 was dropped and made again"
    assert same(first, again)
    assert sites.site("nope") is None and sites.num_train("nope") is None
    with pytest.raises(KeyError, match="nope"):
        sites.require("nope")


def test_the_runtime_makes_a_node_only_for_sites_that_work():
    fd = build_federated_data("synthetic", num_nodes=300, partition="natural", seed=0,
                              dataset_options={"num_groups": 300.0})
    task = Task(lambda: mlp(60, (16,), 10), fd)
    bench = Workbench.create(task, torch.device("cpu"), 0)
    meter = EnergyMeter()

    def make_node(node_id):
        return Node.for_site(fd.nodes, node_id, seed=0, meter=meter, co2_per_joule=0.0,
                             device=torch.device("cpu"))

    runtime = InProcessRuntime.for_sites(fd.nodes, make_node, bench)
    assert len(runtime.node_ids) == 300 and runtime.nodes == {}
    assert runtime.train_examples("node-007") == fd.nodes[7].num_train
    config = small_config("local.steps=2").local.model_dump()
    replies = list(runtime.fit(["node-007", "node-123"], FitIns(1, bench.flat.vector.clone(),
                                                                config)))
    assert all(isinstance(r.result, FitRes) for r in replies)
    assert [r.result.node_id for r in replies] == ["node-007", "node-123"]
    assert sorted(runtime.nodes) == ["node-007", "node-123"]


def test_a_large_synthetic_run_is_deterministic():
    cfg = small_config("data.dataset=\"synthetic\"", "data.partition=\"natural\"",
                       "data.num_nodes=2000", "strategy.count=5", "run.rounds=2",
                       "evaluation.max_sites=20", "evaluation.personalize_steps=0")
    a, b = run(cfg, store=False), run(cfg, store=False)
    assert a.final_test_loss == b.final_test_loss
    assert a.node_accuracy_global == b.node_accuracy_global
    assert a.extra["node_eval_sample"]["of"] == 2000
