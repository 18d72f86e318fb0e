"""Simulation in this process: nodes run one after another on one reused model.

Messages are passed as objects (no copy), and their sizes are the exact sizes of their wire
encoding (:func:`fedtune.wire.encoded_size`), so byte counts match what the networked
runtimes send. A node that raises is reported as a failure and the round goes on.
"""

from __future__ import annotations

import heapq
import io
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.sites import Sites
from ..errors import FedtuneError
from ..node.node import Node, Workbench
from ..seeds import derived_seed
from ..types import EvalIns, FitIns, FitRes, NodeFailure
from ..wire import encoded_size
from .base import Capabilities, Reply


class InProcessRuntime:
    """Runs every node in this process, sharing one :class:`Workbench`.

    Made from a list of :class:`Node` objects, or with :meth:`for_sites` from a federation's
    sites and a function that makes a site's Node the first time the site is asked to work
    (a run of 100,000 simulated sites holds Nodes only for the sites that have worked)."""

    capabilities = Capabilities(shares_workbench=True, asynchronous=True, holds_nodes=True)

    def __init__(self, nodes: Sequence[Node], bench: Workbench, *, seed: int = 0,
                 speed_skew: float = 1.0) -> None:
        live = {n.node_id: n for n in nodes}
        self._setup(list(live), live, None, bench, seed, speed_skew)

    @classmethod
    def for_sites(cls, sites: Sites, make_node: Callable[[str], Node], bench: Workbench, *,
                  seed: int = 0, speed_skew: float = 1.0) -> InProcessRuntime:
        runtime = cls.__new__(cls)
        runtime._setup(sites.ids, {}, (sites, make_node), bench, seed, speed_skew)
        return runtime

    def _setup(self, ids: list[str], live: dict[str, Node],
               maker: tuple[Sites, Callable[[str], Node]] | None, bench: Workbench,
               seed: int, speed_skew: float) -> None:
        self._ids = ids
        self._position = {node_id: i for i, node_id in enumerate(ids)}
        self.nodes = live  # the Nodes made so far (all of them without a maker)
        self._maker = maker
        self.bench = bench
        # asynchronous simulation: a virtual clock and a seeded speed per node
        self.clock = 0.0
        self._done: list[tuple[float, int, Reply]] = []
        self._count = 0
        rng = np.random.default_rng(derived_seed(seed, "speeds"))
        self._speeds = rng.lognormal(0.0, speed_skew, len(ids))

    def _node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            if self._maker is None or node_id not in self._position:
                raise KeyError(node_id)
            node = self.nodes[node_id] = self._maker[1](node_id)
        return node

    @property
    def node_ids(self) -> list[str]:
        return list(self._ids)

    def train_examples(self, node_id: str) -> int | None:
        if self._maker is not None:
            return self._maker[0].num_train(node_id)
        node = self.nodes.get(node_id)
        return None if node is None else node.data.num_train

    def wait_for_nodes(self, count: int) -> list[str]:
        return self.node_ids  # every node exists from the start

    def take_late(self) -> list[tuple[FitRes, int]]:
        return []  # nothing is ever late in one process

    def _call(self, node_id: str, ins: Any, down: int | None = None) -> Reply:
        down = encoded_size(ins) if down is None else down
        node = self._node(node_id)
        try:
            result = node.answer(ins, self.bench)
        except FedtuneError as exc:
            return Reply(NodeFailure(node_id, ins.round, str(exc)), down, 0)
        except Exception as exc:  # a user's train_fn or model failed on this node's data
            where = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
            return Reply(NodeFailure(node_id, ins.round, reason), down, 0)
        return Reply(result, down, encoded_size(result))

    def exchange(self, node_ids: Sequence[str], ins: Any) -> Iterator[Reply]:
        down = encoded_size(ins)  # one broadcast, one size
        for node_id in node_ids:
            yield self._call(node_id, ins, down)

    def exchange_each(self, messages: Mapping[str, Any]) -> Iterator[Reply]:
        for node_id, ins in messages.items():
            yield self._call(node_id, ins)

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    def submit(self, node_id: str, ins: FitIns) -> None:
        """Asynchronous mode: the node trains now on ``ins``; its reply is released when the
        virtual clock reaches now + steps x its speed."""
        reply = self._call(node_id, ins)
        steps = reply.result.num_steps if isinstance(reply.result, FitRes) else 1
        self._count += 1
        heapq.heappush(self._done, (self.clock + steps * self._speed(node_id), self._count,
                                    reply))

    def _speed(self, node_id: str) -> float:
        return float(self._speeds[self._position[node_id]])

    def collect(self) -> Reply:
        """The next reply in virtual-time order."""
        finish, _, reply = heapq.heappop(self._done)
        self.clock = finish
        return reply

    def drain(self) -> None:
        self._done.clear()

    def node_states(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({k: n.saved_state() for k, n in self.nodes.items()}, buffer)
        return buffer.getvalue()

    def restore_node_states(self, blob: bytes) -> None:
        states = torch.load(io.BytesIO(blob), weights_only=True)
        for node_id, saved in states.items():
            if node_id in self._position:
                self._node(node_id).restore_state(saved)

    def close(self) -> None:
        self.nodes.clear()
