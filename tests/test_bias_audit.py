"""The hidden-bias audit: gaps, parity and odds differences computed by hand, group labels,
every round of a real run, and ``fedtune audit RUN --bias`` on a stored run (real
subprocess, real SQLite), shown by ``fedtune show``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from fedtune.equity.bias_audit import bias_report, group_labels
from fedtune.errors import ConfigError
from fedtune.experiment import run

from .conftest import FEDTUNE, small_config


def test_the_audit_by_hand():
    # site a: 5 of each class, all right. Site b: 5 of each class, all predicted 1.
    y_true = np.array([0] * 5 + [1] * 5 + [0] * 5 + [1] * 5)
    y_pred = np.array([0] * 5 + [1] * 5 + [1] * 10)
    sites = np.array(["a"] * 10 + ["b"] * 10)
    r = bias_report(y_true, y_pred, sites, None, margin_pts=10.0)
    s = r["by_site"]
    assert s["entries"]["a"]["accuracy_pts"] == 100 and s["entries"]["b"]["accuracy_pts"] == 50
    assert s["entries"]["b"]["gap_pts"] == 25 and s["flagged"] == ["b"] and s["worst"] == "b"
    # predicting 1: rate 0.5 at a, 1.0 at b; true positives 1 and 1, false positives 0 and 1
    assert s["demographic_parity_diff"] == pytest.approx(0.5)
    assert s["equalized_odds_diff"] == pytest.approx(1.0)
    c = r["by_class"]  # class 0 is right 5 of 10 times, class 1 always
    assert c["entries"]["0"]["accuracy_pts"] == 50 and c["flagged"] == ["0"]
    assert r["flags"] == ["site b", "class 0"] and r["accuracy_pts"] == 75
    fair = bias_report(y_true, y_true, sites, None, margin_pts=10.0)
    assert fair["flags"] == [] and fair["by_site"]["equalized_odds_diff"] == 0


def test_rates_need_enough_rows_of_a_class_at_each_entry():
    y_true = np.array([0] * 8 + [1] * 2 + [0] * 5 + [1] * 5)  # site a: two of class 1
    y_pred = np.array([0] * 8 + [0] * 2 + [0] * 5 + [1] * 5)
    r = bias_report(y_true, y_pred, np.array(["a"] * 10 + ["b"] * 10), None, margin_pts=50)
    assert r["by_site"]["equalized_odds_diff"] is None  # a TPR from 2 rows: not compared


def test_group_labels():
    assert list(group_labels(np.array([0.0, 1.0, 1.0]))) == ["0", "1", "1"]
    assert list(group_labels(np.arange(20.0))[[0, 19]]) == ["low", "high"]


def test_every_round_is_audited_and_the_summary_says_what_it_found():
    cfg = small_config('data.dataset="breast_cancer"', "fairness.audit=true",
                       "fairness.group_feature=0", "energy.enabled=false")
    result = run(cfg, store=False)
    bias = result.extra["bias"]
    assert len(bias["per_round"]) == 3 and set(bias["by_group"]["entries"]) == {"low", "high"}
    assert set(bias["by_site"]["entries"]) == {f"node-{i}" for i in range(4)}
    assert 0 <= bias["by_site"]["demographic_parity_diff"] <= 1
    with pytest.raises(ConfigError, match="group_feature = 99"):
        run(small_config('data.dataset="breast_cancer"', "fairness.audit=true",
                         "fairness.group_feature=99"), store=False)


def test_audit_every_n_rounds_audits_those_rounds_only():
    cfg = small_config('data.dataset="breast_cancer"', "fairness.audit=true", "run.rounds=5",
                       "fairness.audit_every=2", "energy.enabled=false")
    bias = run(cfg, store=False).extra["bias"]
    rows = bias["per_round"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5] and bias["audit_every"] == 2
    assert [r["site_gap_pts"] is not None for r in rows] == [False, True, False, True, False]
    every = run(small_config('data.dataset="breast_cancer"', "fairness.audit=true",
                             "run.rounds=5", "energy.enabled=false"), store=False).extra["bias"]
    assert [rows[i] for i in (1, 3)] == [every["per_round"][i] for i in (1, 3)]
    assert "by_site" in bias  # the final model is audited in the summary all the same


def test_fedtune_audit_bias_on_a_stored_run(tmp_path):
    done = subprocess.run([FEDTUNE, "run", "--set", "run.rounds=3", "--set",
                           f'run.workspace="{tmp_path}"', "--set", "run.checkpoint_every=3",
                           "--set", "fairness.margin_pts=5", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    proc = subprocess.run([FEDTUNE, "audit", "last", "--bias", "-w", str(tmp_path), "--output",
                           "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["checkpoint_round"] == 3 and report["margin_pts"] == 5
    assert len(report["by_site"]["entries"]) == 10 and len(report["by_class"]["entries"]) == 10
    shown = subprocess.run([FEDTUNE, "show", "last", "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=300, env={
                               "COLUMNS": "200", "PATH": ""})
    assert "bias audit" in shown.stdout and "site accuracy gap" in shown.stdout
    missing = subprocess.run([FEDTUNE, "audit", "nope", "--bias", "-w", str(tmp_path)],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "nope" in missing.stderr
    assert "Traceback" not in missing.stderr
