"""Selection parts: who takes part in a round, seeded so that every runtime picks the same.

A selector is a frozen record with ``select(node_ids, round_, seed) -> list[str]`` (in the
order the round's fold sums them). :class:`FixedSize` draws a fixed number of nodes without
replacement (all of them at ``fraction = 1``); :class:`PoissonSampling` takes each node
independently with probability ``rate``, the sampling that privacy amplification by
subsampling assumes (the round's size then varies, and may be zero).

References:
    McMahan et al. 2017 (a fraction C of clients per round);
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"
    (Poisson sampling of users); Mironov et al. 2019, "Renyi Differential Privacy of the
    Sampled Gaussian Mechanism".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..seeds import derived_seed


class Selector(Protocol):
    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]: ...


@dataclass(frozen=True)
class FixedSize:
    """``count`` nodes, or ``max(min_nodes, round(fraction x N))``, without replacement."""

    fraction: float = 1.0
    count: int = 0
    min_nodes: int = 1

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        n = len(node_ids)
        k = self.count if self.count else max(self.min_nodes, round(self.fraction * n))
        k = min(k, n)
        if k == n:
            return list(node_ids)
        rng = np.random.default_rng(derived_seed(seed, "select", round_))
        return [node_ids[i] for i in sorted(rng.choice(n, size=k, replace=False))]


@dataclass(frozen=True)
class PoissonSampling:
    """Each node independently with probability ``rate``."""

    rate: float

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"the sampling rate must be in (0, 1], got {self.rate}")
        rng = np.random.default_rng(derived_seed(seed, "poisson", round_))
        keep = rng.random(len(node_ids)) < self.rate
        return [node for node, kept in zip(node_ids, keep, strict=True) if kept]


def fixed_part(*, fraction: float, count: int, min_nodes: int, **_: object) -> Selector:
    """The ``fixed`` entry of :data:`fedtune.catalog.SELECTORS`."""
    return FixedSize(fraction, count, min_nodes)


def poisson_part(*, fraction: float, count: int, min_nodes: int, **_: object) -> Selector:
    """The ``poisson`` entry of :data:`fedtune.catalog.SELECTORS`: ``fraction`` is the
    rate."""
    return PoissonSampling(fraction)
