"""Admission of large uploads: how many received updates the coordinator holds at once.

With ``server.max_concurrent_uploads = n``, a site's large message is read only when fewer
than n received buffers are alive, so the rest wait in gRPC's flow control (in the sites'
memory), not in the coordinator's. A buffer counts until it is freed, which happens when the
coordinator has folded the update into its running aggregate (:mod:`fedtune.algorithms.fold`)
or dropped it: memory is bounded by what is really held, not by what was received.

The coordinator folds in selection order, so the gate admits a round's uploads in the same
order: the k-th selected site's upload is read after the first k-1 were admitted or gave up
(failed, disconnected, missed the deadline). Otherwise an early site's update could hold the
only slot while its predecessors, which the fold needs first, could not be read.

Large uploads are also not read while a large broadcast is being sent: in one Python process
every copy of a chunk (framing, gRPC's buffers, reassembly) takes the interpreter lock, so
sending and receiving at once slows both streams.

No upload waits on a site that is silent or stalled. An admitted upload whose stream brings
no chunk for ``idle_s`` (``server.upload_idle_s``) while another upload waits loses its slot:
the gate calls its stream's ``stall`` action, which ends that site's session and so frees
the buffer. An upload that has waited ``idle_s`` for its predecessors in the order, with a
slot free, is admitted out of order: a predecessor that never starts its upload (it crashed,
or answers late) then costs the others that much time, not the round. The coordinator
spills such an early update to disk until its turn in the fold.

Within a round, a freed buffer takes the next upload of the same size: its memory is already
touched, where fresh memory costs page faults (when the host has taken freed memory
back; bench/transfer.py measures what that costs). The round's end frees the spare, so
between rounds the coordinator holds none.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable

import numpy as np

SMALL_MESSAGE = 1 << 20  # messages below this size never wait (metrics, compressed updates)


ReceiveBuffer = np.ndarray  # uint8; weak-referenceable, so its death can free a slot


def new_buffer(size: int) -> ReceiveBuffer:
    """A message's receive buffer. Not zero-filled (``bytearray(n)`` writes every page once
    before the message does, which costs a third of a 1 GB transfer)."""
    return np.empty(size, dtype=np.uint8)


class BufferPool:
    """Receive buffers received into again once nothing reads them: their memory is already
    touched, where fresh memory costs page faults.

    :meth:`lease` returns a new array object over a block (a spare one of the same size, or
    a fresh one). Every view and tensor made from that array keeps *it* alive (numpy chains
    views to the first array whose base is not an array), so its death means nothing reads
    the block any more: the block becomes a spare, unless the pool was restarted since or
    is not keeping. With ``latest_only`` (a site), only the newest lease's block is kept and
    a lease drops the spare it does not take, so the pool never holds two buffers.
    """

    def __init__(self, *, latest_only: bool = False, keeping: bool = True) -> None:
        self.latest_only, self.keeping = latest_only, keeping
        self.lock = threading.Lock()
        self.spares: list[ReceiveBuffer] = []
        self.generation = 0

    def lease(self, size: int, on_free: Callable[[], None] | None = None,
              factory: Callable[[int], ReceiveBuffer] = new_buffer) -> ReceiveBuffer:
        """A buffer of ``size`` bytes; ``on_free`` runs when nothing reads it any more."""
        with self.lock:
            block = next((b for b in self.spares if len(b) == size), None)
            self.spares = [b for b in self.spares if b is not block and not self.latest_only]
            if self.latest_only:
                self.generation += 1  # blocks of earlier leases are not kept
            generation = self.generation
        if block is None:
            block = factory(size)
        buffer = np.frombuffer(memoryview(block), dtype=np.uint8)  # type: ignore[arg-type]
        weakref.finalize(buffer, self._returned, block, generation, on_free)
        return buffer

    def _returned(self, block: ReceiveBuffer, generation: int,
                  on_free: Callable[[], None] | None) -> None:
        with self.lock:  # the spare is in place before on_free wakes a waiting upload
            if self.keeping and generation == self.generation:
                self.spares.append(block)
        if on_free is not None:
            on_free()

    def restart(self, *, keeping: bool) -> None:
        """Drop the spares; buffers leased before are not kept when they come back."""
        with self.lock:
            self.generation += 1
            self.spares, self.keeping = [], keeping


class Progress:
    """When a stream last brought a chunk, and what ends the stream if it stalls."""

    __slots__ = ("last", "stall")

    def __init__(self, stall: Callable[[], object] | None = None) -> None:
        self.last = time.monotonic()
        self.stall = stall


class UploadGate:
    """Admits messages ``limit`` at a time (0: no limit), a round's in selection order."""

    def __init__(self, limit: int, *, idle_s: float = 30.0) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self.cond = threading.Condition()
        self.in_flight = 0
        self.holders: dict[int, Progress] = {}  # lease -> progress of the stream filling it
        self.leases = 0
        self.order: dict[int, int] = {}  # task id -> position in the current round
        self.passed: set[int] = set()  # positions admitted or abandoned
        self.next = 0
        self.sending = 0  # large broadcasts being sent right now
        self.pool = BufferPool(keeping=False)  # freed buffers of this round, received into again

    def begin(self, task_ids: Iterable[int]) -> None:
        """A round's tasks, in selection order."""
        with self.cond:
            self.order = {t: i for i, t in enumerate(task_ids)}
            self.passed, self.next = set(), 0
            self.pool.restart(keeping=bool(self.order))  # nothing is kept between rounds
            self.cond.notify_all()

    def end(self) -> None:
        """The round is over: whatever still comes is admitted by count alone."""
        self.begin(())

    def abandon(self, task_id: int) -> None:
        """The task's site failed or left: stop keeping its place in the order."""
        with self.cond:
            self._pass(task_id)

    def _pass(self, task_id: int) -> None:
        pos = self.order.get(task_id)
        if pos is not None:
            self.passed.add(pos)
            while self.next in self.passed:
                self.next += 1
            self.cond.notify_all()

    def sending_started(self) -> None:
        with self.cond:
            self.sending += 1

    def sending_finished(self) -> None:
        with self.cond:
            self.sending -= 1
            self.cond.notify_all()

    def _may_enter(self, task_id: int, impatient: bool) -> bool:
        if self.in_flight >= self.limit or self.sending:
            return False
        pos = self.order.get(task_id)
        return pos is None or pos <= self.next or impatient

    def admit(self, task_id: int, size: int, buffer_factory: Callable[[int], ReceiveBuffer],
              progress: Progress | None = None) -> ReceiveBuffer:
        """Wait for a slot, then allocate the message's buffer; the slot is freed when the
        buffer is."""
        if not self.limit or size < SMALL_MESSAGE:
            with self.cond:
                self._pass(task_id)
            return buffer_factory(size)
        started = time.monotonic()
        with self.cond:
            while True:
                impatient = time.monotonic() - started >= self.idle_s
                if self._may_enter(task_id, impatient):
                    break
                stalled = self._stalled()
                if stalled:
                    self.cond.release()
                    try:  # ends the stalled sessions; their buffers then free the slots
                        for action in stalled:
                            action()
                    finally:
                        self.cond.acquire()
                self.cond.wait(timeout=self.idle_s / 4)
            self.in_flight += 1
            self.leases += 1
            lease = self.leases
            if progress is not None:
                self.holders[lease] = progress
            self._pass(task_id)
        try:
            return self.pool.lease(size, lambda: self._release(lease), buffer_factory)
        except BaseException:
            self._release(lease)
            raise

    def _stalled(self) -> list[Callable[[], object]]:
        """Stall actions of admitted streams idle for ``idle_s`` in the middle of a message
        (each called once; a received message held by its consumer is not a stall)."""
        now, out = time.monotonic(), []
        for lease, p in list(self.holders.items()):
            if now - p.last >= self.idle_s and p.stall is not None:
                out.append(p.stall)
                del self.holders[lease]
        return out

    def _release(self, lease: int) -> None:
        with self.cond:
            self.in_flight -= 1
            self.holders.pop(lease, None)
            self.cond.notify_all()
