"""Protocol fuzzing against a real `fedtune serve` on loopback.

An authenticated site answers each task it gets with frames that hypothesis makes up:
envelopes with any kind, task id, round, sizes and flags, and payloads that are random bytes
or fedtune wire messages whose header fields and tensor table are drawn from JSON of every
type (huge integers, NaN, infinities, strings, lists, nesting). Meanwhile an honest site
takes part in every round. Afterwards: the coordinator is alive and finishes the run, every
round has the honest site's update, the model is finite, and the store is consistent.
The cases are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtune.runtime.grpc import SCHEMA_VERSION
from fedtune.runtime.grpc.fedtune_pb2 import Chunk
from fedtune.store import RunStore

from .deployment import Federation, RawSite

ROUNDS = 120
CONFIG = f"""
[run]
rounds = {ROUNDS}
workspace = "{{workspace}}"
eval_every = 1000
checkpoint_every = 1000
[data]
num_nodes = 2
[strategy]
min_nodes = 1
[evaluation]
personalize_steps = 0
[server]
address = "{{address}}"
insecure_no_auth = true
round_deadline_s = 1
upload_idle_s = 1
"""

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, 2**63, -1, 0, 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
field_names = ["num_examples", "num_examples", "num_steps", "train_loss", "encoding",
               "meter", "node_id", "round", "metrics"]


AWAITED = 12345  # stands for the task the coordinator awaits, filled in when it is known
NUMEL = 64 * 128 + 128 + 128 * 10 + 10  # the default MLP's parameters: updates of this size
VALID_TABLE = [["update", "float32", [NUMEL], 4 * NUMEL], ["meter", "float64", [4], 32]]


@st.composite
def wire_message(draw) -> bytes:
    """A wire message: header fields of any JSON type, and a valid or fuzzed tensor table."""
    kind = draw(st.sampled_from(["FitRes", "FitRes", "FitRes", "EvalRes", "FitIns", "Bogus"]))
    fields = {"node_id": "attacker", "round": 1, "num_examples": 5, "num_steps": 1,
              "train_loss": 0.5, "meter": {"energy_method": ""}, "encoding": ""}
    for name in draw(st.lists(st.sampled_from(field_names), max_size=2)):
        fields[name] = draw(json_value)
    if draw(st.integers(0, 3)):
        rows, payload = VALID_TABLE, bytes(4 * NUMEL + 32)
    else:
        rows = [list(r) for r in draw(st.lists(st.tuples(
            st.sampled_from(["update", "meter", "aux.scaffold_dc", "aux.packed.values", "x"]),
            st.sampled_from(["float32", "float64", "float16", "uint8", "int64", "complex", 7]),
            st.one_of(st.lists(st.integers(-5, 3000), max_size=3), json_value),
            st.integers(-10, 12_000)), max_size=3))]
        payload = draw(st.binary(max_size=4096))
    header = json.dumps({"kind": kind, "fields": fields, "tensors": rows}).encode()
    header += b" " * (-len(header) % 8)
    return b"FTW1" + struct.pack("<I", len(header)) + header + payload


@st.composite
def frames(draw, task_id: int) -> list[Chunk]:
    """One well-framed message (three cases in four), or up to three frames of anything."""
    if draw(st.integers(0, 3)):
        data = draw(wire_message())
        return [Chunk(kind="result", task_id=task_id, round=1, total_bytes=len(data),
                      first=True, last=True, schema_version=SCHEMA_VERSION, site="attacker",
                      data=data)]
    out = []
    for _ in range(draw(st.integers(1, 3))):
        data = draw(st.one_of(wire_message(), st.binary(max_size=512)))
        out.append(Chunk(
            kind=draw(st.sampled_from(["result", "result", "ready", "error", "hello", "x"])),
            task_id=draw(st.sampled_from([task_id, task_id, 0, 2**64 - 1])),
            round=draw(st.integers(0, 2**32 - 1)),
            total_bytes=draw(st.sampled_from([len(data), len(data) + 1, 0, 2**63])),
            first=draw(st.booleans()) or not out, last=draw(st.booleans()),
            schema_version=draw(st.sampled_from([SCHEMA_VERSION, SCHEMA_VERSION, 0, 99])),
            site=draw(st.sampled_from(["attacker", "node-0", ""])), data=data))
    return out


def test_the_fuzz_uses_the_models_real_size():
    from fedtune.config import load_config
    from fedtune.experiment import _assemble

    assert _assemble(load_config(None, ["data.num_nodes=2"]), None)[2].flat.spec.numel == NUMEL


def test_protocol_fuzz_against_a_real_coordinator(tmp_path):
    fed = Federation(tmp_path, CONFIG)
    attacker: list[RawSite] = []
    reasons: list[str] = []  # what the coordinator told the attacker
    try:
        fed.serve()
        fed.wait_for_log("serve", "listening on")
        # connected before the honest site joins, ready once it is: honest rounds take a few
        # milliseconds, and a whole run could pass while a new session was being opened
        attacker.append(RawSite(fed.address, "attacker", ready=False))
        fed.wait_for_log("serve", "site attacker joined")
        fed.join("node-0")
        fed.wait_for_log("serve", "site node-0 ready")
        attacker[0].ready()

        over: list[bool] = []  # the run ended (on a loaded machine, before the last case)

        def next_fit_task():
            """The attacker's next fit task, reconnecting when the server ended its session;
            None once the run is over."""
            while not over:
                if not attacker:
                    attacker.append(RawSite(fed.address, "attacker"))
                msg = attacker[0].next_message()
                if msg is not None and msg.kind == "error":
                    reasons.append(msg.data.decode(errors="replace"))
                    continue
                if msg is None or msg.kind == "stop":
                    attacker.pop().close()
                    if (msg is not None and msg.kind == "stop") or fed.server.poll() is not None:
                        over.append(True)
                    continue
                if getattr(msg, "kind", "") == "fit":
                    return msg.task_id
            return None

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def attack(data):
            # drawn before the coordinator is asked, so that what hypothesis draws never
            # depends on how far the run got (it replays cases and checks they draw alike)
            chunks = data.draw(frames(AWAITED))
            task_id = next_fit_task()
            if task_id is None:
                return  # the run is over: nothing left to attack
            for chunk in chunks:
                if chunk.task_id == AWAITED:
                    chunk.task_id = task_id
                attacker[0].outbox.put(chunk)
            assert fed.server.poll() is None, fed.log("serve")[-3000:]

        attack()
        for site in attacker:
            site.close()
        out = json.loads(fed.finish(timeout=600))
    finally:
        fed.close()
    assert fed.server.returncode == 0, fed.log("serve")[-3000:]
    assert out["status"] == "complete" and out["rounds"] == ROUNDS
    assert math.isfinite(out["test_loss"])
    store = RunStore(tmp_path / "ws")
    data = store.load_run("last")
    assert [r["round"] for r in data["rounds"]] == list(range(1, ROUNDS + 1))
    honest = {n["round"] for n in data["node_metrics"]
              if n["phase"] == "fit" and n["node_id"] == "node-0"}
    assert honest == set(range(1, ROUNDS + 1)), "the honest site took part in every round"
    params = store.load_checkpoint("last")
    assert all(bool(torch.isfinite(t).all()) for t in params.values())
    store.close()
    with sqlite3.connect(tmp_path / "ws" / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "Traceback" not in fed.log("serve")
    # the cases reached every layer: framing, the header, the declared fields and tensors
    text = "\n".join(reasons)
    for layer in ("declared", "field '", "tensor"):
        assert layer in text, (layer, sorted(set(reasons))[:30])
