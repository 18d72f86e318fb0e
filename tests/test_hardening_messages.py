"""An authenticated site that sends anything: every field is checked at the boundary, the
sender gets the reason, the reader survives, and the same session is served on.

Regression tests for issue "Hardening", failures 1, 2 (non-finite weights), 6 and 9: each
case below once raised inside the round loop, passed as a weight of infinity, was accepted
with the wrong dtype, or killed the session's reader thread."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch

from fedtune.message_schema import FIELDS
from fedtune.runtime.grpc.transfer import decode_assembly, frame, message_chunks
from fedtune.types import EvalIns, EvalRes, FitIns, FitRes, NodeFailure
from fedtune.wire import MESSAGES

from .deployment import RawSite, fit_in_background, make_runtime

ZEROS10 = torch.zeros(10).numpy().tobytes()
METER = ["meter", "float64", [4], torch.zeros(4, dtype=torch.float64).numpy().tobytes()]
GOOD_FIELDS = ('{"node_id": "raw", "round": 1, "num_examples": 5, "num_steps": 1, '
               '"train_loss": 0.5, "meter": {"energy_method": ""}, "encoding": ""}')


def raw_message(kind: str, fields_json: str, tensors: list[list]) -> bytes:
    """A wire message with a hand-written header: anything a peer could send."""
    table = [[n, d, s, len(b)] for n, d, s, b in tensors]
    header = (f'{{"kind": "{kind}", "fields": {fields_json}, "tensors": '
              f'{json.dumps(table)}}}').encode()
    header += b" " * (-len(header) % 8)
    return b"FTW1" + struct.pack("<I", len(header)) + header + b"".join(t[3] for t in tensors)


def fit_result(fields: str = GOOD_FIELDS, update: list | None = None) -> bytes:
    return raw_message("FitRes", fields,
                       [update or ["update", "float32", [10], ZEROS10], METER])


def swap(old: str, new: str) -> str:
    assert old in GOOD_FIELDS
    return GOOD_FIELDS.replace(old, new)


CASES = {
    "num_examples as a string": (fit_result(swap('"num_examples": 5', '"num_examples": "5"')),
                                 "num_examples"),
    "num_examples 10**400": (fit_result(swap('"num_examples": 5',
                                             f'"num_examples": {10**400}')), "num_examples"),
    "num_examples 1e400": (fit_result(swap('"num_examples": 5', '"num_examples": 1e400')),
                           "num_examples"),
    "num_examples NaN": (fit_result(swap('"num_examples": 5', '"num_examples": NaN')),
                         "num_examples"),
    "num_examples 0": (fit_result(swap('"num_examples": 5', '"num_examples": 0')),
                       "num_examples"),
    "num_steps as a string": (fit_result(swap('"num_steps": 1', '"num_steps": "1"')),
                              "num_steps"),
    "train_loss as a string": (fit_result(swap('"train_loss": 0.5', '"train_loss": "x"')),
                               "train_loss"),
    "encoding as a number": (fit_result(swap('"encoding": ""', '"encoding": 5')), "encoding"),
    "an unknown field": (fit_result(swap('"encoding": ""', '"encoding": "", "admin": true')),
                         "admin"),
    "fields as a list": (fit_result("[1, 2]"), "must be a JSON object"),
    "metrics as a list": (raw_message("EvalRes", '{"node_id": "raw", "round": 1, '
                                      '"num_examples": 3, "metrics": [1, 2]}', [METER]),
                          "metrics"),
    "shape 'abc'": (fit_result(update=["update", "float32", "abc", ZEROS10]), "shape"),
    "negative shape": (fit_result(update=["update", "float32", [-10], ZEROS10]), "shape"),
    "float64 update": (fit_result(update=["update", "float64", [5], ZEROS10]),
                       "must be float32"),
    "float16 update": (fit_result(update=["update", "float16", [20], ZEROS10]),
                       "must be float32"),
    "an undeclared tensor": (raw_message("FitRes", GOOD_FIELDS,
                                         [["update", "float32", [10], ZEROS10], METER,
                                          ["secret", "uint8", [1], b"x"]]), "no tensor 'secret'"),
    "no update": (raw_message("FitRes", GOOD_FIELDS, [METER]), "update"),
    "a negative meter": (raw_message("FitRes", GOOD_FIELDS, [
        ["update", "float32", [10], ZEROS10],
        ["meter", "float64", [4], torch.full((4,), -1.0, dtype=torch.float64).numpy().tobytes()]]),
        "impossible values"),
    "deeply nested JSON": (fit_result("[" * 100_000 + "]" * 100_000), "JSON"),
    "another site's name": (fit_result(swap('"node_id": "raw"', '"node_id": "node-0"')),
                            "expected a result of site 'raw'"),
}


@pytest.fixture
def server():
    runtime, address = make_runtime(max_message_mb=4)
    yield runtime, address
    runtime.close()


def assert_refused_and_served_on(runtime, address, send, expected: str) -> None:
    """A raw site answers its task with ``send(task_id)`` (frames); it gets an error naming
    ``expected``, the round a failure saying the same, and its next good answer on the same
    session is accepted."""
    raw = RawSite(address, "raw")
    try:
        assert raw.next_message().kind == "welcome"
        assert runtime.wait_for_nodes(1) == ["raw"]
        replies = fit_in_background(runtime, ["raw"])
        task = raw.next_message()
        for chunk in send(task.task_id):
            raw.outbox.put(chunk)
        error = raw.next_message()
        assert error.kind == "error" and expected in error.data.decode(), error.data.decode()
        reply = replies.get(timeout=30)
        assert isinstance(reply.result, NodeFailure) and expected in reply.result.reason
        # the reader survived: the next round's good answer on the same session is accepted
        replies = fit_in_background(runtime, ["raw"], round_=2)
        task = raw.next_message()
        assert isinstance(decode_assembly(task), FitIns)
        good = FitRes("raw", 2, torch.zeros(10), 5, 1, 0.5)
        for chunk in message_chunks("result", good, task_id=task.task_id, round_=2,
                                    chunk_bytes=4096, site="raw"):
            raw.outbox.put(chunk)
        reply = replies.get(timeout=30)
        assert isinstance(reply.result, FitRes) and reply.result.num_examples == 5
    finally:
        raw.close()


@pytest.mark.parametrize("case", list(CASES))
def test_every_field_is_checked_and_the_session_is_served_on(server, case):
    runtime, address = server
    data, expected = CASES[case]
    assert_refused_and_served_on(runtime, address, lambda task_id: [frame(
        "result", [data], task_id=task_id, round_=1, total_bytes=len(data))], expected)


def test_the_declared_fields_are_exactly_the_messages_scalar_fields():
    """A field added to a message without a declared check would fail here."""
    tensors = {"params", "update", "aux"}
    for kind, cls in MESSAGES.items():
        scalar = {f.name for f in dataclasses.fields(cls)} - tensors
        assert set(FIELDS[kind].model_fields) == scalar, kind
    assert {EvalIns, EvalRes} <= set(MESSAGES.values())
