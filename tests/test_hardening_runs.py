"""Runs tell the truth and survive faults: a run that learned nothing does not end
"complete", a model never turns non-finite, one site cannot outweigh the round, a crashed
coordinator resumes with plain --resume while its sites wait, and damaged or unwritable
storage is one line naming the file, with nothing stored lost.

Regression tests for issue "Hardening", failures 2, 5, 7 and 8."""

from __future__ import annotations

import json
import math
import resource
import sqlite3
import subprocess

import pytest
import torch
from torch import nn

import fedtune
from fedtune.errors import StoreError
from fedtune.run_health import RunHealth
from fedtune.runtime.base import Reply
from fedtune.store import RunStore
from fedtune.types import FitRes, RoundRecord

from .conftest import FEDTUNE, small_config
from .deployment import Federation
from .test_grpc_deployment import config


def _task(evil_scale: float | None):
    """Three sites on a shifted linear problem; "evil" (when scaled) sends a model of
    evil_scale in every parameter: finite, but too large for a float32 sum."""
    torch.manual_seed(0)
    w = torch.randn(8, 3)

    def split(n, shift):
        x = torch.randn(n, 8) + shift
        return x, (x @ w).argmax(1)

    sites = {f"site-{i}": (split(120, i * 0.2), split(30, i * 0.2)) for i in range(2)}
    sites["evil"] = (split(120, 0.1), split(30, 0.1))

    def train_fn(model, x, y, plan, gen):
        if evil_scale is not None and len(x) == 120 and float(x[0, 0]) == float(
                sites["evil"][0][0][0, 0]):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(evil_scale)
            return 1
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return 5

    return fedtune.make_task(lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(),
                                                   nn.Linear(16, 3)),
                             sites, test=split(200, 0.2), train_fn=train_fn)


def test_an_overflowing_aggregate_is_never_applied_and_the_run_says_so():
    cfg = fedtune.load_config(overrides=["run.rounds=4", "evaluation.personalize_steps=0"])
    result = fedtune.run(cfg, task=_task(3e38), store=False)
    assert math.isfinite(result.final_test_loss)
    assert result.status == "failed"
    assert "aggregate was not finite" in result.extra["status_reason"]
    honest = fedtune.run(cfg, task=_task(None), store=False)
    assert honest.status == "complete" and "status_reason" not in honest.extra


def test_a_site_cannot_claim_more_examples_than_it_can_have_visited():
    from fedtune.coordinator import Coordinator
    from fedtune.experiment import _assemble
    from fedtune.node.node import Node
    from fedtune.runtime.inprocess import InProcessRuntime

    cfg = small_config("local.epochs=2", "local.batch_size=16")
    task, strategy, bench, meter, co2 = _assemble(cfg, None)
    nodes = [Node(d, seed=0, meter=meter, co2_per_joule=co2, device=bench.flat.device)
             for d in task.data.nodes]
    runtime = InProcessRuntime(nodes, bench)
    coordinator = Coordinator(cfg, strategy, runtime, bench, meter=meter, co2_per_joule=co2)
    node = task.data.nodes[0]
    numel = bench.flat.spec.numel
    honest = runtime._call(node.node_id, coordinator.instruction(1)).result
    bound = 2 * math.ceil(node.num_train / 16) * 17  # a last slice of one joins a batch
    assert honest.num_examples <= bound
    for claimed, accepted in ((honest.num_examples, True), (bound, True), (bound + 1, False),
                              (10**12, False)):
        res = FitRes(node.node_id, 1, torch.zeros(numel), claimed, 1, 0.5)
        kept, row = coordinator.screen(Reply(res, 0, 0), 1, expected_round=1,
                                       allowed={node.node_id}, seen=())
        assert (kept is not None) == accepted, (claimed, row.energy_method)
        if not accepted:
            assert f"claims {claimed} examples" in row.energy_method


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_the_weight_bound_covers_every_honest_fit_on_any_subset_of_a_sites_rows(batch_size):
    # regression: a FedEx site with 97 of its 121 rows (97 = 3 x 32 + 1) was dropped every
    # round, since its merged last batch of 33 made 50 steps visit 1,616 examples, not 1,600
    from fedtune.node.trainer import LocalPlan, shuffled_batches
    from fedtune.run_health import max_examples

    gen = torch.Generator().manual_seed(0)
    for held in range(1, 3 * batch_size + 3):
        for plan in (LocalPlan(steps=7, batch_size=batch_size),
                     LocalPlan(epochs=2.5, batch_size=batch_size)):
            bound = max_examples(plan, held)
            for rows in range(1, held + 1):
                steps = plan.num_steps(rows)
                visited = sum(len(b) for b in shuffled_batches(
                    rows, batch_size, steps, gen, torch.device("cpu")))
                assert visited <= bound, (held, rows, plan)
    assert max_examples(LocalPlan(steps=50, batch_size=32), 121) == 50 * 33
    assert max_examples(LocalPlan(steps=50, batch_size=1), 121) == 121, "batches of one"
    assert max_examples(LocalPlan(steps=5, batch_size=32), 20) == 5 * 32, "one batch: no merge"


def test_run_health_verdicts():
    health = RunHealth()
    for r in range(1, 9):
        health.record(r, None)
    assert health.verdict() == ("complete", "")
    health.record(9, "fewer valid updates than strategy.min_nodes = 3")
    assert health.verdict()[0] == "complete"  # one bad round of nine, not the last two
    health.record(10, "fewer valid updates than strategy.min_nodes = 3")
    status, reason = health.verdict()
    assert status == "degraded" and "2 of 10 rounds" in reason and "rounds 9, 10" in reason
    none = RunHealth()
    none.record(1, "x")
    assert none.verdict()[0] == "failed"


