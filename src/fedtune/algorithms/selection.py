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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class CarbonAware:
    """``count`` nodes a round, the cleanest first (lowest grid intensity), while every node
    has taken part in at least floor(``floor`` x r) of the first r rounds and, when the run's
    ``rounds`` are known, in at least ceil(``floor`` x rounds) by the end: a node that would
    otherwise fall short is taken first (the most owed first). Ties are broken by a seeded
    draw. Deterministic: round r's choice follows from rounds 1..r-1, recomputed (and cached)
    from the run seed, so a resumed run chooses the same. The floor holds whenever
    ``floor`` <= ``count`` / nodes.

    The greedy rule is this module's own; the problem and its trade-off (selection bias
    against sites on dirty grids) are those of Arputharaj, Rodriguez, Rodio and Neglia 2025,
    "Green Federated Learning via Carbon-Aware Client and Time Slot Scheduling" (arXiv
    2509.08980), whose scheduler also shares carbon fairly; a per-site minimum selection
    rate is the fairness guarantee of Huang et al. 2021, "An Efficiency-Boosting Client
    Selection Scheme for Federated Learning with Fairness Guarantee".
    """

    count: int
    floor: float
    intensity: dict[str, float]
    rounds: int = 0  # the run's rounds, when known
    _past: dict[int, list[str]] = field(default_factory=dict)

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        if round_ in self._past:
            return list(self._past[round_])
        counts = dict.fromkeys(node_ids, 0)
        for r in range(1, round_):
            for node in self.select(node_ids, r, seed):
                if node in counts:
                    counts[node] += 1
        k = min(self.count, len(node_ids))
        rng = np.random.default_rng(derived_seed(seed, "carbon", round_))
        jitter = dict(zip(node_ids, rng.random(len(node_ids)), strict=True))
        # short of the floor after this round unless chosen now: owed, the most owed first
        due = math.floor(self.floor * round_ + 1e-9)
        if self.rounds:  # by the end: the rounds left after this one must still suffice
            due = max(due, math.ceil(self.floor * self.rounds - 1e-9) - (self.rounds - round_))
        owed = sorted((n for n in node_ids if counts[n] < due),
                      key=lambda n: (counts[n] - due, jitter[n]))
        chosen = owed[:k]
        rest = sorted((n for n in node_ids if n not in chosen),
                      key=lambda n: (self.intensity.get(n, float("inf")), jitter[n]))
        chosen += rest[:k - len(chosen)]
        picked = set(chosen)
        out = [n for n in node_ids if n in picked]  # in the order of node_ids (the fold's)
        self._past[round_] = out
        return list(out)


def carbon_part(*, fraction: float, count: int, min_nodes: int,
                intensity: Callable[[list[str]], dict[str, float]] | None = None,
                floor: float = 0.0, rounds: int = 0, **_: object) -> Selector:
    """The ``carbon`` entry of :data:`fedtune.catalog.SELECTORS`; ``intensity`` gives each
    site's grid (gCO2e/kWh) once the sites are known."""
    return _CarbonFromFraction(fraction, count, min_nodes, floor,
                               intensity or (lambda _: {}), rounds)


@dataclass
class _CarbonFromFraction:
    """:class:`CarbonAware` with the round's size from ``count`` or ``fraction`` of the
    nodes (known only when they are)."""

    fraction: float
    count: int
    min_nodes: int
    floor: float
    intensity: Callable[[list[str]], dict[str, float]]
    rounds: int = 0
    _inner: CarbonAware | None = None

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        if self._inner is None:
            k = self.count or max(self.min_nodes, round(self.fraction * len(node_ids)))
            self._inner = CarbonAware(k, self.floor, self.intensity(node_ids), self.rounds)
        return self._inner.select(node_ids, round_, seed)
