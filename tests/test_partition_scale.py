"""The natural partition is linear in the samples and deals exactly as before."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.data.partition import natural


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(1, 8))
def test_natural_deals_group_j_to_node_j_mod_n_in_sample_order(groups, nodes):
    groups = np.array(groups)
    ids = np.unique(groups)
    if len(ids) < nodes:
        return
    parts = natural(np.zeros(len(groups)), nodes, np.random.default_rng(0), groups=groups)
    # the definition, written as the membership test it replaces
    want = [np.flatnonzero(np.isin(groups, ids[i::nodes])) for i in range(nodes)]
    assert len(parts) == nodes
    for got, expected in zip(parts, want, strict=True):
        assert np.array_equal(got, expected)
