"""The coordinator's side of real deployment: a gRPC server that is also a :class:`Runtime`.

Each site holds one bidirectional ``Session`` open. A reader thread per session reassembles
and validates what the site sends; the response stream sends it tasks from its outbox. The
coordinator's round loop calls :meth:`GrpcRuntime.fit`, which streams one shared encoding of
the instruction to every selected site and yields replies as they arrive, until all have
answered, failed, disconnected, or the round deadline passed.

The sessions themselves (admission, readers, validation, late results) are
:class:`~.connections.SiteConnections`; this module drives rounds over them. Nothing here
waits in a sleep loop: threads block on queues and conditions.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc

from ...config import ServerSection
from ...errors import FedtuneError
from ...types import EvalIns, FitIns, FitRes, NodeFailure
from ...wire import encode_views, encoded_size
from ..base import Capabilities, Reply
from .connections import CLOSE, SiteConnections
from .gate import SMALL_MESSAGE
from .memory import limit_malloc_arenas, release_free_memory
from .security import listen
from .sessions import (
    pool_size,
)
from .transfer import (
    MAX_FRAME_BYTES,
    control_chunk,
    session_handler,
)

log = logging.getLogger("fedtune.server")


class GrpcRuntime:
    """Serves sites over gRPC and drives them for the coordinator."""

    def __init__(self, settings: ServerSection, *, welcome: dict[str, Any],
                 expected_bytes: int) -> None:
        self.settings = settings
        # every received tensor was checked for NaN/inf when decoded; sites join over time
        self.capabilities = Capabilities(
            checks_finite=True, keeps_late=settings.stragglers == "stale", asynchronous=True,
            nodes_join=True)
        limit_malloc_arenas()  # this is a coordinator process: see memory.py
        self.conn = conn = SiteConnections(settings, welcome=welcome, max_bytes=min(
            settings.max_message_mb * 2**20, max(expected_bytes, 2**20)))
        # the sessions' state, shared with the round's dispatch
        self.sessions, self.lock, self.results = conn.sessions, conn.lock, conn.results
        self.gate, self.late, self.received = conn.gate, conn.late, conn.received
        self.tokens = conn.tokens
        self.async_pending: dict[int, tuple[str, int, int]] = {}  # task -> site, round, bytes
        self.task_ids = itertools.count(1)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=pool_size(len(self.tokens) if self.tokens
                                                             else None),
                                       thread_name_prefix="fedtune-rpc"),
            options=[("grpc.max_receive_message_length", MAX_FRAME_BYTES),
                     ("grpc.max_send_message_length", MAX_FRAME_BYTES),
                     ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                     ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.bdp_probe", 0)])
        self.server.add_generic_rpc_handlers((session_handler(conn.session),))
        try:
            self.port = listen(self.server, settings)
        except RuntimeError:  # grpc raises when the port cannot be bound
            self.port = 0
        if self.port == 0:
            raise FedtuneError(f"cannot listen on server.address = {settings.address!r} (in use "
                               "or not an address of this machine)")
        self.server.start()
        log.info("listening on %s", settings.address)

    # -- Runtime interface ---------------------------------------------------------------
    @property
    def node_ids(self) -> list[str]:
        with self.lock:
            return sorted(s for s, sess in self.sessions.items() if sess.alive and sess.ready)

    def train_examples(self, node_id: str) -> int | None:
        """The training examples the site registered when it said it was ready."""
        with self.lock:
            return self.conn.registered.get(node_id)

    def declared_grids(self) -> dict[str, Any]:
        """The grids sites declared when they joined (``fedtune join --grid``)."""
        with self.lock:
            return dict(self.conn.grids)

    @property
    def known_sites(self) -> int | None:
        """How many sites can ever join (those with a token), or None when not bounded."""
        return len(self.tokens) if self.tokens is not None else None

    def wait_for_nodes(self, count: int) -> list[str]:
        deadline = time.monotonic() + self.settings.wait_for_sites_s
        with self.lock:
            while len([s for s in self.sessions.values() if s.alive and s.ready]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    have = len([s for s in self.sessions.values() if s.alive and s.ready])
                    raise FedtuneError(
                        f"only {have} of strategy.min_nodes = {count} sites connected within "
                        f"server.wait_for_sites_s = {self.settings.wait_for_sites_s:g} s; start "
                        "more sites with 'fedtune join' or lower strategy.min_nodes")
                self.lock.wait(timeout=left)
        return self.node_ids

    def exchange(self, node_ids: Sequence[str], ins: Any) -> Iterator[Reply]:
        # the chunk kind sites answer: fit and evaluate by name, any registered stage as "task"
        kind = "fit" if isinstance(ins, FitIns) else "evaluate" if isinstance(ins, EvalIns) \
            else "task"
        return self._dispatch(kind, node_ids, ins)

    def exchange_each(self, messages: Mapping[str, Any]) -> Iterator[Reply]:
        """Each site its own instruction (one registered kind, one round)."""
        if not messages:
            return iter(())
        first = next(iter(messages.values()))
        views = {site: encode_views(ins) for site, ins in messages.items()}
        return self._send("task", first.round, views)

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    # -- asynchronous mode: tasks without a round barrier ----------------------------------
    def submit(self, node_id: str, ins: FitIns) -> None:
        """Send one site a task now; its reply comes from :meth:`collect`."""
        with self.lock:
            sess = self.sessions.get(node_id)
            task_id = next(self.task_ids)
            self.async_pending[task_id] = (node_id, ins.round, encoded_size(ins))
            if sess is None or not sess.alive:
                self.results.put((node_id, task_id, "not connected"))
                return
            sess.task_id = task_id
            sess.outbox.put(("fit", task_id, ins.round, encode_views(ins)))

    def collect(self) -> Reply:
        """The next asynchronous reply, or a failure for a site that missed the deadline."""
        while True:
            try:
                site, task_id, payload = self.results.get(timeout=self.settings.round_deadline_s)
            except queue.Empty:
                with self.lock:
                    task_id, (site, round_, down) = next(iter(self.async_pending.items()))
                    del self.async_pending[task_id]
                return Reply(NodeFailure(site, round_, "missed the deadline of "
                                         f"{self.settings.round_deadline_s:g} s"), down, 0)
            with self.lock:
                pending = self.async_pending.pop(task_id, None)
            if pending is None:
                log.warning("dropped an unexpected result from %s (task %d)", site, task_id)
                continue
            _, round_, down = pending
            if isinstance(payload, tuple):
                return Reply(payload[0], down, payload[1])
            return Reply(NodeFailure(site, round_, str(payload)), down, 0)

    def drain(self) -> None:
        """Forget tasks still out when an asynchronous run ends."""
        with self.lock:
            self.async_pending.clear()

    def node_states(self) -> bytes:
        return b""  # the nodes keep their own state (``holds_nodes`` is False)

    def restore_node_states(self, blob: bytes) -> None:
        return None

    def close(self, *, final: bool = True) -> None:
        """Stop serving. ``final`` tells the sites the run is over; otherwise (the
        coordinator crashed) they lose the connection and keep reconnecting, so that
        ``fedtune serve --resume`` finds them."""
        with self.lock:
            for sess in self.sessions.values():
                if final:
                    sess.outbox.put(control_chunk("stop"))
                sess.outbox.put(CLOSE)
        self.server.stop(grace=5 if final else 0).wait()

    # -- dispatch ------------------------------------------------------------------------
    def _dispatch(self, kind: str, node_ids: Sequence[str], ins: Any) -> Iterator[Reply]:
        views = encode_views(ins)
        round_ = ins.round
        # only the senders hold the broadcast from here: a coordinator that parks its model
        # (server.park_model) gets the memory back when the last byte is sent
        del ins
        return self._send(kind, round_, dict.fromkeys(node_ids, views))

    def _send(self, kind: str, round_: int, views: dict[str, Any]) -> Iterator[Reply]:
        down = {site: sum(len(v) for v in parts) for site, parts in views.items()}
        waiting: dict[int, str] = {}
        absent: list[str] = []
        with self.lock:
            for site in views:
                sess = self.sessions.get(site)
                if sess is None or not sess.alive:
                    absent.append(site)
                    continue
                waiting[next(self.task_ids)] = site
            self.gate.begin(waiting)  # uploads are read in selection order
            if kind == "fit":
                self.late.asked_now(round_, waiting)
            for task_id, site in waiting.items():
                sess = self.sessions[site]
                sess.task_id = task_id
                sess.outbox.put((kind, task_id, round_, views[site]))
        views.clear()
        try:
            yield from self._replies(round_, waiting, absent, down)
        finally:
            self.gate.end()

    def _replies(self, round_: int, waiting: dict[int, str], absent: list[str],
                 down: dict[str, int]) -> Iterator[Reply]:
        for site in absent:
            yield Reply(NodeFailure(site, round_, "not connected"), 0, 0)
        deadline = time.monotonic() + self.settings.round_deadline_s
        while waiting:
            left = deadline - time.monotonic()
            try:
                site, task_id, payload = self.results.get(timeout=max(left, 0.0))
            except queue.Empty:
                break
            if waiting.get(task_id) != site:  # settled by the reader; left from a dropped session
                del payload
                continue
            del waiting[task_id]
            if isinstance(payload, tuple):  # (result, bytes up)
                reply = Reply(payload[0], down[site], payload[1])
            else:
                reply = Reply(NodeFailure(site, round_, str(payload)), down[site], 0)
            del payload  # the consumer decides how long a (large) result lives
            yield reply
            if reply.bytes_up >= SMALL_MESSAGE:
                release_free_memory()  # the chunks it came in (see memory.py)
            del reply
        with self.lock:
            for task_id, site in waiting.items():
                sess = self.sessions.get(site)
                if sess is not None and sess.task_id == task_id:
                    sess.task_id = 0
        for site in waiting.values():
            log.warning("site %s missed the round deadline", site)
            yield Reply(NodeFailure(site, round_, "missed the round deadline of "
                                    f"{self.settings.round_deadline_s:g} s "
                                    "(server.round_deadline_s)"), down[site], 0)

    def take_late(self) -> list[tuple[FitRes, int]]:
        """Late updates (with their bytes up) kept since the last call, at most one per
        site (``server.stragglers = "stale"``)."""
        return self.late.take()

    # -- the Session RPC -----------------------------------------------------------------
