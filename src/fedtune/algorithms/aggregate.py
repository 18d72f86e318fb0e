"""Aggregators: how K node updates become one direction, as parts with explicit state.

An aggregator is a part with ``init``, ``add`` and ``finish``. Streaming aggregators
(``streaming = True``) hold a fixed number of vectors whatever K is, so a coordinator folds
each update in as it arrives: the weighted mean (FedAvg and every strategy built on it), the
fixed-denominator mean, the modular sum. Aggregators that need all K rows at once (the
coordinate-wise median, the trimmed mean) are plain ``[K, D]`` functions wrapped by
:class:`Stacked`, which keeps a copy of each row and calls the function at the end.

With ``normalize_by_steps`` (FedNova) the mean weighs update k by w_k / tau_k and scales the
result by sum_k w_k tau_k / sum_k w_k; the stacked adapter divides each row by tau_k first.

:data:`weighted_mean` is both the streaming part and the pure ``[K, D]`` function: called on
stacked rows it folds them one by one, so stacking and streaming give bit-for-bit the same
vector when the rows come in the same order.

References:
    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (weighted mean).
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"
    (the fixed-denominator estimator, whose sensitivity does not depend on who answered).
    Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning" (sums in Z_{2^b}, so that pairwise masks cancel).
    Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (coordinate-wise median and trimmed mean).
    Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
    Federated Optimization" (FedNova's step normalization).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch

StackedRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class Aggregator(Protocol):
    """``state = init(); state = add(state, update, weight, steps); finish(state)``."""

    streaming: bool  # holds O(1) vectors, whatever the number of updates

    def init(self, *, normalize_by_steps: bool = False) -> Any: ...

    def add(self, state: Any, update: torch.Tensor, weight: float, steps: float) -> Any: ...

    def finish(self, state: Any) -> torch.Tensor: ...


def _check(updates: torch.Tensor, weights: torch.Tensor) -> None:
    if updates.dim() != 2:
        raise ValueError(f"updates must be [K, D], got shape {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must be [K={updates.shape[0]}], got {tuple(weights.shape)}")
    if updates.shape[0] == 0:
        raise ValueError("cannot aggregate zero updates")


class WeightedSum:
    """Sum_k c_k u_k folded one update at a time (``c_k`` a Python float).

    The first update is scaled into a fresh accumulator; later ones are added in place, so
    the memory is one vector whatever K is. Summation order is the call order: callers that
    need reproducible results call :meth:`add` in a fixed order.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, update: torch.Tensor, coef: float) -> None:
        if self.total is None:
            self.total = torch.mul(update, coef)
        else:
            if update.shape != self.total.shape:
                raise ValueError(f"update of shape {tuple(update.shape)} does not match "
                                 f"{tuple(self.total.shape)}")
            self.total.add_(update, alpha=coef)
        self.count += 1

    def scaled(self, factor: float) -> torch.Tensor:
        """The sum times ``factor``, in place (the fold is finished)."""
        if self.total is None:
            raise ValueError("cannot aggregate zero updates")
        return self.total.mul_(factor)


@dataclass
class SumState:
    """A running weighted sum and the weights and step counts behind it."""

    normalize_by_steps: bool = False
    sum: WeightedSum = field(default_factory=WeightedSum)
    weights: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    def add(self, update: torch.Tensor, weight: float, steps: float) -> None:
        tau = max(steps, 1.0)
        self.sum.add(update, weight / tau if self.normalize_by_steps else weight)
        self.weights.append(weight)
        self.steps.append(tau)

    def nova(self, total: float) -> float:
        """FedNova's effective step count sum_k w_k tau_k / total (1 without it)."""
        if not self.normalize_by_steps:
            return 1.0
        return sum(w * t for w, t in zip(self.weights, self.steps, strict=True)) / total


class WeightedMean:
    """Sum_k w_k u_k / sum_k w_k, streamed; also callable on stacked ``[K, D]`` rows."""

    streaming = True

    def init(self, *, normalize_by_steps: bool = False) -> SumState:
        return SumState(normalize_by_steps)

    def add(self, state: SumState, update: torch.Tensor, weight: float,
            steps: float) -> SumState:
        state.add(update, weight, steps)
        return state

    def finish(self, state: SumState) -> torch.Tensor:
        total = sum(state.weights)
        if not state.weights or total <= 0:
            raise ValueError("cannot aggregate zero updates (or weights summing to zero)")
        out = state.sum.scaled(state.nova(total) / total)
        state.sum = WeightedSum()  # the state lets go: the caller may consume the result
        return out

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        _check(updates, weights)
        w = [float(x) for x in weights]
        if sum(w) <= 0:
            raise ValueError("aggregation weights sum to zero")
        state = self.init()
        for row, wk in zip(updates, w, strict=True):
            self.add(state, row, wk, 1.0)
        return self.finish(state)


weighted_mean = WeightedMean()


