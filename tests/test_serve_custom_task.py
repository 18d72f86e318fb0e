"""`fedtune serve --task` serves a custom task to sites that join with the same --task, and
gives the numbers the same task gives in simulation."""

from __future__ import annotations

import json

from fedtune.config import load_config
from fedtune.experiment import run

from .conftest import ROOT
from .custom_task_module import build
from .deployment import Federation

CONFIG = """
[run]
rounds = 3
workspace = "{workspace}"
[strategy]
name = "fedprox"
min_nodes = 3
[evaluation]
personalize_steps = 0
[server]
address = "{address}"
insecure_no_auth = true
wait_for_sites_s = 120
"""
TASK = "tests.custom_task_module:build"


def test_serve_a_custom_task(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the sites and the server import the task
    fed = Federation(tmp_path, CONFIG)
    try:
        fed.serve("--task", TASK)
        for i in range(3):
            fed.join(f"clinic-{i}", "--task", TASK)
        summary = json.loads(fed.finish())
    finally:
        fed.close()
    cfg = load_config(fed.config, [f'run.workspace="{tmp_path / "sim"}"'])
    sim = run(cfg, task=build(cfg), store=False)
    assert summary["test_loss"] == sim.final_test_loss
    assert summary["status"] == "complete"
