"""How a round's sites are sampled, as the privacy accountant and the run planner see it.

Apart from :mod:`fedtune.privacy.accountant` so that the planner (every run) does not import
``dp-accounting`` and SciPy with it (about 1.8 s here) when the run has no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Sampling:
    """How a round's sites are drawn: ``"poisson"`` (rate), or ``"fixed"`` (size of
    population)."""

    kind: Literal["poisson", "fixed"]
    population: int
    rate: float = 1.0
    size: int = 0

    @property
    def everyone(self) -> bool:
        return self.kind == "fixed" and self.size >= self.population

    @property
    def expected_sites(self) -> float:
        return self.rate * self.population if self.kind == "poisson" else float(self.size)


def sampling_for(selection: str, *, population: int, fraction: float, count: int,
                 min_nodes: int) -> Sampling:
    """The sampling a ``[strategy]`` section makes over ``population`` sites (what
    :mod:`fedtune.algorithms.selection` does)."""
    if selection == "poisson":
        return Sampling("poisson", population, rate=fraction)
    size = count if count else max(min_nodes, round(fraction * population))
    return Sampling("fixed", population, size=min(size, population))
