"""Partitioners: split sample indices over nodes, deterministically by seed.

Each partitioner returns one index array per node; together they cover every index exactly
once. ``min_size`` is guaranteed (or a :class:`DataError` says which setting to change).

References:
    Hsu et al. 2019 (Dirichlet label skew); McMahan et al. 2017 (shards);
    Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study"
    (quantity skew).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import catalog
from ..errors import DataError

Partitioner = Callable[..., list[np.ndarray]]


def _check_capacity(n: int, num_nodes: int, min_size: int) -> None:
    if num_nodes < 1:
        raise DataError(f"data.num_nodes = {num_nodes}: need at least 1 node")
    if num_nodes * min_size > n:
        raise DataError(f"data.num_nodes = {num_nodes} with data.min_size = {min_size} needs "
                        f"{num_nodes * min_size} samples, but only {n} are left for the nodes; "
                        "lower data.num_nodes or data.min_size")


def iid(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, min_size: int = 1,
        **_: object) -> list[np.ndarray]:
    """Shuffle and deal out equal shares."""
    _check_capacity(len(labels), num_nodes, min_size)
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_nodes)]


def dirichlet(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
              alpha: float = 0.5, min_size: int = 1, **_: object) -> list[np.ndarray]:
    """Label skew: each class is split over nodes by proportions drawn from Dir(alpha)."""
    n = len(labels)
    _check_capacity(n, num_nodes, min_size)
    if alpha <= 0:
        raise DataError(f"data.alpha = {alpha}: the Dirichlet concentration must be > 0")
    classes = np.unique(labels)
    for _attempt in range(200):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_nodes, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for node, chunk in enumerate(np.split(idx, cuts)):
                parts[node].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    # Rejection failed (tiny alpha, many nodes): move samples from the largest nodes.
    return _top_up(out, min_size, rng)


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    parts = [p.copy() for p in parts]
    for i in range(len(parts)):
        while len(parts[i]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = rng.integers(len(parts[donor]))
            parts[i] = np.sort(np.append(parts[i], parts[donor][take]))
            parts[donor] = np.delete(parts[donor], take)
    return parts


def shards(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
           shards_per_node: int = 2, min_size: int = 1, **_: object) -> list[np.ndarray]:
    """Sort by label, cut into num_nodes * k shards, give each node k random shards."""
    n = len(labels)
    _check_capacity(n, num_nodes, min_size)
    total = num_nodes * shards_per_node
    if total > n:
        raise DataError(f"data.shards_per_node = {shards_per_node} with {num_nodes} nodes makes "
                        f"{total} shards from {n} samples; lower one of them")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, total)
    assignment = rng.permutation(total).reshape(num_nodes, shards_per_node)
    out = [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]
    return _top_up(out, min_size, rng) if min(map(len, out)) < min_size else out


def quantity(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
             alpha: float = 0.5, min_size: int = 1, **_: object) -> list[np.ndarray]:
    """Quantity skew: node sizes drawn from Dir(alpha), labels IID within each node."""
    n = len(labels)
    _check_capacity(n, num_nodes, min_size)
    extra = n - num_nodes * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(num_nodes, alpha)) * extra).astype(int)
    sizes[: n - sizes.sum()] += 1  # hand out the rounding remainder
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


def natural(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
            groups: np.ndarray | None = None, min_size: int = 1, **_: object) -> list[np.ndarray]:
    """The data's own groups (e.g. Synthetic's generating nodes), dealt round-robin."""
    if groups is None:
        raise DataError("data.partition = 'natural' needs a dataset with natural groups "
                        "(synthetic); use iid, dirichlet, shards or quantity")
    ids = np.unique(groups)
    if len(ids) < num_nodes:
        raise DataError(f"data.num_nodes = {num_nodes} exceeds the {len(ids)} natural groups")
    # group ids[j] goes to node j % num_nodes; one stable sort, linear in the samples (a
    # membership test per node was quadratic in the number of nodes)
    group_index = np.unique(groups, return_inverse=True)[1]
    node_of = group_index % num_nodes
    order = np.argsort(node_of, kind="stable")
    out = np.split(order, np.cumsum(np.bincount(node_of, minlength=num_nodes))[:-1])
    if min(map(len, out)) < min_size:
        raise DataError(f"a natural node has fewer than data.min_size = {min_size} samples")
    return out


PARTITIONERS = catalog.PARTITIONERS  # name -> partitioner
