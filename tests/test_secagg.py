"""Secure aggregation: Shamir sharing, the fixed-point ring and its error bound, masks that
make one upload independent of its update, and rounds whose sum is the survivors' mean with
0 %, 10 % and 30 % of the sites dropped after sharing their keys."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.config import load_config
from fedtune.energy import EnergyMeter
from fedtune.errors import ConfigError, MessageError
from fedtune.experiment import run
from fedtune.node.node import Node, Workbench
from fedtune.secagg import keys, shamir
from fedtune.secagg.driver import neighbour_count, neighbour_graph
from fedtune.secagg.masking import Ring, masked_input
from fedtune.secagg.protocol import Unmask, unmask
from fedtune.tasks import build_task
from fedtune.types import FitIns

from .conftest import small_config
from .test_run_resume import final


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.binary(min_size=32, max_size=32), st.integers(2, 7), st.integers(0, 3))
def test_any_t_shares_give_the_secret_back(secret, t, extra):
    xs = list(range(1, t + extra + 1))
    shares = shamir.split(secret, threshold=t, xs=xs)
    for subset in itertools.islice(itertools.combinations(zip(xs, shares, strict=True), t), 5):
        assert shamir.combine(list(subset), length=32) == secret
    fewer = list(zip(xs, shares, strict=True))[: t - 1]
    if fewer:  # t - 1 shares interpolate some other polynomial: not the secret
        assert shamir.combine(fewer, length=66)[-32:] != secret


def test_shamir_refuses_bad_parameters():
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"x" * 32, threshold=4, xs=[1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"x" * 32, threshold=2, xs=[1, 1, 2])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 12), st.integers(0, 2**31), st.sampled_from([16, 32, 48]))
def test_the_decoded_sum_is_within_the_documented_bound(k, seed, bits):
    ring = Ring(bits, clip=2.0, summands=k)
    updates = torch.empty(k, 50).uniform_(-3, 3, generator=torch.Generator().manual_seed(seed))
    total = np.zeros(50, dtype=np.int64)
    for u in updates:
        total = ring.add(total, ring.encode(u))
    exact = updates.clamp(-2, 2).double().sum(0)
    assert (ring.decode(total).double() - exact).abs().max() <= ring.error_bound + 1e-6


def test_masks_cancel_and_one_masked_upload_is_uniform_whatever_the_update():
    ring = Ring(32, clip=1.0, summands=3)
    pair = {(0, 1): b"a" * 32, (0, 2): b"b" * 32, (1, 2): b"c" * 32}
    seeds = [bytes([i]) * 32 for i in range(3)]
    updates = [torch.full((20000,), 0.9), torch.full((20000,), -0.9), torch.zeros(20000)]
    masked = []
    for u in range(3):
        pairs = {v: pair[tuple(sorted((u, v)))] for v in range(3) if v != u}
        masked.append(masked_input(ring, ring.encode(updates[u]), seeds[u], pairs, u))
    total = np.zeros(20000, dtype=np.int64)
    for y in masked:
        total = ring.add(total, y)
    for s in seeds:
        total = ring.sub(total, keys.expand(s, 20000, 32))
    assert torch.allclose(ring.decode(total), torch.zeros(20000), atol=ring.error_bound)
    # a constant update becomes 20,000 values spread evenly over the ring: chi-square of the
    # top 4 bits (16 cells, 15 degrees of freedom; 99.9 % quantile 37.7)
    for y in masked[:2]:
        counts = np.bincount((y >> 28).astype(np.int64), minlength=16)
        chi2 = ((counts - 1250.0) ** 2 / 1250.0).sum()
        assert chi2 < 37.7
    assert abs(np.corrcoef(masked[0].astype(float), masked[1].astype(float))[0, 1]) < 0.05


def test_the_neighbour_graph_is_symmetric_and_logarithmic():
    ids = [f"s{i:04d}" for i in range(1000)]
    k = neighbour_count(1000, 0)
    assert k == 40 and neighbour_count(100, 0) == 28 and neighbour_count(10, 0) == 9
    graph = neighbour_graph(ids, k, seed=3)
    assert all(len(v) == k for v in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert neighbour_graph(ids, k, seed=3) == graph


def test_a_site_never_gives_both_secrets_of_one_neighbour():
    node = Node.__new__(Node)
    node.node_id, node.state = "a", {"secagg": {"round": torch.tensor(1), "received": ([], None)}}
    with pytest.raises(MessageError, match="both a survivor and dropped"):
        unmask(node, Unmask(1, ["b"], ["b"]), None)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="not a survivor"):
        unmask(node, Unmask(1, ["b"], ["a"]), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_a_secure_round_gives_the_mean_of_its_survivors(tmp_path, dropout):
    cfg = small_config('strategy.mode="secagg"', "data.num_nodes=10", "run.rounds=1",
                       f"secagg.simulated_dropout={dropout}", "run.checkpoint_every=1",
                       "evaluation.personalize_steps=0", f'run.workspace="{tmp_path}"')
    result = run(cfg)
    data, params = final(tmp_path)
    survivors = result.rounds[0].nodes
    assert len(survivors) == 10 - round(dropout * 10) and result.status == "complete"
    # the plain mean of the same sites' updates, each site trained again from the same start
    task = build_task(cfg)
    bench = Workbench.create(task, torch.device("cpu"), cfg.run.seed)
    start = bench.flat.vector.clone()
    ins = FitIns(1, start, cfg.local.model_dump())
    updates = []
    for node_id in survivors:
        node = Node.for_site(task.data.nodes, node_id, seed=cfg.run.seed,
                             meter=EnergyMeter(use_rapl=False), co2_per_joule=0.0,
                             device=torch.device("cpu"))
        updates.append(node.fit(ins, bench).update)
    expected = start + torch.stack(updates).clamp(-1, 1).mean(0)
    got = torch.cat([params[n].flatten() for n in bench.flat.spec.names])
    bound = Ring(32, 1.0, 10).error_bound / len(survivors)
    assert (got - expected).abs().max().item() <= bound + 1e-6
    stages = [n for n in data["node_metrics"] if n["phase"] == "secagg"]
    assert stages and all(n["bytes_up"] > 0 for n in stages), "the extra stages are counted"


def test_too_many_dropouts_abort_rounds_and_the_run_says_why():
    result = run(small_config('strategy.mode="secagg"', "data.num_nodes=4", "run.rounds=2",
                              "secagg.simulated_dropout=0.75"), store=False)
    assert result.status == "failed"
    assert "secure aggregation aborted" in result.extra["status_reason"]


@pytest.mark.parametrize(("override", "message"), [
    ('strategy.aggregator="median"', "needs every single update"),
    ('privacy.mode="central"', "never sees them"),
    ('compression.uplink="q8"', "do not compress"),
    ('strategy.name="scaffold"', "control variates"),
    ('strategy.weighting="examples"', "hides each site's weight"),
    ("secagg.threshold=1.5", "secagg.threshold"),
    ("secagg.bits=64", "secagg.bits"),
])
def test_what_secure_aggregation_cannot_do_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ['strategy.mode="secagg"', override])
