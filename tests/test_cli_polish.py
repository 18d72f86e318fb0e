"""The CLI's small honesty items: export anywhere, ignored settings said out loud, full run
ids, rounds counted once, names that say what ran, one spelling of the energy method, and
progress lines when stderr is not a terminal."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from .conftest import FEDTUNE


def fedtune(cwd, *args, env=None):
    return subprocess.run([FEDTUNE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    hybrid = fedtune(root, "run", "--set", "run.rounds=4", "--set", "strategy.count=50",
                     "--set", "data.central_fraction=0.2", "--set", "central.pretrain_steps=5",
                     "--set", 'data.dataset="wine"', "--set", "data.num_nodes=3")
    assert hybrid.returncode == 0, hybrid.stderr
    return root, hybrid


def test_progress_lines_and_the_count_warning(workspace):
    _, hybrid = workspace
    assert "round 4/4" in hybrid.stderr  # stderr is a pipe here, not a terminal
    line = next(x for x in hybrid.stderr.splitlines() if x.startswith("round 4/4"))
    assert " acc 0." in line and " MB " in line and line.endswith(" J")  # bytes, energy so far
    assert "strategy.count = 50 but 3 sites take part" in hybrid.stderr


def test_runs_lists_full_ids_and_counts_rounds_once(workspace):
    root, _ = workspace
    env = {**__import__("os").environ, "COLUMNS": "50"}
    listing = fedtune(root, "runs", env=env).stdout
    run_id = json.loads(fedtune(root, "export", "last").stdout)["run_id"]
    assert run_id in listing
    assert "4/4" in listing and "5/4" not in listing  # the pretraining round is round 0


def test_the_name_says_what_ran_and_the_energy_method_is_spelled_once(workspace):
    root, _ = workspace
    data = json.loads(fedtune(root, "export", "last", "--format", "json").stdout)
    assert data["name"] == "wine-noniid"
    db = sqlite3.connect(root / ".fedtune" / "runs.sqlite")
    methods = {m for (m,) in db.execute("SELECT DISTINCT energy_method FROM node_metrics "
                                        "WHERE run_id=?", (data["run_id"],))}
    assert len(methods) == 1, methods
    assert data["result"]["energy_method"] in methods


def test_export_to_a_folder_a_file_or_stdout(workspace, tmp_path):
    root, _ = workspace
    folder = fedtune(root, "export", "last", "--out", f"{tmp_path}/")
    assert folder.returncode == 0 and len(list(tmp_path.glob("*.json"))) == 1
    file = fedtune(root, "export", "last", "--out", str(tmp_path / "a" / "run.json"))
    assert file.returncode == 0 and (tmp_path / "a" / "run.json").is_file()
    csv = fedtune(root, "export", "last", "--format", "csv")
    assert csv.returncode == 2 and "give a folder with --out" in csv.stderr
    assert "Traceback" not in csv.stderr + folder.stderr + file.stderr


def test_unknown_dataset_options_are_refused(tmp_path):
    bad = fedtune(tmp_path, "run", "--set", "data.options={foo=1.0}")
    assert bad.returncode == 2
    assert "data.options has 'foo', which dataset 'digits' does not take" in bad.stderr


def test_a_negative_thread_count_is_a_usage_error(tmp_path):
    for command in ("run", "serve", "join"):
        bad = fedtune(tmp_path, command, "--threads", "-1")
        assert bad.returncode == 2, (command, bad.stderr)
        assert "'--threads'" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
