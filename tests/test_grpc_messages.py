"""Malformed, oversized, NaN and wrong-shape messages over real gRPC: the sender gets a clear
error, the coordinator logs it and keeps serving, and the store stays intact."""

from __future__ import annotations

import json
import socket
import subprocess

import grpc
import pytest
import torch

from fedtune.runtime.grpc import SCHEMA_VERSION
from fedtune.runtime.grpc.fedtune_pb2 import Chunk
from fedtune.runtime.grpc.transfer import (
    control_chunk,
    decode_assembly,
    message_chunks,
    open_session,
)
from fedtune.store import RunStore
from fedtune.types import FitIns, FitRes

from .conftest import FEDTUNE
from .deployment import Federation, RawSite, fit_in_background, free_port, make_runtime


@pytest.fixture
def server():
    runtime, address = make_runtime(expected_bytes=64 * 1024, max_message_mb=1)
    yield runtime, address
    runtime.close()


def _good_result(task_id, update=None):
    res = FitRes("raw", 1, torch.zeros(10) if update is None else update, 5, 1, 0.5)
    return list(message_chunks("result", res, task_id=task_id, round_=1, chunk_bytes=4096,
                               site="raw"))


BAD = {
    "malformed": lambda tid: [Chunk(kind="result", task_id=tid, total_bytes=9, first=True,
                                    last=True, schema_version=SCHEMA_VERSION, data=b"garbage!!")],
    "oversized": lambda tid: [Chunk(kind="result", task_id=tid, total_bytes=10 * 2**30,
                                    first=True, last=False, schema_version=SCHEMA_VERSION,
                                    data=b"x")],
    "NaN": lambda tid: _good_result(tid, torch.full((10,), float("nan"))),
    "truncated": lambda tid: [Chunk(kind="result", task_id=tid, total_bytes=100, first=True,
                                    last=True, schema_version=SCHEMA_VERSION, data=b"x" * 10)],
    "schema version": lambda tid: [Chunk(kind="result", task_id=tid, total_bytes=1, first=True,
                                         last=True, schema_version=99, data=b"x")],
}
EXPECTED = {"malformed": "bad magic", "oversized": "exceeds the limit", "NaN": "NaN",
            "truncated": "ended after", "schema version": "schema version 99"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_result_is_refused_with_a_reason_and_serving_goes_on(server, case):
    from .test_hardening_messages import assert_refused_and_served_on

    assert_refused_and_served_on(*server, BAD[case], EXPECTED[case])


def test_a_frame_that_is_not_protobuf_gets_an_error_and_serving_goes_on(server):
    runtime, address = server
    raw = RawSite(address, "raw")
    try:
        assert raw.next_message().kind == "welcome"
        replies = fit_in_background(runtime, ["raw"])
        task = raw.next_message()
        # a second connection of another site sends bytes that are no protobuf at all
        with grpc.insecure_channel(address) as channel:
            frames = iter([control_chunk("hello", site="junk"), b"\xff\xff\xff"])
            answers = list(open_session(channel)(frames, metadata=(("x-fedtune-site", "junk"),)))
        assert answers[0].kind == "welcome"
        assert answers[1].kind == "error" and "not a valid Chunk protobuf" in answers[1].text
        for chunk in _good_result(task.task_id):  # the first site is served as before
            raw.outbox.put(chunk)
        assert isinstance(replies.get(timeout=30).result, FitRes)
    finally:
        raw.close()


def test_wrong_hello_gets_an_error(server):
    _, address = server
    raw = RawSite(address, "raw", hello=control_chunk("hello", site="someone-else"))
    try:
        msg = raw.next_message()
        assert msg.kind == "error" and "expected hello" in msg.data.decode()
    finally:
        raw.close()


def test_wrong_shape_update_is_dropped_by_the_coordinator(tmp_path):
    """A site process whose updates have the wrong length: the run goes on without it."""
    fed = Federation(tmp_path, """
[run]
rounds = 2
workspace = "{workspace}"
[data]
num_nodes = 2
[strategy]
min_nodes = 2
[server]
address = "{address}"
insecure_no_auth = true
""")
    try:
        fed.serve()
        fed.join("node-0")
        raw = None
        fed.wait_for_log("serve", "site node-0 ready")
        raw = RawSite(fed.address, "node-1")
        assert raw.next_message().kind == "welcome"
        for round_ in (1, 2):
            task = raw.next_message()
            res = FitRes("node-1", round_, torch.zeros(3), 5, 1, 0.5)
            for chunk in message_chunks("result", res, task_id=task.task_id, round_=round_,
                                        chunk_bytes=4096, site="node-1"):
                raw.outbox.put(chunk)
        raw.next_message()  # the evaluation task; leave it unanswered until the deadline
        raw.close()
        out = json.loads(fed.finish())
        # the coordinator served on; with one valid update of strategy.min_nodes = 2 no round
        # changed the model, and the run says so
        assert out["status"] == "failed" and "strategy.min_nodes = 2" in out["status_reason"]
        assert "update has shape (3,)" in fed.log("serve")
        data = RunStore(tmp_path / "ws").load_run("last")
        assert [r["failed"] for r in data["rounds"]] == [1, 1]
    finally:
        fed.close()


def test_serve_reports_a_busy_port(tmp_path):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        fed = Federation(tmp_path, """
[run]
workspace = "{workspace}"
[server]
address = "{address}"
insecure_no_auth = true
""", port=port)
        proc = fed.serve()
        proc.wait(timeout=120)
    assert proc.returncode == 2
    assert "cannot listen on server.address" in fed.log("serve")


def test_serve_suggests_bounding_memory_for_a_large_model(tmp_path):
    """A 300 MB model with unlimited uploads: serve says how to bound its memory (and, with
    no site joining, stops with a one-line error)."""
    out = subprocess.run(
        [FEDTUNE, "serve", "--set", "model.hidden=[1050000]", "--set",
         "server.insecure_no_auth=true", "--set", "server.wait_for_sites_s=1", "--set",
         f"server.address=\"127.0.0.1:{free_port()}\"", "--set",
         f"run.workspace=\"{tmp_path}\""], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "server.max_concurrent_uploads = 0" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: only 0 of")


def test_a_site_receives_the_next_model_into_the_buffer_it_no_longer_uses():
    """Assembler(reuse=True): the same-size next message lands in the last buffer once
    nothing references it, never while a decoded tensor still views it."""
    from fedtune.runtime.grpc.transfer import Assembler, parse_frame

    def receive(asm, round_, value):
        ins = FitIns(round_, torch.full((400_000,), value), {})
        done = None
        for raw in message_chunks("fit", ins, task_id=round_, round_=round_,
                                  chunk_bytes=2**18):
            done = asm.add(parse_frame(raw)) or done
        return done

    asm = Assembler(2**30, reuse=True)
    done = receive(asm, 1, 1.0)
    first = done.buffer.ctypes.data
    kept = decode_assembly(done).params  # still in use: a view of the first buffer
    del done
    done = receive(asm, 2, 2.0)
    assert done.buffer.ctypes.data != first
    assert torch.equal(kept, torch.full((400_000,), 1.0))  # not overwritten
    second = done.buffer.ctypes.data
    del done, kept
    done = receive(asm, 3, 3.0)
    assert done.buffer.ctypes.data == second  # unused now: received into again
    assert torch.equal(decode_assembly(done).params, torch.full((400_000,), 3.0))
