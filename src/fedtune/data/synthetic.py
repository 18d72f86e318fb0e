"""Synthetic(alpha, beta) of the FedProx paper, made one group at a time.

Group ``j`` (one generating device of the paper) draws its model and its input distribution
from its own seed, so any group can be made alone, in any order, in any process, with the
same numbers. Group sizes come first, from one seeded draw, so a federation's sizes are known
before any data exists.

With ``data.partition = "natural"`` the federation is built here, not by cutting a pooled
dataset: node ``i`` owns groups ``i, i + N, i + 2N, ...`` (round-robin, as the natural
partitioner deals them); each node's samples are cut, by the node's own seed, into a share
for the central test set (``test_fraction``), a share for the coordinator's central split
(``central_fraction``), and the node's own train and test splits. A node's data is made when
a round first asks for it (:class:`~fedtune.data.sites.GeneratedSites`). The central test and
central splits are gathered from every node when there are at most ``CENTRAL_SITES`` nodes,
and from a seeded uniform sample of ``CENTRAL_SITES`` nodes above that, so that 100,000 sites
cost their sizes up front, not their data.

Other partitions (iid, dirichlet, ...) cut the pooled :func:`load_synthetic` dataset, which
holds every group at once.

Reference: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx),
section 5.1: W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), u_k ~ N(0, alpha); x ~ N(v_k, Sigma),
v_k ~ N(B_k, 1), B_k ~ N(0, beta), Sigma = diag(j^-1.2); y = argmax softmax(W_k x + b_k);
device sizes follow a power law (here log-normal, clipped to 50..2,000).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from ..seeds import derived_seed
from .dataset import Dataset
from .federated import FederatedData, node_split, node_test_count
from .sites import GeneratedSites, NodeData

CENTRAL_SITES = 1000  # above this many nodes, the central sets come from a sample of them


def group_sizes(seed: int, num_groups: int) -> np.ndarray:
    """Every group's number of samples (log-normal, clipped to 50..2,000)."""
    rng = np.random.default_rng(derived_seed(seed, "synthetic-sizes"))
    return np.clip(rng.lognormal(4, 2, num_groups).astype(np.int64) + 50, 50, 2000)


def make_group(seed: int, group: int, size: int, *, alpha: float, beta: float, dim: int,
               classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Group ``group``'s features (float32) and labels, from its own seed."""
    rng = np.random.default_rng(derived_seed(seed, "synthetic-group", group))
    sigma = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2)
    u = rng.normal(0, alpha)
    w = rng.normal(u, 1, (classes, dim)).astype(np.float32)
    b = rng.normal(u, 1, classes).astype(np.float32)
    v = rng.normal(rng.normal(0, beta), 1, dim).astype(np.float32)
    x = rng.standard_normal((size, dim), dtype=np.float32)  # float32 draws: twice as fast
    x *= np.sqrt(sigma).astype(np.float32)
    x += v
    # the product in torch, not numpy: numpy's BLAS threads would spin beside torch's own
    # while a simulation trains (measured: 8x slower linear layers on 2 cores)
    logits = torch.from_numpy(x) @ torch.from_numpy(w).T + torch.from_numpy(b)
    return x, logits.argmax(dim=1).numpy()


def load_synthetic(seed: int, *, alpha: float = 1.0, beta: float = 1.0, num_groups: float = 30,
                   dim: float = 60, classes: float = 10) -> Dataset:
    """All groups pooled in one dataset, with each sample's group (for other partitions)."""
    k, d, c = int(num_groups), int(dim), int(classes)
    sizes = group_sizes(seed, k)
    parts = [make_group(seed, j, int(sizes[j]), alpha=alpha, beta=beta, dim=d, classes=c)
             for j in range(k)]
    ds = Dataset("synthetic", torch.from_numpy(np.concatenate([p[0] for p in parts])),
                 torch.from_numpy(np.concatenate([p[1] for p in parts])), c)
    ds.groups = np.repeat(np.arange(k), sizes)
    return ds


