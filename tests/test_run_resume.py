"""`fedtune run --resume`: a simulation stopped by Ctrl-C (or killed) continues from its last
completed round and ends bitwise where an uninterrupted run ends, node state included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fedtune.store import RunStore

from .conftest import FEDTUNE

# SCAFFOLD with compression and error feedback: the nodes keep state between rounds
SETTINGS = ["--set", "run.rounds=40", "--set", 'strategy.name="scaffold"',
            "--set", 'compression.uplink="topk:0.2"', "--set", "run.checkpoint_every=40",
            "--set", "energy.enabled=false", "--set", "evaluation.personalize_steps=2"]


WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])")


def final(workspace):
    store = RunStore(workspace)
    try:
        data = store.load_run("last")
    finally:
        store.close()
    return data, load_file(data["checkpoints"][-1]["path"])


def wait_for_rounds(workspace, count, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        db = workspace / "runs.sqlite"
        if db.exists():
            store = RunStore(workspace)
            try:
                runs = store.list_runs()
            finally:
                store.close()
            if runs and runs[-1]["rounds_done"] >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached round {count}")


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_an_interrupted_run_resumes_bitwise(tmp_path, how):
    whole = subprocess.run([FEDTUNE, "run", *SETTINGS, "--set", f'run.workspace="{tmp_path / "a"}"',
                            "--quiet"], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    ws = tmp_path / "b"
    # Ctrl-C's default action, even when this test runs in a background job (a shell starts
    # those with SIGINT ignored, and an ignored signal stays ignored across exec)
    proc = subprocess.Popen([sys.executable, "-c", WITH_SIGINT, FEDTUNE, "run", *SETTINGS,
                             "--set", f'run.workspace="{ws}"', "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rounds(ws, 3, proc)
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    if how == "ctrl-c":
        assert proc.returncode == 130
        assert "continue it with `fedtune run --resume --run" in stderr
        assert "Traceback" not in stderr
        store = RunStore(ws)
        assert store.list_runs()[-1]["status"] == "interrupted"
        store.close()
    resumed = subprocess.run([FEDTUNE, "run", "--resume", "--set",
                              f'run.workspace="{ws}"', "--output", "json", "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, params_a = final(tmp_path / "a")
    b, params_b = final(ws)
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    assert [(r["round"], r["train_loss"], r["test_accuracy"]) for r in a["rounds"]] == \
        [(r["round"], r["train_loss"], r["test_accuracy"]) for r in b["rounds"]]
    assert a["node_evals"] == b["node_evals"]
    assert json.loads(resumed.stdout)["status"] == "complete"
