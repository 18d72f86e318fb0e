"""The membership-inference audit: its scores by hand, and `fedtune audit` on a stored run
that overfits (the attack finds it), kept in the store and shown by `fedtune show`."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from fedtune.config import load_config
from fedtune.experiment import run
from fedtune.privacy.audit import attack_scores, audit_run
from fedtune.privacy.audit_store import latest_overall, stored_audits
from fedtune.store import RunStore

from .conftest import FEDTUNE


def test_attack_scores_by_hand():
    assert attack_scores(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == (1.0, 1.0)
    auc, tpr = attack_scores(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert auc == 0.0 and tpr == 0.0
    # members 2, 4; non-members 1, 3: of the four pairs, three rank the member higher
    auc, _ = attack_scores(np.array([2.0, 4.0]), np.array([1.0, 3.0]))
    assert auc == pytest.approx(0.75)
    assert np.isnan(attack_scores(np.array([1.0]), np.array([]))[0])


OVERFIT = ['data.dataset="mnist1d"', "data.num_nodes=4", 'data.partition="iid"',
           "data.options={num_samples=2000}", "model.hidden=[256, 256]", "run.rounds=10",
           "local.epochs=5", "evaluation.personalize_steps=0", "energy.enabled=false"]


def test_an_overfit_model_leaks_membership_and_the_audit_is_stored(tmp_path):
    result = run(load_config(None, [*OVERFIT, f'run.workspace="{tmp_path}"']))
    store = RunStore(tmp_path)
    try:
        data = store.load_run(result.run_id)
        report = audit_run(data)
    finally:
        store.close()
    assert report["sites"] == 4 and len(report["per_site"]) == 8
    train = sum(len(n.y_train) for n in _sites(data))
    assert report["overall"]["loss"]["members"] == train
    assert report["overall"]["loss"]["auc"] > 0.6, "a model that overfits is found out"
    proc = subprocess.run([FEDTUNE, "audit", "last", "-w", str(tmp_path), "--output", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["overall"] == report["overall"], "the same attack, again"
    store = RunStore(tmp_path)
    try:
        overall = latest_overall(stored_audits(store, result.run_id))
    finally:
        store.close()
    assert overall["loss"]["auc"] == pytest.approx(report["overall"]["loss"]["auc"])
    shown = subprocess.run([FEDTUNE, "show", "last", "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})
    assert "membership audit (loss)" in shown.stdout


def _sites(data):
    from fedtune.config import config_from_dict
    from fedtune.tasks import build_task

    return list(build_task(config_from_dict(data["config"])).data.nodes)


def test_a_run_without_a_checkpoint_cannot_be_audited(tmp_path):
    run(load_config(None, ["run.rounds=1", "run.checkpoint_every=0",
                           f'run.workspace="{tmp_path}"']))
    proc = subprocess.run([FEDTUNE, "audit", "last", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run.checkpoint_every" in proc.stderr