def _store_with_states(tmp_path, rounds=3):
    store = RunStore(tmp_path)
    run_id = store.start_run("t", {"run": {"rounds": 5}})
    for r in range(1, rounds + 1):
        path = store.write_state(run_id, r, {"params": torch.full((1000,), float(r))},
                                 {"kind": "coordinator-state"})
        store.record_round(run_id, RoundRecord(r, ["a"], [], 0.1, None, None, 0.1, 1, 1, 0, 0),
                           [], path)
    return store, run_id


def test_a_damaged_state_file_is_detected_and_the_previous_state_is_used(tmp_path):
    store, run_id = _store_with_states(tmp_path)
    newest = sorted((tmp_path / "checkpoints" / run_id).glob("state-*.safetensors"))[-1]
    data = bytearray(newest.read_bytes())
    data[-100:] = b"\x7f" * 100  # garbage over the payload, the header intact
    newest.write_bytes(bytes(data))
    round_, tensors, _ = store.latest_state(run_id)
    assert round_ == 2 and torch.equal(tensors["params"], torch.full((1000,), 2.0))
    # with both kept states damaged, resume is refused with one line naming the files
    older = sorted((tmp_path / "checkpoints" / run_id).glob("state-*.safetensors"))[0]
    older.write_bytes(older.read_bytes()[:50])  # truncated
    with pytest.raises(StoreError, match=r"no intact state .*state-00003.*SHA-256.*"
                                         r"state-00002.*SHA-256.*without --resume"):
        store.latest_state(run_id)


def test_a_full_disk_while_writing_state_is_one_line_and_loses_nothing(tmp_path):
    store, run_id = _store_with_states(tmp_path, rounds=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(StoreError, match=r"cannot write the resume state file .*"
                                             r"state-00002.*free space"):
            store.write_state(run_id, 2, {"params": torch.zeros(100_000)}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not list((tmp_path / "checkpoints" / run_id).glob("*.tmp"))
    round_, tensors, _ = store.latest_state(run_id)
    assert round_ == 1 and torch.equal(tensors["params"], torch.full((1000,), 1.0))


def test_a_damaged_run_store_is_one_line_for_every_command(tmp_path):
    store, _ = _store_with_states(tmp_path, rounds=1)
    store.close()
    db = tmp_path / "runs.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    data[4096:] = b"\x00\x13" * ((len(data) - 4096) // 2)  # every page after the first
    db.write_bytes(bytes(data))
    for args in (["runs"], ["show", "last"], ["export", "last", "--out", str(tmp_path / "x")]):
        out = subprocess.run([FEDTUNE, *args, "--workspace", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
        last = out.stderr.strip().splitlines()
        assert len(last) == 1 and last[0].startswith("error:") and "runs.sqlite" in last[0]


def test_checkpoints_are_verified_when_loaded(tmp_path):
    cfg = small_config(f"run.workspace=\"{tmp_path}\"", "run.checkpoint_every=1")
    fedtune.run(cfg)
    store = RunStore(tmp_path)
    params = store.load_checkpoint("last")
    assert params and all(torch.isfinite(t).all() for t in params.values())
    path = sorted((tmp_path / "checkpoints").rglob("round-*.safetensors"))[-1]
    data = bytearray(path.read_bytes())
    data[-8:] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="SHA-256"):
        store.load_checkpoint("last")


def test_serve_refuses_more_min_nodes_than_sites_with_tokens(tmp_path):
    from fedtune.runtime.grpc.security import make_certificates

    make_certificates(tmp_path / "pki", sites=["a", "b"], hosts=["127.0.0.1"])
    fed = Federation(tmp_path, config(min_nodes=3).replace(
        "insecure_no_auth = true", f"tokens = \"{tmp_path / 'pki' / 'tokens.toml'}\""))
    proc = fed.serve()
    proc.wait(timeout=120)
    assert proc.returncode == 2
    last = fed.log("serve").strip().splitlines()[-1]
    assert last.startswith("error: strategy.min_nodes = 3 but only 2 sites have a token")


def test_a_crashed_coordinator_resumes_with_plain_resume_and_its_sites_wait(tmp_path):
    """The state file of round 3 cannot be written (a directory stands in its way): serve
    stops with one line, the run is "crashed", the sites keep reconnecting, and plain
    `serve --resume` finishes the run with every round counted once."""
    fed = Federation(tmp_path, config(rounds=5, strategy="fedavg", epochs=20))
    try:
        fed.start(3)
        fed.wait_for_log("serve", "round 1:")
        store = RunStore(tmp_path / "ws")
        run_id = store.list_runs()[0]["run_id"]
        blocker = tmp_path / "ws" / "checkpoints" / run_id / "state-00003.tmp"
        blocker.mkdir(parents=True)
        fed.server.wait(timeout=240)
        assert fed.server.returncode == 2
        last = fed.log("serve").strip().splitlines()[-1]
        assert last.startswith("error: cannot write the resume state file") and \
            "--resume" in last
        assert store.list_runs()[0]["status"] == "crashed"
        assert all(p.poll() is None for p in fed.sites.values()), "sites stayed"
        blocker.rmdir()
        fed.serve("--resume")
        summary = json.loads(fed.finish())
        assert summary["status"] == "complete" and summary["rounds"] == 5
        assert all(p.returncode == 0 for p in fed.sites.values())
        data = store.load_run(run_id)
        assert [r["round"] for r in data["rounds"]] == [1, 2, 3, 4, 5]
        fits = [(n["round"], n["node_id"]) for n in data["node_metrics"] if n["phase"] == "fit"]
        assert len(fits) == len(set(fits)) == 15
    finally:
        fed.close()
