"""Simulation in this process: nodes run one after another on one reused model.

Messages are passed as objects (no copy), and their sizes are the exact sizes of their wire
encoding (:func:`fedtune.wire.encoded_size`), so byte counts match what the networked
runtimes send. A node that raises is reported as a failure and the round goes on.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence

from ..errors import FedtuneError
from ..node.node import Node, Workbench
from ..types import EvalIns, FitIns, NodeFailure
from ..wire import encoded_size
from .base import Reply


class InProcessRuntime:
    """Runs every node in this process, sharing one :class:`Workbench`."""

    def __init__(self, nodes: Sequence[Node], bench: Workbench) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.bench = bench

    @property
    def node_ids(self) -> list[str]:
        return list(self.nodes)

    def _call(self, node_id: str, ins: FitIns | EvalIns) -> Reply:
        down = encoded_size(ins)
        node = self.nodes[node_id]
        try:
            result = node.fit(ins, self.bench) if isinstance(ins, FitIns) else \
                node.evaluate(ins, self.bench)
        except FedtuneError as exc:
            return Reply(NodeFailure(node_id, ins.round, str(exc)), down, 0)
        except Exception as exc:  # a user's train_fn or model failed on this node's data
            where = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
            return Reply(NodeFailure(node_id, ins.round, reason), down, 0)
        return Reply(result, down, encoded_size(result))

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]:
        for node_id in node_ids:
            yield self._call(node_id, ins)

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]:
        for node_id in node_ids:
            yield self._call(node_id, ins)

    def close(self) -> None:
        self.nodes.clear()
