"""Partitioners: coverage, disjointness, determinism, minimum size; federated splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.data import build_federated_data, load_dataset
from fedtune.data.partition import PARTITIONERS
from fedtune.errors import DataError

LABELS = np.repeat(np.arange(10), 50)


def _check(parts, n, min_size):
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "every index is assigned"
    assert len(np.unique(allidx)) == n, "no index is assigned twice"
    assert min(map(len, parts)) >= min_size


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["iid", "dirichlet", "shards", "quantity"]),
       nodes=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       alpha=st.floats(0.05, 10.0), min_size=st.integers(1, 10))
def test_partitions_cover_disjoint_min_size(name, nodes, seed, alpha, min_size):
    parts = PARTITIONERS[name](LABELS, nodes, np.random.default_rng(seed), alpha=alpha,
                               min_size=min_size, shards_per_node=2)
    assert len(parts) == nodes
    _check(parts, len(LABELS), min_size)
    again = PARTITIONERS[name](LABELS, nodes, np.random.default_rng(seed), alpha=alpha,
                               min_size=min_size, shards_per_node=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_not():
    def label_entropy(alpha):
        parts = PARTITIONERS["dirichlet"](LABELS, 10, np.random.default_rng(0), alpha=alpha)
        ents = []
        for p in parts:
            q = np.bincount(LABELS[p], minlength=10) / len(p)
            ents.append(-(q[q > 0] * np.log(q[q > 0])).sum())
        return np.mean(ents)

    assert label_entropy(0.1) < 1.2 < 2.0 < label_entropy(100.0)


def test_shards_give_few_classes():
    parts = PARTITIONERS["shards"](LABELS, 10, np.random.default_rng(0), shards_per_node=2)
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 2


def test_impossible_partitions_name_the_setting():
    with pytest.raises(DataError, match=r"data\.num_nodes"):
        PARTITIONERS["iid"](LABELS, 600, np.random.default_rng(0), min_size=1)
    with pytest.raises(DataError, match="natural"):
        PARTITIONERS["natural"](LABELS, 3, np.random.default_rng(0))


@pytest.mark.parametrize("dataset", ["digits", "wine", "breast_cancer", "mnist1d", "synthetic"])
def test_federated_splits_are_disjoint_and_deterministic(dataset):
    options = {"num_groups": 6.0} if dataset == "synthetic" else {}
    partition = "natural" if dataset == "synthetic" else "dirichlet"
    kw = dict(num_nodes=6, partition=partition, seed=3, central_fraction=0.1,
              dataset_options=options)
    a = build_federated_data(dataset, **kw)
    b = build_federated_data(dataset, **kw)
    rows = [a.x_test, a.x_central] + [t for n in a.nodes for t in (n.x_train, n.x_test)]
    total = sum(r.shape[0] for r in rows)
    assert total == load_dataset(dataset, 3, **options).x.shape[0], "every sample used once"
    assert a.x_central.shape[0] > 0 and a.x_test.shape[0] > 0
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        assert np.array_equal(na.y_train.numpy(), nb.y_train.numpy())
        assert na.num_train >= 1 and na.x_test.shape[0] >= 1


def test_digits_read_from_scikit_learns_file_equal_its_loader():
    """fedtune reads digits.csv.gz itself (importing scikit-learn costs seconds): the same
    images and labels as sklearn.datasets.load_digits, standardized."""
    import torch
    from sklearn.datasets import load_digits

    ours, theirs = load_dataset("digits", 0), load_digits()
    std = theirs.data.std(axis=0)
    expected = (theirs.data - theirs.data.mean(axis=0)) / np.where(std > 0, std, 1.0)
    assert torch.equal(ours.y, torch.as_tensor(theirs.target, dtype=torch.int64))
    assert torch.equal(ours.x, torch.as_tensor(expected, dtype=torch.float32))
    assert ours.num_classes == 10 and ours.x.shape == (1797, 64)
