"""Turn one dataset into a federation: a central test set, an optional central (public)
training split for the coordinator, and per-node train/test splits.

Order of the cuts, all seeded: stratified global test set -> central split -> partition of
the rest over nodes -> each node's own train/test split. Node data stays as tensors so the
trainer batches by index slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset
from .datasets import dataset_loader
from .partition import PARTITIONERS
from .sites import GeneratedSites, HeldSites, NodeData, Sites

__all__ = ["FederatedData", "GeneratedSites", "HeldSites", "NodeData", "build_federated_data",
           "partition_dataset"]


@dataclass
class FederatedData:
    """All the data of a simulated federation: its sites (:class:`HeldSites` in memory, or
    :class:`GeneratedSites` made when asked for) and the coordinator's test and central data."""

    dataset: str
    num_classes: int
    input_shape: tuple[int, ...]
    nodes: Sites
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_central: torch.Tensor
    y_central: torch.Tensor


def _split(idx: np.ndarray, fraction: float, rng: np.random.Generator,
           labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (rest, held) with ``fraction`` of ``idx`` held out (stratified if labels given)."""
    if fraction <= 0:
        return idx, idx[:0]
    if labels is None:
        perm = rng.permutation(idx)
        k = round(fraction * len(idx))
        return np.sort(perm[k:]), np.sort(perm[:k])
    held = []
    for c in np.unique(labels[idx]):
        members = rng.permutation(idx[labels[idx] == c])
        held.append(members[: round(fraction * len(members))])
    h = np.sort(np.concatenate(held))
    return np.setdiff1d(idx, h), h


def node_test_count(n: int, fraction: float) -> int:
    """How many of a node's ``n`` samples its own test split holds: at least one sample on
    each side when it has two or more."""
    k = round(fraction * n)
    if n >= 2 and fraction > 0:
        k = min(max(k, 1), n - 1)
    return k


def node_split(idx: np.ndarray, fraction: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A node's (train, test) indices, test holding :func:`node_test_count` of them."""
    perm = rng.permutation(idx)
    k = node_test_count(len(perm), fraction)
    return np.sort(perm[k:]), np.sort(perm[:k])


def partition_dataset(ds: Dataset, *, num_nodes: int, partition: str, seed: int,
                      test_fraction: float = 0.2, central_fraction: float = 0.0,
                      node_test_fraction: float = 0.2, min_size: int = 2,
                      **options: float) -> FederatedData:
    """Cut ``ds`` into a federation as described in the module docstring."""
    if partition not in PARTITIONERS:
        raise DataError(f"data.partition = {partition!r} is unknown; choose one of "
                        f"{', '.join(sorted(PARTITIONERS))}")
    rng = np.random.default_rng(seed)
    labels = ds.y.numpy()
    everything = np.arange(len(labels))
    pool, test = _split(everything, test_fraction, rng, labels)
    pool, central = _split(pool, central_fraction, rng, labels)
    groups = ds.groups[pool] if ds.groups is not None else None
    parts = PARTITIONERS[partition](labels[pool], num_nodes, rng, min_size=min_size,
                                    groups=groups, **options)
    width = len(str(num_nodes - 1))
    nodes = []
    for i, part in enumerate(parts):
        tr, te = node_split(pool[part], node_test_fraction, rng)
        nodes.append(NodeData(f"node-{i:0{width}d}", ds.x[tr].contiguous(), ds.y[tr].contiguous(),
                              ds.x[te].contiguous(), ds.y[te].contiguous()))
    return FederatedData(ds.name, ds.num_classes, ds.input_shape, HeldSites(nodes),
                         ds.x[test].contiguous(), ds.y[test].contiguous(),
                         ds.x[central].contiguous(), ds.y[central].contiguous())


def build_federated_data(dataset: str, *, num_nodes: int, partition: str, seed: int,
                         test_fraction: float = 0.2, central_fraction: float = 0.0,
                         node_test_fraction: float = 0.2, min_size: int = 2,
                         dataset_options: dict[str, float] | None = None,
                         **partition_options: float) -> FederatedData:
    """Load a bundled dataset and cut it into a federation; a dataset that builds its own
    natural federation (``synthetic``) does so, its sites made on demand."""
    options = dict(dataset_options or {})
    shift = options.pop("site_shift", 0.0)  # each site's inputs under its own transform
    loader = dataset_loader(dataset, options)
    federation = getattr(loader, "federation", None)
    if partition == "natural" and federation is not None:
        fd: FederatedData = federation(
            seed, num_nodes=num_nodes, test_fraction=test_fraction,
            central_fraction=central_fraction, node_test_fraction=node_test_fraction,
            min_size=min_size, **options)
        return fd
    ds = loader(seed, **options)
    out = partition_dataset(ds, num_nodes=num_nodes, partition=partition, seed=seed,
                            test_fraction=test_fraction, central_fraction=central_fraction,
                            node_test_fraction=node_test_fraction, min_size=min_size,
                            **partition_options)
    if shift:
        from .shift import shift_sites

        assert isinstance(out.nodes, HeldSites)
        out.nodes = shift_sites(out.nodes, shift, seed)
    return out
