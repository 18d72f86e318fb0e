"""One round's aggregation, fed update by update as replies arrive.

Replies come in whatever order the network delivers them, but floating-point sums depend
on order, so :class:`RoundFold` folds updates in *selection order*: an update that arrives
before its predecessors waits, and is folded (and can be freed) as soon as they are in.
With the weighted mean (FedAvg and every strategy built on it, FedNova included) the
coordinator then holds one accumulator instead of K updates, and every runtime produces
bit-for-bit the same aggregate. Robust aggregators (median, trimmed mean) need all K rows
at once; for them the fold keeps a copy of each update (never the received buffer, so a
runtime can reuse or free it) and stacks them at the end.

Updates accepted after the round's own (stragglers' late updates, asynchronous buffers)
are folded with :meth:`RoundFold.append` in call order.

An update may be given as a loader (a function returning the tensor), for an update that
waits for its turn outside memory (a coordinator with bounded uploads spills an update that
arrives before its predecessors to disk); it is loaded when folded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .aggregate import Aggregator, WeightedSum, weighted_mean

Update = torch.Tensor | Callable[[], torch.Tensor]


@dataclass
class _Entry:
    update: Update
    weight: float
    steps: float
    control_delta: torch.Tensor | None


class RoundFold:
    """Aggregates one round's updates in a fixed order, whatever order they arrive in."""

    def __init__(self, aggregator: Aggregator, *, normalize_by_steps: bool = False) -> None:
        self.streaming = aggregator is weighted_mean
        self.normalize_by_steps = normalize_by_steps
        self.pending: dict[int, _Entry] = {}
        self.done: set[int] = set()  # positions folded or skipped
        self.next = 0  # the next position to fold
        self.sum = WeightedSum()
        self.control_sum = WeightedSum()
        self.weights: list[float] = []
        self.steps: list[float] = []
        self.rows: list[torch.Tensor] = []  # robust aggregators only

    @property
    def count(self) -> int:
        """Updates folded so far."""
        return len(self.weights)

    def offer(self, position: int, update: Update, weight: float, steps: float,
              control_delta: torch.Tensor | None = None) -> None:
        """The update of the node selected at ``position`` (0-based)."""
        if position in self.done or position in self.pending:
            raise ValueError(f"position {position} was already folded or skipped")
        self.pending[position] = _Entry(update, weight, steps, control_delta)
        self._advance()

    def skip(self, position: int) -> None:
        """The node at ``position`` failed: stop waiting for it (no-op if already folded)."""
        if position not in self.done and position not in self.pending:
            self.done.add(position)
            self._advance()

    def close(self) -> None:
        """The round's replies are all in: fold what waits, in position order."""
        for position in sorted(self.pending):
            self._fold(self.pending.pop(position))
            self.done.add(position)
        self.next = max(self.done, default=-1) + 1

    def append(self, update: Update, weight: float, steps: float,
               control_delta: torch.Tensor | None = None) -> None:
        """An update outside the round's order, folded now."""
        self._fold(_Entry(update, weight, steps, control_delta))

    def _advance(self) -> None:
        while True:
            if self.next in self.pending:
                self._fold(self.pending.pop(self.next))
            elif self.next not in self.done:
                return
            self.done.add(self.next)
            self.next += 1

    def _fold(self, e: _Entry) -> None:
        tau = max(e.steps, 1.0)
        update = e.update if isinstance(e.update, torch.Tensor) else e.update()
        if self.streaming:
            self.sum.add(update, e.weight / tau if self.normalize_by_steps else e.weight)
        else:
            self.rows.append(update.clone())
        if e.control_delta is not None:
            self.control_sum.add(e.control_delta, 1.0)
        self.weights.append(e.weight)
        self.steps.append(tau)

    def delta(self, aggregator: Aggregator) -> torch.Tensor:
        """The aggregated direction (FedNova-normalized when asked). Ends the fold."""
        total = sum(self.weights)
        if not self.weights or total <= 0:
            raise ValueError("cannot aggregate zero updates (or weights summing to zero)")
        nova = sum(w * t for w, t in zip(self.weights, self.steps, strict=True)) / total \
            if self.normalize_by_steps else 1.0
        if self.streaming:
            out, self.sum = self.sum.scaled(nova / total), WeightedSum()
            return out
        stacked = torch.stack(self.rows)
        self.rows = []
        weights = torch.tensor(self.weights, dtype=stacked.dtype, device=stacked.device)
        if self.normalize_by_steps:
            tau = torch.tensor(self.steps, dtype=stacked.dtype, device=stacked.device)
            stacked /= tau[:, None]
        return nova * aggregator(stacked, weights)

    def control_delta_sum(self) -> torch.Tensor | None:
        """Sum of the control-variate deltas (SCAFFOLD), or None if none came."""
        return self.control_sum.total
