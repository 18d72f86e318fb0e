"""One round's aggregation, fed update by update as replies arrive.

Replies come in whatever order the network delivers them, but floating-point sums depend
on order, so :class:`RoundFold` folds updates in *selection order*: an update that arrives
before its predecessors waits, and is folded (and can be freed) as soon as they are in.
With a streaming aggregator (the weighted mean of FedAvg and every strategy built on it)
the coordinator then holds one accumulator instead of K updates, and every runtime produces
bit-for-bit the same aggregate. Whether the fold streams is the aggregator's own property
(:attr:`fedtune.algorithms.aggregate.Aggregator.streaming`).

Updates accepted after the round's own (stragglers' late updates, asynchronous buffers)
are folded with :meth:`RoundFold.append` in call order.

An update may be given as a loader (a function returning the tensor), for an update that
waits for its turn outside memory (a coordinator with bounded uploads spills an update that
arrives before its predecessors to disk); it is loaded when folded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .aggregate import Aggregator, StackedRule, WeightedSum, as_aggregator

Update = torch.Tensor | Callable[[], torch.Tensor]


@dataclass
class _Entry:
    update: Update
    weight: float
    steps: float
    control_delta: torch.Tensor | None


class RoundFold:
    """Aggregates one round's updates in a fixed order, whatever order they arrive in."""

    def __init__(self, aggregator: Aggregator | StackedRule, *,
                 normalize_by_steps: bool = False) -> None:
        self.aggregator = as_aggregator(aggregator)
        self.streaming = self.aggregator.streaming
        self.state: Any = self.aggregator.init(normalize_by_steps=normalize_by_steps)
        self.pending: dict[int, _Entry] = {}
        self.done: set[int] = set()  # positions folded or skipped
        self.next = 0  # the next position to fold
        self.control_sum = WeightedSum()
        self.count = 0  # updates folded so far

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
        update = e.update if isinstance(e.update, torch.Tensor) else e.update()
        self.state = self.aggregator.add(self.state, update, e.weight, e.steps)
        if e.control_delta is not None:
            self.control_sum.add(e.control_delta, 1.0)
        self.count += 1

    def delta(self, aggregator: Aggregator | StackedRule | None = None) -> torch.Tensor:
        """The aggregated direction. Ends the fold. (``aggregator`` is the one the fold was
        made with; it is accepted for callers that name it again.)"""
        if self.count == 0:
            raise ValueError("cannot aggregate zero updates (or weights summing to zero)")
        return self.aggregator.finish(self.state)

    def control_delta_sum(self) -> torch.Tensor | None:
        """Sum of the control-variate deltas (SCAFFOLD), or None if none came."""
        return self.control_sum.total
