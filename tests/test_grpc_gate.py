"""Bounded coordinator memory for large updates: uploads read in selection order, at most
``server.max_concurrent_uploads`` received updates alive, over real gRPC on loopback."""

from __future__ import annotations

import gc
import queue
import threading
import time

import pytest
import torch

from fedtune.algorithms.aggregate import weighted_mean
from fedtune.algorithms.fold import RoundFold
from fedtune.config import ServerSection
from fedtune.runtime.grpc.gate import ReceiveBuffer, UploadGate, new_buffer
from fedtune.runtime.grpc.server import GrpcRuntime
from fedtune.runtime.grpc.transfer import message_chunks
from fedtune.types import FitIns, FitRes, NodeFailure

from .deployment import RawSite, free_port

BIG = 2**19  # float32 values: 2 MiB, above the gate's small-message threshold


def test_gate_admits_in_order_and_frees_a_slot_when_the_buffer_dies():
    gate = UploadGate(1)
    gate.begin([10, 11, 12])
    admitted: list[int] = []
    buffers: dict[int, ReceiveBuffer] = {}

    def upload(task):
        buffers[task] = gate.admit(task, 2 * 2**20, new_buffer)
        admitted.append(task)

    threads = {t: threading.Thread(target=upload, args=(t,)) for t in (12, 11)}
    for t in threads.values():
        t.start()
    time.sleep(0.2)
    assert admitted == []  # position 0 has not come: later positions wait
    gate.abandon(10)  # its site failed
    threads[11].join(timeout=5)
    assert admitted == [11]
    time.sleep(0.2)
    assert admitted == [11]  # one slot, held by 11's buffer
    del buffers[11]
    gc.collect()
    threads[12].join(timeout=5)
    assert admitted == [11, 12]
    assert gate.admit(99, 100, new_buffer) is not None  # small messages never wait


def test_a_freed_buffer_takes_the_next_upload_of_its_round_only_when_nothing_views_it():
    gate = UploadGate(1)
    gate.begin([1, 2, 3])
    size = 2 * 2**20
    first = gate.admit(1, size, new_buffer)
    address = first.ctypes.data
    first[:4] = 7
    update = torch.from_numpy(first[:4096].view("float32"))  # what decode() makes of it
    view = update[8:]
    del first, update
    gc.collect()
    assert gate.in_flight == 1  # a view still reads the buffer: its slot and memory stay
    del view
    gc.collect()
    assert gate.in_flight == 0 and len(gate.pool.spares) == 1
    second = gate.admit(2, size, new_buffer)
    assert second.ctypes.data == address  # touched memory, received into again
    assert second.flags.writeable
    del second
    gate.end()  # the round is over: nothing is kept between rounds
    assert gate.pool.spares == []
    gate.begin([4])
    assert gate.admit(4, size, new_buffer) is not None


@pytest.fixture
def runtime():
    rt = GrpcRuntime(ServerSection(address=f"127.0.0.1:{free_port()}", insecure_no_auth=True,
                                   round_deadline_s=60, max_concurrent_uploads=1,
                                   max_concurrent_downloads=1),
                     welcome={}, expected_bytes=BIG * 4 + 2**20)
    yield rt
    rt.close()


def _answer(site, task, value):
    res = FitRes(site.name, 1, torch.full((BIG,), float(value)), 10 + value, 1, 0.5)
    for chunk in message_chunks("result", res, task_id=task.task_id, round_=1,
                                chunk_bytes=2**18, site=site.name):
        site.outbox.put(chunk)


def test_uploads_arrive_in_selection_order_one_at_a_time(runtime):
    address = f"127.0.0.1:{runtime.port}"
    sites = [RawSite(address, name) for name in ("a", "b", "c", "d")]
    for s, name in zip(sites, "abcd", strict=True):
        s.name = name
    try:
        for s in sites:
            assert s.next_message().kind == "welcome"
        assert runtime.wait_for_nodes(4) == ["a", "b", "c", "d"]
        replies: queue.Queue = queue.Queue()

        def consume():  # hands each reply on without keeping a reference
            for reply in runtime.fit(["a", "b", "c", "d"], FitIns(1, torch.zeros(BIG), {})):
                replies.put(reply)
                del reply

        threading.Thread(target=consume, daemon=True).start()
        tasks = [s.next_message() for s in sites]
        # answers go out in reverse; "a" dies without answering
        for s, task, value in zip(sites[:0:-1], tasks[:0:-1], (3, 2, 1), strict=True):
            _answer(s, task, value)
        time.sleep(0.5)
        assert runtime.gate.in_flight == 0 and replies.empty()  # all wait for "a"
        sites[0].close()
        fold, order, peak = RoundFold(weighted_mean), [], 0
        for position in range(4):
            reply = replies.get(timeout=30)
            peak = max(peak, runtime.gate.in_flight)
            res = reply.result
            order.append(res.node_id)
            if isinstance(res, NodeFailure):
                fold.skip(position)
            else:
                fold.offer(position, res.update, float(res.num_examples), 1.0)
            del reply, res  # folded: the buffer dies and the next upload is read
        assert order == ["a", "b", "c", "d"]
        assert peak <= 1
        expected = (11 * 1 + 12 * 2 + 13 * 3) / (11 + 12 + 13)
        torch.testing.assert_close(fold.delta(weighted_mean), torch.full((BIG,), expected))
    finally:
        for s in sites[1:]:
            s.close()
