"""The interface every runtime offers the coordinator, and the record of what it can do.

A runtime delivers one instruction to a set of nodes and yields their replies as they come,
each with the exact bytes that crossed the wire in each direction. It never looks inside an
update: the in-process, Ray and gRPC runtimes differ only in how bytes travel.

Every runtime implements every method of :class:`Runtime` and states in one
:class:`Capabilities` record which of them do real work, so a round driver asks the record
instead of probing for attributes, and a wrapper runtime (an attack, a fault injector) that
forwards the record cannot silently lose a capability.

Replies may hold large buffers (a gRPC runtime's receive buffer backs the update's tensor
without a copy); a consumer that drops each reply once it has used it lets the runtime bound
its memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
from ..types import EvalIns, EvalRes, FitIns, FitRes, NodeFailure


@dataclass
class Reply:
    """One node's answer and what it cost on the wire."""

    result: FitRes | EvalRes | NodeFailure | Any  # Any: a registered stage's reply
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class Capabilities:
    """What a runtime does beyond ``fit`` and ``evaluate``.

    Attributes:
        shares_workbench: its nodes train on the coordinator's own model object (one
            process), so the coordinator must not free that model between rounds.
        checks_finite: it refuses NaN and infinite tensors while decoding, so the
            coordinator need not scan dense updates again.
        keeps_late: results that arrive after their round's deadline are kept, and
            :meth:`Runtime.take_late` returns them (gRPC with ``server.stragglers = "stale"``).
        asynchronous: :meth:`Runtime.submit`, :meth:`Runtime.collect` and
            :meth:`Runtime.drain` run tasks without a round barrier (``strategy.mode =
            "async"``).
        nodes_join: nodes connect over time, so :meth:`Runtime.wait_for_nodes` may block.
        holds_nodes: its nodes, with the state they keep between rounds, live in this
            process, so a run's state file includes them (:meth:`Runtime.node_states`) and
            a resumed simulation continues bitwise as if never stopped.
    """

    shares_workbench: bool = False
    checks_finite: bool = False
    keeps_late: bool = False
    asynchronous: bool = False
    nodes_join: bool = False
    holds_nodes: bool = False


class Runtime(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def node_ids(self) -> list[str]: ...

    def train_examples(self, node_id: str) -> int | None:
        """The node's training examples as the runtime knows them (a simulation from the
        node's data, a real site from what it registered); they bound the weight the node
        may claim per round. None: an unknown node."""
        ...

    def wait_for_nodes(self, count: int) -> list[str]:
        """Block until ``count`` nodes are ready (``nodes_join``); the ready nodes."""
        ...

    def exchange(self, node_ids: Sequence[str], ins: Any) -> Iterator[Reply]:
        """Send one instruction of any registered kind to ``node_ids`` and yield their
        replies as they come (:meth:`fit` and :meth:`evaluate` are this for FitIns and
        EvalIns; a new round driver's stages use it directly)."""
        ...

    def exchange_each(self, messages: Mapping[str, Any]) -> Iterator[Reply]:
        """Send each node its own instruction (one registered kind, one round: a protocol
        stage whose content differs per node, such as secure aggregation's shares) and
        yield the replies as they come."""
        ...

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]: ...

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]: ...

    def take_late(self) -> list[tuple[FitRes, int]]:
        """Late results kept since the last call, with their bytes up (``keeps_late``)."""
        ...

    def submit(self, node_id: str, ins: FitIns) -> None:
        """Start one node's task now (``asynchronous``)."""
        ...

    def collect(self) -> Reply:
        """The next finished task's reply (``asynchronous``)."""
        ...

    def drain(self) -> None:
        """Forget the tasks still out (``asynchronous``)."""
        ...

    def node_states(self) -> bytes:
        """The nodes' own state, serialized (``holds_nodes``; empty otherwise)."""
        ...

    def restore_node_states(self, blob: bytes) -> None:
        """Put back what :meth:`node_states` returned (``holds_nodes``)."""
        ...

    def close(self) -> None: ...


def not_asynchronous(runtime: object) -> ConfigError:
    """The error for asking a runtime without ``asynchronous`` for asynchronous tasks."""
    return ConfigError(f"strategy.mode = 'async' is not supported by the "
                       f"{type(runtime).__name__}; use the in-process runtime or fedtune serve")
