"""Selection parts: seeded, the same in every runtime; Poisson sampling's stated property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.selection import FixedSize, PoissonSampling
from fedtune.errors import ConfigError
from fedtune.experiment import run

from .conftest import small_config

NODES = [f"node-{i}" for i in range(20)]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.floats(0.05, 1.0), st.integers(0, 20), st.integers(1, 20), st.integers(1, 500))
def test_fixed_size_takes_the_asked_number_in_selection_order(fraction, count, min_nodes, r):
    picked = FixedSize(fraction, count, min_nodes).select(NODES, r, 0)
    want = min(count if count else max(min_nodes, round(fraction * 20)), 20)
    assert len(picked) == want == len(set(picked))
    assert picked == sorted(picked, key=NODES.index)
    assert picked == FixedSize(fraction, count, min_nodes).select(NODES, r, 0)


def test_poisson_sampling_includes_each_node_with_its_rate():
    """Over R rounds each node's count is Binomial(R, q): within 5 standard deviations."""
    q, rounds = 0.3, 2000
    counts = dict.fromkeys(NODES, 0)
    sizes = set()
    for r in range(rounds):
        picked = PoissonSampling(q).select(NODES, r, seed=11)
        sizes.add(len(picked))
        for node in picked:
            counts[node] += 1
    sd = math.sqrt(rounds * q * (1 - q))
    assert all(abs(c - rounds * q) < 5 * sd for c in counts.values()), counts
    assert len(sizes) > 5, "the round's size varies"
    assert PoissonSampling(q).select(NODES, 7, 11) == PoissonSampling(q).select(NODES, 7, 11)
    assert PoissonSampling(1.0).select(NODES, 3, 0) == NODES


def test_a_run_with_poisson_selection_and_its_config_rule():
    result = run(small_config('strategy.selection="poisson"', "strategy.fraction=0.5",
                              "data.num_nodes=8", "run.rounds=4"), store=False)
    assert result.status == "complete"
    assert len({len(r.nodes) for r in result.rounds}) > 1, "Poisson rounds differ in size"
    with pytest.raises(ConfigError, match=r"strategy\.count must stay 0"):
        small_config('strategy.selection="poisson"', "strategy.count=3")
    with pytest.raises(ConfigError, match="unknown selection"):
        small_config('strategy.selection="lottery"')
