"""The sites' sessions on the coordinator: admission, one reader per session, and the
outbox each session's response stream sends from.

Nothing a site sends can end a reader thread or reach the round loop unchecked: every message
is validated against its declared schema while decoded (:mod:`fedtune.message_schema`), a
malformed one gets an ``error`` chunk back with the reason, and the session is served on. A
result the site no longer owes (late, repeated, never asked) is settled by the reader the
moment it arrives (:mod:`.late`), so its buffer (and its upload slot) is freed at once.
Session admission (hello timeout, caps on pending sessions, rate-limited refusals) is in
:mod:`.sessions`. :class:`~.server.GrpcRuntime` drives the rounds over these sessions.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from ...config import ServerSection
from ...errors import FedtuneError, MessageError
from ...wire import REPLIES
from . import SCHEMA_VERSION
from .gate import SMALL_MESSAGE, UploadGate
from .late import LateUpdates
from .security import load_tokens
from .sessions import (
    READY_BYTES,
    PendingSessions,
    RateLimitedLog,
    authenticate,
    first_message,
    registered_examples,
    registered_grid,
)
from .transfer import Assembler, Frame, control_chunk, decode_assembly, message_chunks

log = logging.getLogger("fedtune.server")
CLOSE = object()  # an outbox item: end the session's response stream


@dataclass
class SiteSession:
    site: str
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    alive: bool = True
    ready: bool = False  # set when the site says it has built its model and loaded its data
    task_id: int = 0  # the task the site owes an answer to (0: none)
    generation: int = 0
    context: Any = None  # the call's ServicerContext: cancel() ends the session


class SiteConnections:
    """Every site's session: who is connected and ready, and what each was asked."""

    def __init__(self, settings: ServerSection, *, welcome: dict[str, Any],
                 max_bytes: int) -> None:
        self.settings = settings
        self.welcome = json.dumps(welcome)
        self.chunk_bytes = settings.chunk_kb * 1024
        self.max_bytes = max_bytes
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
        self.grids: dict[str, Any] = {}  # site -> the grid it declared (energy/grids.py)
        self.lock = threading.Condition()
        self.results: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self.late = LateUpdates(keep=settings.stragglers == "stale",
                                memory_bytes=settings.stale_memory_mb * 2**20)
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
        self.generations = itertools.count(1)

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
            if item is CLOSE:
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
        sess.outbox.put(CLOSE)
        log.info("site %s left (%s)", sess.site, why)

    def _register(self, sess: SiteSession, chunk: Frame) -> str | None:
        """A ``ready`` chunk: the site's training examples bound the weight it may claim per
        round. Returns why it is refused, or None."""
        text = bytes(chunk.data[:READY_BYTES + 1])
        n = registered_examples(text, self.settings.max_site_examples, sess.site)
        if isinstance(n, str):
            return n
        grid = registered_grid(text, sess.site)
        if isinstance(grid, str):
            return grid
        with self.lock:
            self.registered[sess.site] = n
            if grid is not None:
                self.grids[sess.site] = grid
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
                    if type(result) not in REPLIES or result.node_id != sess.site:
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
                if owed:
                    self.late.answered(done.task_id)
                else:
                    task_id, done = done.task_id, None
                    if self.late.settle(sess.site, task_id, result, nbytes):
                        log.info("kept a late update from %s (round %d) for the next "
                                 "aggregation", sess.site, result.round)
                    else:
                        self.refusals.warning(f"late:{sess.site}", "dropped a late or "
                                              "unexpected result from %s (task %d)",
                                              sess.site, task_id)
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
