"""The run store (round trip, killed runs, exports) and the CLI (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedtune.errors import StoreError
from fedtune.experiment import run
from fedtune.store import RunStore

from .conftest import FEDTUNE, small_config


def _fedtune(*args, cwd, env=None, timeout=300):
    return subprocess.run([FEDTUNE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_store_round_trip_and_checkpoints(tmp_path):
    ws = tmp_path / "ws"
    cfg = small_config(f"run.workspace=\"{ws}\"", "run.rounds=4", "run.checkpoint_every=2")
    result = run(cfg)
    store = RunStore(ws)
    data = store.load_run(result.run_id)
    assert data["status"] == "complete"
    assert data["config"]["run"]["rounds"] == 4
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3, 4]
    assert data["rounds"][-1]["test_accuracy"] == pytest.approx(result.final_test_accuracy)
    assert sum(r["bytes_up"] for r in data["rounds"]) + sum(
        n["bytes_up"] for n in data["node_metrics"] if n["phase"] == "evaluate"
    ) == result.total_bytes_up
    fit_rows = [n for n in data["node_metrics"] if n["phase"] == "fit"]
    assert len(fit_rows) == 4 * 4 and all(n["bytes_down"] > 0 and n["cpu_s"] >= 0 for n in fit_rows)
    assert len(data["node_evals"]) == 4
    assert [c["round"] for c in data["checkpoints"]] == [2, 4]
    tensors = load_file(data["checkpoints"][-1]["path"])
    assert set(tensors) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert store.resolve("last") == result.run_id
    with pytest.raises(StoreError, match="fedtune runs"):
        store.resolve("nope")
    json_path = tmp_path / "run.json"
    store.export(result.run_id, "json", json_path)
    assert json.loads(json_path.read_text())["run_id"] == result.run_id
    csvs = store.export(result.run_id, "csv", tmp_path / "csv")
    assert len(csvs) == 3 and all(p.stat().st_size > 0 for p in csvs)


def test_killed_run_leaves_readable_store(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [FEDTUNE, "run", "--quiet", "--set", f"run.workspace=\"{ws}\"", "--set",
         "run.rounds=100000", "--set", "run.checkpoint_every=1", "--set", "data.num_nodes=3"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = ws / "runs.sqlite"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and done < 3:
        time.sleep(0.2)
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    done = con.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done >= 3
    store = RunStore(ws)
    (listed,) = store.list_runs()
    assert listed["status"] == "incomplete"
    data = store.load_run("last")
    assert len(data["rounds"]) >= 3 and data["result"] is None
    assert all(Path(c["path"]).exists() for c in data["checkpoints"])
    shown = _fedtune("show", "last", "--workspace", str(ws), cwd=tmp_path)
    assert shown.returncode == 0 and "incomplete" in shown.stdout
    listed_cli = _fedtune("runs", "--workspace", str(ws), cwd=tmp_path)
    assert "incomplete" in listed_cli.stdout


def test_cli_run_json_and_listing(tmp_path):
    proc = _fedtune("run", "--output", "json", "--quiet", "--set", "run.rounds=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "complete" and out["rounds"] == 3
    assert out["bytes_up"] > 0 and out["energy_j"] > 0 and out["co2_g"] > 0
    assert (tmp_path / ".fedtune" / "runs.sqlite").exists()
    table = _fedtune("run", "--set", "run.rounds=2", cwd=tmp_path)
    assert table.returncode == 0 and "central test accuracy" in table.stdout
    runs = _fedtune("runs", cwd=tmp_path)
    assert runs.stdout.count("complete") == 2
    for cmd in ("strategies", "datasets"):
        listing = _fedtune(cmd, cwd=tmp_path)
        assert listing.returncode == 0
    assert "scaffold" in _fedtune("strategies", cwd=tmp_path).stdout


CLI_ERRORS = [
    (["run", "--set", "strategy.nme=1"], "strategy.nme"),
    (["run", "--set", "strategy.name=\"fedmagic\""], "fedavg"),
    (["run", "--set", "strategy.fraction=1.5"], "strategy.fraction"),
    (["run", "--set", "data.num_nodes=5000"], "data.num_nodes"),
    (["run", "--set", "local.lr=\"fast\""], "local.lr"),
    (["run", "missing.toml"], "missing.toml"),
    (["run", "--set", "nosection=1"], "section.key"),
    (["show", "abc"], "no run store"),
]


@pytest.mark.parametrize(("args", "named"), CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, named):
    proc = _fedtune(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nrounds = = 3\n")
    proc = _fedtune("run", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr
    good = tmp_path / "good.toml"
    good.write_text("[run]\nrounds = 2\n[strategy]\nname = \"fedprox\"\n")
    proc = _fedtune("run", str(good), "--quiet", "--output", "json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["rounds"] == 2


def test_config_names_match_the_registries_and_validation_skips_torch():
    from fedtune import catalog
    from fedtune.algorithms.strategy import STRATEGIES
    from fedtune.data.datasets import DATASETS
    from fedtune.data.partition import PARTITIONERS

    assert set(catalog.STRATEGY_NAMES) == set(STRATEGIES)
    assert set(catalog.DATASET_NAMES) == set(DATASETS)
    assert set(catalog.PARTITION_NAMES) == set(PARTITIONERS)
    code = ("import sys, fedtune.config as c; c.load_config(None, ['strategy.name=fedprox']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stored_rounds_read_back_with_their_node_names(tmp_path):
    """What a resumed run carries for the rounds before the crash."""
    result = run(small_config(f"run.workspace=\"{tmp_path}\"", "strategy.fraction=0.5"))
    stored = RunStore(tmp_path).round_records(result.run_id)
    assert [r.nodes for r in stored] == [r.nodes for r in result.rounds]
    assert [r.failed for r in stored] == [r.failed for r in result.rounds]
    assert all(len(r.nodes) == 2 for r in stored)
