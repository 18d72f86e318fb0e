"""The interface every runtime offers the coordinator.

A runtime delivers one instruction to a set of nodes and yields their replies as they come,
each with the exact bytes that crossed the wire in each direction. It never looks inside an
update: the in-process, Ray and gRPC runtimes differ only in how bytes travel.

Replies may hold large buffers (a gRPC runtime's receive buffer backs the update's tensor
without a copy); a consumer that drops each reply once it has used it lets the runtime bound
its memory. Optional attributes: ``checks_finite = True`` when the runtime already rejects
NaN and infinite tensors while decoding (the coordinator then skips its own scan of dense
updates); ``submit``/``collect``/``drain`` for asynchronous mode; ``wait_for_nodes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..types import EvalIns, EvalRes, FitIns, FitRes, NodeFailure


@dataclass
class Reply:
    """One node's answer and what it cost on the wire."""

    result: FitRes | EvalRes | NodeFailure
    bytes_down: int
    bytes_up: int


class Runtime(Protocol):
    @property
    def node_ids(self) -> list[str]: ...

    def train_examples(self, node_id: str) -> int | None:
        """The node's training examples as the runtime knows them (a simulation from the
        node's data, a real site from what it registered); they bound the weight the node
        may claim per round. None: an unknown node."""
        ...

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]: ...

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]: ...

    def close(self) -> None: ...
