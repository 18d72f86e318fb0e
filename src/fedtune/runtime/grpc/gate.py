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

Within a round, a freed buffer takes the next upload of the same size: its memory is already
touched, where fresh memory costs page faults (on this VM up to 3 s per GB, when the host has
taken freed memory back). The round's end frees the spare, so between rounds the coordinator
holds none.
"""

from __future__ import annotations

import threading
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


class UploadGate:
    """Admits messages ``limit`` at a time (0: no limit), a round's in selection order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cond = threading.Condition()
        self.in_flight = 0
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

    def _may_enter(self, task_id: int) -> bool:
        if self.in_flight >= self.limit or self.sending:
            return False
        pos = self.order.get(task_id)
        return pos is None or pos <= self.next

    def admit(self, task_id: int, size: int, buffer_factory: Callable[[int], ReceiveBuffer],
              ) -> ReceiveBuffer:
        """Wait for a slot, then allocate the message's buffer; the slot is freed when the
        buffer is."""
        if not self.limit or size < SMALL_MESSAGE:
            with self.cond:
                self._pass(task_id)
            return buffer_factory(size)
        with self.cond:
            while not self._may_enter(task_id):
                self.cond.wait()
            self.in_flight += 1
            self._pass(task_id)
        try:
            return self.pool.lease(size, self._release, buffer_factory)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()