@dataclass(frozen=True)
class FixedMean:
    """Sum_k w_k u_k / ``denominator``: the denominator is fixed in advance (the expected
    total weight), not the weight that happened to answer, so one node's contribution to the
    result is bounded whoever else takes part (what client-level DP needs)."""

    denominator: float
    streaming = True

    def init(self, *, normalize_by_steps: bool = False) -> SumState:
        if self.denominator <= 0:
            raise ValueError(f"the fixed denominator must be positive, got {self.denominator}")
        return SumState(normalize_by_steps)

    add = WeightedMean.add  # the same running sum; only the denominator differs

    def finish(self, state: SumState) -> torch.Tensor:
        if not state.weights:
            raise ValueError("cannot aggregate zero updates")
        out = state.sum.scaled(state.nova(sum(state.weights)) / self.denominator)
        state.sum = WeightedSum()  # the state lets go: the caller may consume the result
        return out


@dataclass(frozen=True)
class ModularSum:
    """Sum_k u_k mod 2^bits over integer updates (weights and steps are not used): the
    aggregate of secure aggregation, where masked updates are uniform in Z_{2^bits} and
    the pairwise masks cancel in the sum."""

    bits: int = 32
    streaming = True

    def init(self, *, normalize_by_steps: bool = False) -> list[torch.Tensor]:
        if not 1 <= self.bits <= 62:
            raise ValueError(f"bits must be in 1..62, got {self.bits}")
        return []

    def add(self, state: list[torch.Tensor], update: torch.Tensor, weight: float,
            steps: float) -> list[torch.Tensor]:
        if update.dtype.is_floating_point or update.dtype.is_complex:
            raise ValueError(f"a modular sum adds integer updates, got {update.dtype}")
        mask = (1 << self.bits) - 1
        if not state:
            state.append(update.to(torch.int64).bitwise_and(mask))
        else:
            state[0].add_(update.to(torch.int64)).bitwise_and_(mask)
        return state

    def finish(self, state: list[torch.Tensor]) -> torch.Tensor:
        if not state:
            raise ValueError("cannot aggregate zero updates")
        return state[0]


@dataclass
class StackedState:
    normalize_by_steps: bool
    rows: list[torch.Tensor] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Stacked:
    """Adapts a ``[K, D]`` rule that needs every row at once: keeps a copy of each update
    (never the received buffer, so a runtime can reuse or free it) and stacks them."""

    rule: StackedRule
    streaming = False

    def init(self, *, normalize_by_steps: bool = False) -> StackedState:
        return StackedState(normalize_by_steps)

    def add(self, state: StackedState, update: torch.Tensor, weight: float,
            steps: float) -> StackedState:
        state.rows.append(update.clone())
        state.weights.append(weight)
        state.steps.append(max(steps, 1.0))
        return state

    def finish(self, state: StackedState) -> torch.Tensor:
        total = sum(state.weights)
        if not state.rows or total <= 0:
            raise ValueError("cannot aggregate zero updates (or weights summing to zero)")
        stacked = torch.stack(state.rows)
        state.rows = []
        weights = torch.tensor(state.weights, dtype=stacked.dtype, device=stacked.device)
        nova = 1.0
        if state.normalize_by_steps:
            nova = sum(w * t for w, t in zip(state.weights, state.steps, strict=True)) / total
            tau = torch.tensor(state.steps, dtype=stacked.dtype, device=stacked.device)
            stacked /= tau[:, None]
        return nova * self.rule(stacked, weights)


def as_aggregator(rule: Aggregator | StackedRule) -> Aggregator:
    """A part as it is, or a plain ``[K, D]`` function wrapped in :class:`Stacked`."""
    return rule if isinstance(rule, Aggregator) else Stacked(rule)


def coordinate_median(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (lower median for even K); weights are ignored."""
    _check(updates, weights)
    return updates.median(dim=0).values


def trimmed_mean(updates: torch.Tensor, weights: torch.Tensor, *, trim: float = 0.1) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``trim`` fraction at each end."""
    _check(updates, weights)
    k = updates.shape[0]
    cut = int(trim * k)
    if 2 * cut >= k:
        raise ValueError(f"trim={trim} removes all {k} updates")
    ordered = updates.sort(dim=0).values
    return ordered[cut:k - cut].mean(dim=0)


def mean_part(*, trim: float = 0.1, **_: Any) -> Aggregator:
    """The ``mean`` entry of :data:`fedtune.catalog.AGGREGATORS`."""
    return weighted_mean


def median_part(*, trim: float = 0.1, **_: Any) -> Aggregator:
    """The ``median`` entry of :data:`fedtune.catalog.AGGREGATORS`."""
    return Stacked(coordinate_median)


def trimmed_mean_part(*, trim: float = 0.1, **_: Any) -> Aggregator:
    """The ``trimmed_mean`` entry of :data:`fedtune.catalog.AGGREGATORS`."""
    return Stacked(partial(trimmed_mean, trim=trim))
