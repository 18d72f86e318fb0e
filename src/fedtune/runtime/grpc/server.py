"""The coordinator's side of real deployment: a gRPC server that is also a :class:`Runtime`.

Each site holds one bidirectional ``Session`` open. A reader thread per session reassembles
and validates what the site sends; the response stream sends it tasks from its outbox. The
coordinator's round loop calls :meth:`GrpcRuntime.fit`, which streams one shared encoding of
the instruction to every selected site and yields replies as they arrive, until all have
answered, failed, disconnected, or the round deadline passed.

Nothing a site sends can end a reader thread or reach the round loop unchecked: every message
is validated against its declared schema while decoded (:mod:`fedtune.message_schema`), a
malformed one gets an ``error`` chunk back with the reason, and the server goes on serving. A
result the site no longer owes (late, repeated, never asked) is settled by the reader the
moment it arrives, so its buffer (and its upload slot) is freed at once: dropped, or with
``server.stragglers = "stale"`` copied, at most once per task asked and within
``server.stale_memory_mb``. Session admission (hello timeout, caps on pending sessions,
rate-limited refusals) lives in :mod:`.sessions`. Nothing here waits in a sleep loop:
threads block on queues and conditions.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from ...config import ServerSection
from ...errors import FedtuneError, MessageError
from ...types import EvalIns, EvalRes, FitIns, FitRes, NodeFailure
from ...wire import encode_views, encoded_size
from ..base import Reply
from . import SCHEMA_VERSION
from .gate import SMALL_MESSAGE, UploadGate
from .memory import limit_malloc_arenas, release_free_memory
from .security import load_tokens, read_file
from .sessions import PendingSessions, RateLimitedLog, authenticate, first_message, pool_size
from .transfer import (
    MAX_FRAME_BYTES,
    Assembler,
    Frame,
    control_chunk,
    decode_assembly,
    message_chunks,
    session_handler,
)

log = logging.getLogger("fedtune.server")
_CLOSE = object()


@dataclass
class SiteSession:
    site: str
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    alive: bool = True
    ready: bool = False  # set when the site says it has built its model and loaded its data
    task_id: int = 0  # the task the site owes an answer to (0: none)
    generation: int = 0
    context: Any = None  # the call's ServicerContext: cancel() ends the session


class GrpcRuntime:
    """Serves sites over gRPC and drives them for the coordinator."""

    checks_finite = True  # every received tensor was checked for NaN/inf when decoded

    def __init__(self, settings: ServerSection, *, welcome: dict[str, Any],
                 expected_bytes: int) -> None:
        self.settings = settings
        limit_malloc_arenas()  # this is a coordinator process: see memory.py
        self.welcome = json.dumps(welcome)
        self.chunk_bytes = settings.chunk_kb * 1024
        self.max_bytes = min(settings.max_message_mb * 2**20, max(expected_bytes, 2**20))
        self.tokens = load_tokens(settings.tokens) if settings.tokens else None
        if self.tokens is None and not settings.client_ca and not settings.insecure_no_auth:
            raise FedtuneError("the coordinator would accept any site: set server.tokens (make "
                               "one with 'fedtune certs'), server.client_ca for mutual TLS, or "
                               "server.insecure_no_auth = true for a closed test network")
        if self.tokens is not None and not settings.client_ca:
            log.warning("SECURITY: server.tokens without server.client_ca: a site that learns "
                        "another site's token can log in as that site; set server.client_ca "
                        "(mutual TLS) so that each site also needs its own certificate")
        self.refusals = RateLimitedLog(log)
        self.pending = PendingSessions()
        self.sessions: dict[str, SiteSession] = {}
        self.registered: dict[str, int] = {}  # site -> training examples it registered
        self.lock = threading.Condition()
        self.results: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self.asked: dict[int, tuple[str, int]] = {}  # fit task -> (site, round), until settled
        self.late: dict[str, tuple[FitRes, int]] = {}  # site -> its newest kept late update
        self.async_pending: dict[int, tuple[str, int, int]] = {}  # task -> site, round, bytes
        # Bounds the received updates alive at once (each is a whole message): with a large
        # model, uploads then wait in gRPC's flow control instead of in coordinator memory.
        # a stalled or out-of-turn upload waits at most a quarter of the round's deadline
        self.gate = UploadGate(settings.max_concurrent_uploads,
                               idle_s=min(settings.upload_idle_s, settings.round_deadline_s / 4))
        # (site, bytes, seconds from admission to the last byte) of recent messages
        self.received: deque[tuple[str, int, float]] = deque(maxlen=1000)
        # Large broadcasts go to this many sites at a time: each stream is faster and the
        # first site gets its model sooner (parallel streams may finish the last one sooner).
        limit = settings.max_concurrent_downloads
        self.download_slots = threading.BoundedSemaphore(limit) if limit else None
        self.task_ids = itertools.count(1)
        self.generations = itertools.count(1)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=pool_size(len(self.tokens) if self.tokens
                                                             else None),
                                       thread_name_prefix="fedtune-rpc"),
            options=[("grpc.max_receive_message_length", MAX_FRAME_BYTES),
                     ("grpc.max_send_message_length", MAX_FRAME_BYTES),
                     ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                     ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.bdp_probe", 0)])
        self.server.add_generic_rpc_handlers((session_handler(self.session),))
        try:
            self.port = self._listen(settings)
        except RuntimeError:  # grpc raises when the port cannot be bound
            self.port = 0
        if self.port == 0:
            raise FedtuneError(f"cannot listen on server.address = {settings.address!r} (in use "
                               "or not an address of this machine)")
        self.server.start()
        log.info("listening on %s", settings.address)

    def _listen(self, settings: ServerSection) -> int:
        if settings.tls_cert:
            ca = read_file(settings.client_ca, "server.client_ca") if settings.client_ca else None
            creds = grpc.ssl_server_credentials(
                [(read_file(settings.tls_key, "server.tls_key"),
                  read_file(settings.tls_cert, "server.tls_cert"))],
                root_certificates=ca, require_client_auth=ca is not None)
            return int(self.server.add_secure_port(settings.address, creds))
        if settings.client_ca:
            raise FedtuneError("server.client_ca (mutual TLS) needs server.tls_cert and "
                               "server.tls_key too")
        return int(self.server.add_insecure_port(settings.address))

    # -- Runtime interface ---------------------------------------------------------------
    @property
    def node_ids(self) -> list[str]:
        with self.lock:
            return sorted(s for s, sess in self.sessions.items() if sess.alive and sess.ready)

    def train_examples(self, node_id: str) -> int | None:
        """The training examples the site registered when it said it was ready."""
        with self.lock:
            return self.registered.get(node_id)

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

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]:
        return self._dispatch("fit", node_ids, ins)

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]:
        return self._dispatch("evaluate", node_ids, ins)

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

    def close(self, *, final: bool = True) -> None:
        """Stop serving. ``final`` tells the sites the run is over; otherwise (the
        coordinator crashed) they lose the connection and keep reconnecting, so that
        ``fedtune serve --resume`` finds them."""
        with self.lock:
            for sess in self.sessions.values():
                if final:
                    sess.outbox.put(control_chunk("stop"))
                sess.outbox.put(_CLOSE)
        self.server.stop(grace=5 if final else 0).wait()

    # -- dispatch ------------------------------------------------------------------------
    def _dispatch(self, kind: str, node_ids: Sequence[str], ins: FitIns | EvalIns,
                  ) -> Iterator[Reply]:
        views = encode_views(ins)
        down = sum(len(v) for v in views)
        waiting: dict[int, str] = {}
        absent: list[str] = []
        with self.lock:
            for site in node_ids:
                sess = self.sessions.get(site)
                if sess is None or not sess.alive:
                    absent.append(site)
                    continue
                waiting[next(self.task_ids)] = site
            self.gate.begin(waiting)  # uploads are read in selection order
            if kind == "fit":
                self.asked = {t: a for t, a in self.asked.items() if a[1] >= ins.round - 8}
                self.asked.update((t, (site, ins.round)) for t, site in waiting.items())
            for task_id, site in waiting.items():
                sess = self.sessions[site]
                sess.task_id = task_id
                sess.outbox.put((kind, task_id, ins.round, views))
        round_ = ins.round
        # only the senders hold the broadcast from here: a coordinator that parks its model
        # (server.park_model) gets the memory back when the last byte is sent
        del ins, views
        try:
            yield from self._replies(round_, waiting, absent, down)
        finally:
            self.gate.end()

    def _replies(self, round_: int, waiting: dict[int, str], absent: list[str],
                 down: int) -> Iterator[Reply]:
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
                reply = Reply(payload[0], down, payload[1])
            else:
                reply = Reply(NodeFailure(site, round_, str(payload)), down, 0)
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
                                    "(server.round_deadline_s)"), down, 0)

    def _late(self, site: str, task_id: int, result: Any, nbytes: int) -> None:
        """A result the site did not owe any more: copy it for the next aggregation
        (server.stragglers = "stale") or drop it. Either way the caller's buffer is free."""
        with self.lock:
            asked = self.asked.pop(task_id, None)
            keep = (self.settings.stragglers == "stale" and isinstance(result, FitRes)
                    and asked is not None and asked[0] == site)
            if keep:
                old = self.late.pop(site, None)
                held = sum(n for _, n in self.late.values())
                keep = held + nbytes <= self.settings.stale_memory_mb * 2**20
                if not keep and old is not None:
                    self.late[site] = old
        if not keep:
            self.refusals.warning(f"late:{site}", "dropped a late or unexpected result from %s "
                                  "(task %d)", site, task_id)
            return
        log.info("kept a late update from %s (round %d) for the next aggregation", site,
                 result.round)
        kept = replace(result, update=result.update.clone(),
                       aux={k: v.clone() for k, v in result.aux.items()})
        with self.lock:
            self.late[site] = (kept, nbytes)  # a site's newer late update replaces its older

    def take_late(self) -> list[tuple[FitRes, int]]:
        """Late updates (with their bytes up) kept since the last call, at most one per
        site (``server.stragglers = "stale"``)."""
        with self.lock:
            late, self.late = list(self.late.values()), {}
        return late

    # -- the Session RPC -----------------------------------------------------------------
    def session(self, request_iterator: Iterator[Frame],
                context: grpc.ServicerContext) -> Iterator[bytes]:
        site = authenticate(context, tokens=self.tokens,
                            client_ca=bool(self.settings.client_ca), refusals=self.refusals)
        if not self.pending.enter(site):
            self.refusals.warning(f"pending:{site}", "refused a session of %r: too many "
                                  "sessions waiting for their hello", site)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many sessions of site {site!r} are opening at once")
        try:
            hello = first_message(request_iterator, context, self.settings.hello_timeout_s)
        finally:
            self.pending.leave(site)
        if hello is None:
            self.refusals.warning(f"hello:{site}", "site %r sent no hello within "
                                  "server.hello_timeout_s = %g s", site,
                                  self.settings.hello_timeout_s)
            return
        if hello.kind != "hello" or hello.schema_version != SCHEMA_VERSION or hello.site != site:
            yield control_chunk("error", text=f"expected hello from {site!r} with schema "
                                f"version {SCHEMA_VERSION}, got {hello.kind!r:.40} "
                                f"v{hello.schema_version} from {hello.site!r:.40}")
            return
        sess = SiteSession(site, generation=next(self.generations), context=context)
        with self.lock:
            old = self.sessions.get(site)
            if old is not None and old.alive:
                log.warning("site %s connected again; closing its previous session", site)
                self._drop(old, "reconnected")
            self.sessions[site] = sess
            self.lock.notify_all()
        log.info("site %s joined", site)
        reader = threading.Thread(target=self._read, args=(sess, request_iterator),
                                  name=f"fedtune-read-{site}", daemon=True)
        reader.start()
        context.add_callback(lambda: self._drop(sess, "disconnected"))
        yield control_chunk("welcome", text=self.welcome, site=site)
        while True:
            item = sess.outbox.get()
            if item is _CLOSE:
                return
            if isinstance(item, bytes):
                yield item
                continue
            kind, task_id, round_, views = item
            del item
            if sum(len(v) for v in views) < SMALL_MESSAGE:
                yield from message_chunks(kind, None, task_id=task_id, round_=round_,
                                          chunk_bytes=self.chunk_bytes, views=views)
                continue
            with self._sending():  # ends when the last chunk is sent, or the stream ends
                chunks = message_chunks(kind, None, task_id=task_id, round_=round_,
                                        chunk_bytes=self.chunk_bytes, views=views)
                del views  # only the generator holds the broadcast, until its last byte is sent
                yield from chunks
                del chunks

    @contextmanager
    def _sending(self) -> Iterator[None]:
        """A large broadcast to one site: takes a download slot (server.
        max_concurrent_downloads) and holds large uploads back while it lasts (when
        server.max_concurrent_uploads is set)."""
        if self.download_slots is not None:
            self.download_slots.acquire()
        if self.gate.limit:
            self.gate.sending_started()
        try:
            yield
        finally:
            if self.gate.limit:
                self.gate.sending_finished()
            if self.download_slots is not None:
                self.download_slots.release()

    def _drop(self, sess: SiteSession, why: str) -> None:
        with self.lock:
            if not sess.alive:
                return
            sess.alive = False
            if self.sessions.get(sess.site) is sess and sess.task_id:
                self.results.put((sess.site, sess.task_id, f"site {why} during the task"))
                self.gate.abandon(sess.task_id)
                sess.task_id = 0
            self.lock.notify_all()
        sess.outbox.put(_CLOSE)
        log.info("site %s left (%s)", sess.site, why)

    def _register(self, sess: SiteSession, chunk: Frame) -> str | None:
        """A ``ready`` chunk: the site's training examples (JSON ``{"train_examples": n}``),
        which bound the weight it may claim per round. Returns why it is refused, or None."""
        try:
            info = json.loads(bytes(chunk.data)) if len(chunk.data) <= 4096 else None
        except (ValueError, RecursionError):
            info = None
        n = info.get("train_examples") if isinstance(info, dict) else None
        cap = self.settings.max_site_examples
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cap:
            return (f"site {sess.site!r} registered train_examples = {n!r:.40}; a site must "
                    f"register 1 to server.max_site_examples = {cap} training examples "
                    "(raise the cap on the coordinator if this site really holds more)")
        with self.lock:
            self.registered[sess.site] = n
            sess.ready = True
            self.lock.notify_all()
        log.info("site %s ready (%d training examples)", sess.site, n)
        return None

    def _refuse(self, sess: SiteSession, task_id: int, reason: str) -> None:
        """Tell the site why its message was refused; fail the task it owed."""
        self.refusals.warning(f"invalid:{sess.site}", "invalid message from site %s: %s",
                              sess.site, reason)
        sess.outbox.put(control_chunk("error", text=reason[:2000], task_id=task_id))
        if task_id and task_id == sess.task_id:
            self.results.put((sess.site, task_id, f"invalid message: {reason}"))
            self.gate.abandon(task_id)

    def _read(self, sess: SiteSession, requests: Iterator[Frame]) -> None:
        assembler = Assembler(self.max_bytes, admit=self.gate.admit,
                              on_stall=sess.context.cancel if sess.context else None)
        try:
            for chunk in requests:
                if chunk.kind == "ready":
                    problem = self._register(sess, chunk)
                    if problem is not None:
                        sess.outbox.put(control_chunk("error", text=problem))
                        self._drop(sess, "refused")
                        return
                    continue
                if chunk.kind == "error":
                    self.refusals.warning(f"reports:{sess.site}", "site %s reports: %s",
                                          sess.site, chunk.text[:500])
                    if chunk.task_id and chunk.task_id == sess.task_id:
                        self.results.put((sess.site, chunk.task_id,
                                          f"site error: {chunk.text[:500]}"))
                        self.gate.abandon(chunk.task_id)
                    continue
                try:
                    done = assembler.add(chunk)
                    if done is None:
                        continue
                    result = decode_assembly(done)
                    if not isinstance(result, FitRes | EvalRes) or result.node_id != sess.site:
                        raise MessageError(f"expected a result of site {sess.site!r}, got "
                                           f"{type(result).__name__} of "
                                           f"{getattr(result, 'node_id', '?')!r:.40}")
                except Exception as exc:  # nothing a site sends may end this reader
                    # free the message's buffer (and its upload slot)
                    done = result = assembler.current = None
                    reason = str(exc) if isinstance(exc, MessageError) else \
                        f"malformed message ({type(exc).__name__}: {str(exc)[:200]})"
                    self._refuse(sess, chunk.task_id, reason)
                    continue
                nbytes = len(done.buffer)
                with self.lock:
                    owed = sess.task_id == done.task_id and done.task_id != 0
                    if owed:
                        sess.task_id = 0
                        self.asked.pop(done.task_id, None)
                if not owed:
                    task_id, done = done.task_id, None
                    self._late(sess.site, task_id, result, nbytes)
                    result = None  # the receive buffer is free now: no slot is held
                    continue
                seconds = time.perf_counter() - done.started
                self.received.append((sess.site, nbytes, seconds))
                log.debug("received %d bytes from %s in %.3f s", nbytes, sess.site, seconds)
                self.results.put((sess.site, done.task_id, (result, nbytes)))
                # drop this thread's references: a large model's buffer must die with its
                # consumer, not live on here until the next message
                done = result = None
        except grpc.RpcError:
            pass
        finally:
            assembler.current = None
            self._drop(sess, "disconnected")
