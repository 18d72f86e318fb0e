"""Carbon-aware selection: the sites on the cleanest grids first, every site above a
participation floor, and a round that may wait for a cleaner hour.

The greedy rule is this module's own; the problem and its trade-off (selection bias against
sites on dirty grids) are those of Arputharaj, Rodriguez, Rodio and Neglia 2025, "Green
Federated Learning via Carbon-Aware Client and Time Slot Scheduling" (arXiv 2509.08980),
whose scheduler also picks time slots and shares carbon fairly; a per-site minimum selection
rate is the fairness guarantee of Huang et al. 2021, "An Efficiency-Boosting Client Selection
Scheme for Federated Learning with Fairness Guarantee". Waiting for a cleaner hour within a
deadline is the temporal shifting of Wiesner et al. 2021, "Let's Wait Awhile: How Temporal
Workload Shifting Can Reduce Carbon Emissions in the Cloud".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..seeds import derived_seed
from .selection import Selector

Grid = Callable[[list[str], float], dict[str, float]]  # node ids, hour -> gCO2e/kWh


def _no_grid(node_ids: list[str], hour: float) -> dict[str, float]:
    return {}


@dataclass
class CarbonAware:
    """``count`` nodes a round, the cleanest first (lowest grid intensity at the round's
    hour), while every node has taken part in at least floor(``floor`` x r) of the first r
    rounds and, when the run's ``rounds`` are known, in at least ceil(``floor`` x rounds) by
    the end: a node that would otherwise fall short is taken first (the most owed first).
    Ties are broken by a seeded draw.

    The clock: round 1 starts at ``start_hour``; a round lasts ``round_hours``; before it
    starts, a round may wait 0 to ``defer_hours`` whole hours, and waits for the hour whose
    chosen sites have the lowest summed intensity (the earliest on a tie; never with fixed
    grids). Deterministic: round r's choice and hour follow from rounds 1..r-1, recomputed
    (and cached) from the run seed, so a resumed run chooses the same. With a wall ``clock``
    a new round starts at the clock's hour instead (real time is not replayed: a resumed
    wall-clock run re-derives its earlier rounds on the simulated schedule). The floor holds
    whenever ``floor`` <= ``count`` / nodes.
    """

    count: int
    floor: float
    intensity: Grid
    rounds: int = 0  # the run's rounds, when known
    round_hours: float = 1.0
    defer_hours: int = 0
    start_hour: float = 0.0
    clock: Callable[[], float] | None = None  # a wall clock: a new round starts at its hour
    _past: dict[int, tuple[list[str], float]] = field(default_factory=dict)

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        return list(self.plan(node_ids, round_, seed)[0])

    def hour_of(self, round_: int) -> float | None:
        """The hour round ``round_`` started at, once chosen."""
        return self._past[round_][1] if round_ in self._past else None

    def plan(self, node_ids: list[str], round_: int, seed: int) -> tuple[list[str], float]:
        """Round ``round_``'s nodes (in the order of ``node_ids``) and its start hour."""
        if round_ in self._past:
            return self._past[round_]
        counts = dict.fromkeys(node_ids, 0)
        hour = self.start_hour
        for r in range(1, round_):
            chosen, started = self.plan(node_ids, r, seed)
            for node in chosen:
                if node in counts:
                    counts[node] += 1
            hour = started + self.round_hours
        if self.clock is not None:  # on a wall clock, rounds run when they run
            hour = self.clock()
        k = min(self.count, len(node_ids))
        rng = np.random.default_rng(derived_seed(seed, "carbon", round_))
        jitter = dict(zip(node_ids, rng.random(len(node_ids)), strict=True))
        # short of the floor after this round unless chosen now: owed, the most owed first
        due = math.floor(self.floor * round_ + 1e-9)
        if self.rounds:  # by the end: the rounds left after this one must still suffice
            due = max(due, math.ceil(self.floor * self.rounds - 1e-9) - (self.rounds - round_))
        owed = sorted((n for n in node_ids if counts[n] < due),
                      key=lambda n: (counts[n] - due, jitter[n]))[:k]
        best: tuple[tuple[int, float], list[str], float] | None = None
        for wait in range(self.defer_hours + 1):
            grid = self.intensity(node_ids, hour + wait)
            rest = sorted((n for n in node_ids if n not in owed),
                          key=lambda n: (grid.get(n, math.inf), jitter[n]))
            chosen = owed + rest[:k - len(owed)]
            values = [grid.get(n, math.inf) for n in chosen]
            cost = (sum(math.isinf(v) for v in values), sum(v for v in values if v < math.inf))
            if best is None or cost[0] < best[0][0] or (
                    cost[0] == best[0][0] and cost[1] < best[0][1] - 1e-9):
                best = (cost, chosen, hour + wait)
        assert best is not None
        picked = set(best[1])
        out = ([n for n in node_ids if n in picked], best[2])  # in the order of node_ids
        self._past[round_] = out
        return out


def carbon_part(*, fraction: float, count: int, min_nodes: int, intensity: Grid | None = None,
                floor: float = 0.0, rounds: int = 0, round_hours: float = 1.0,
                defer_hours: int = 0, start_hour: float = 0.0,
                clock: Callable[[], float] | None = None, **_: object) -> Selector:
    """The ``carbon`` entry of :data:`fedtune.catalog.SELECTORS`; ``intensity`` gives each
    site's grid (gCO2e/kWh) at an hour of the run."""
    return _CarbonFromFraction(fraction, count, min_nodes,
                               CarbonAware(0, floor, intensity or _no_grid, rounds, round_hours,
                                           defer_hours, start_hour, clock))


@dataclass
class _CarbonFromFraction:
    """:class:`CarbonAware` with the round's size from ``count`` or ``fraction`` of the
    nodes (known only when they are)."""

    fraction: float
    count: int
    min_nodes: int
    inner: CarbonAware

    def select(self, node_ids: list[str], round_: int, seed: int) -> list[str]:
        if not self.inner.count:
            self.inner.count = self.count or max(self.min_nodes,
                                                 round(self.fraction * len(node_ids)))
        return self.inner.select(node_ids, round_, seed)

    def hour_of(self, round_: int) -> float | None:
        return self.inner.hour_of(round_)