class SyntheticNodes:
    """Makes node ``i``'s data and its shares of the central sets (picklable: Ray actors
    receive it and make their own sites' data)."""

    def __init__(self, seed: int, num_nodes: int, sizes: np.ndarray, *, alpha: float,
                 beta: float, dim: int, classes: int, test_fraction: float,
                 central_fraction: float, node_test_fraction: float) -> None:
        self.seed, self.num_nodes, self.sizes = seed, num_nodes, sizes
        self.alpha, self.beta, self.dim, self.classes = alpha, beta, dim, classes
        totals = np.bincount(np.arange(len(sizes)) % num_nodes, weights=sizes,
                             minlength=num_nodes).astype(np.int64)
        self.to_test = np.round(test_fraction * totals).astype(np.int64)
        self.to_central = np.round(central_fraction * totals).astype(np.int64)
        self.own = totals - self.to_test - self.to_central
        self.node_test_fraction = node_test_fraction
        self.num_train = np.array([n - node_test_count(int(n), node_test_fraction)
                                   for n in self.own], dtype=np.int64)
        width = len(str(num_nodes - 1))
        self.ids = [f"node-{i:0{width}d}" for i in range(num_nodes)]

    def shares(self, i: int) -> tuple[NodeData, tuple[np.ndarray, np.ndarray],
                                      tuple[np.ndarray, np.ndarray]]:
        """Node ``i``'s data, and its (x, y) shares of the central test and central sets."""
        made = [make_group(self.seed, j, int(self.sizes[j]), alpha=self.alpha, beta=self.beta,
                           dim=self.dim, classes=self.classes)
                for j in range(i, len(self.sizes), self.num_nodes)]
        x = np.concatenate([m[0] for m in made])
        y = np.concatenate([m[1] for m in made])
        rng = np.random.default_rng(derived_seed(self.seed, "synthetic-cuts", i))
        perm = rng.permutation(len(y))
        t, c = int(self.to_test[i]), int(self.to_central[i])
        tr, te = node_split(perm[t + c:], self.node_test_fraction, rng)
        data = NodeData(self.ids[i], torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
                        torch.from_numpy(x[te]), torch.from_numpy(y[te]))
        test, central = np.sort(perm[:t]), np.sort(perm[t:t + c])
        return data, (x[test], y[test]), (x[central], y[central])

    def __call__(self, i: int) -> NodeData:
        return self.shares(i)[0]


def synthetic_federation(seed: int, *, num_nodes: int, test_fraction: float = 0.2,
                         central_fraction: float = 0.0, node_test_fraction: float = 0.2,
                         min_size: int = 2, alpha: float = 1.0, beta: float = 1.0,
                         num_groups: float | None = None, dim: float = 60,
                         classes: float = 10) -> FederatedData:
    """The natural federation of Synthetic(alpha, beta), its sites made on demand (module
    docstring)."""
    k = int(num_groups) if num_groups is not None else num_nodes
    if num_nodes < 1:
        raise DataError(f"data.num_nodes = {num_nodes}: need at least 1 node")
    if k < num_nodes:
        raise DataError(f"data.num_nodes = {num_nodes} exceeds the {k} natural groups")
    maker = SyntheticNodes(seed, num_nodes, group_sizes(seed, k), alpha=alpha, beta=beta,
                           dim=int(dim), classes=int(classes), test_fraction=test_fraction,
                           central_fraction=central_fraction,
                           node_test_fraction=node_test_fraction)
    if int(maker.own.min()) < min_size:
        raise DataError(f"a natural node has fewer than data.min_size = {min_size} samples")
    sites = GeneratedSites(maker.ids, maker.num_train, maker)
    if num_nodes <= CENTRAL_SITES:
        gather = np.arange(num_nodes)
    else:
        rng = np.random.default_rng(derived_seed(seed, "synthetic-central-sample"))
        gather = np.sort(rng.choice(num_nodes, CENTRAL_SITES, replace=False))
    tests, centrals = [], []
    for i in gather:
        data, test, central = maker.shares(int(i))
        sites.remember(int(i), data)
        tests.append(test)
        centrals.append(central)

    def joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    return FederatedData("synthetic", int(classes), (int(dim),), sites, *joined(tests),
                         *joined(centrals))


load_synthetic.federation = synthetic_federation  # type: ignore[attr-defined]
