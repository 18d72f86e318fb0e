"""The bias audit of real sites: the sites' counts of (label, prediction, group value) give
the report the coordinator makes when it holds their data, by hand and over real gRPC; counts
that cannot be a site's leave it out with the reason."""

from __future__ import annotations

import json
import subprocess

import torch

from fedtune.config import load_config
from fedtune.equity.bias_audit import audit_model
from fedtune.equity.bias_counts import MAX_SITE_VALUES, audit_counts, site_counts
from fedtune.experiment import run
from fedtune.store import RunStore
from fedtune.tasks import build_task

from .conftest import FEDTUNE
from .deployment import Federation
from .test_pinned_runs import ALL_SITES, BASE, as_toml

AUDIT = ['data.dataset="breast_cancer"', "fairness.audit=true", "fairness.group_feature=0",
         "fairness.margin_pts=5"]


def _comparable(report):
    return {k: report.get(k) for k in ("rows", "accuracy_pts", "by_site", "by_class",
                                       "by_group", "flags")}


def test_counts_give_the_audit_of_the_rows_by_hand():
    task = build_task(load_config(None, [*AUDIT, "data.num_nodes=4"]))
    module = task.model_factory()
    ids = list(task.data.nodes.ids)
    direct = audit_model(module, task.data.nodes, ids, margin_pts=5, group_feature=0)
    tables = {}
    for node_id in ids:
        d = task.data.nodes.require(node_id)
        tables[node_id] = (site_counts(module, d.x_test, d.y_test, 0), int(d.x_test.shape[0]))
    assert _comparable(audit_counts(tables, classes=2, margin_pts=5, group_feature=0)) \
        == _comparable(direct)
    # a table by hand: 3 rows of (label 1, predicted 0, value 2.0) and 1 of (0, 0, NaN)
    x = torch.tensor([[2.0], [2.0], [2.0], [7.0]])
    y = torch.tensor([1, 1, 1, 0])
    constant = torch.nn.Sequential(torch.nn.Linear(1, 2))
    with torch.no_grad():
        constant[0].weight.zero_()
        constant[0].bias.copy_(torch.tensor([1.0, 0.0]))
    table = site_counts(constant, x, y, 0)
    assert table.tolist() == [[0.0, 0.0, 7.0, 1.0], [1.0, 0.0, 2.0, 3.0]]
    many = torch.arange(MAX_SITE_VALUES + 1, dtype=torch.float32)[:, None]
    assert torch.isnan(site_counts(constant, many, torch.zeros(len(many), dtype=torch.long),
                                   0)[:, 2]).all(), "a many-valued feature is not sent"


def test_counts_that_cannot_be_a_sites_leave_it_out():
    good = torch.tensor([[0.0, 0.0, 1.0, 6.0], [1.0, 1.0, 1.0, 6.0]], dtype=torch.float64)
    bad_label = good.clone()
    bad_label[0, 0] = 5
    short = good.clone()
    report = audit_counts({"a": (good, 12), "b": (bad_label, 12), "c": (short, 13)},
                          classes=2, margin_pts=5, group_feature=-1)
    assert set(report["by_site"]["entries"]) == {"a"}
    assert "site b left out: labels or predictions outside" in report["note"]
    assert "site c left out: 12 rows counted, 13 reported" in report["note"]


def test_a_served_run_is_audited_from_the_sites_counts_as_in_process(tmp_path):
    case = [*BASE, *ALL_SITES, *AUDIT]
    local = run(load_config(None, [*case, f'run.workspace="{tmp_path / "local"}"']))
    server = ['server.address="{address}"', "server.insecure_no_auth=true",
              "server.wait_for_sites_s=120"]
    fed = Federation(tmp_path, as_toml([*case, 'run.workspace="{workspace}"', *server]))
    try:
        fed.start(4)
        summary = json.loads(fed.finish())
    finally:
        fed.close()
    assert summary["status"] == "complete", fed.log()[-3000:]
    store = RunStore(tmp_path / "ws")
    try:
        remote = store.load_run("last")["result"]["extra"]["bias"]
    finally:
        store.close()
    mine = local.extra["bias"]
    assert remote["sites_reporting"] == 4 and "note" not in remote
    assert _comparable(remote) == _comparable(mine)
    assert set(remote["by_group"]["entries"]) == {"low", "high"}
    # every round audited, over gRPC from the sites' counts (rounds 1 and 2 each one
    # evaluation exchange, round 3 the final evaluation's): the figures of one process
    assert len(mine["per_round"]) == 3 and remote["per_round"] == mine["per_round"]
    assert all(row["site_gap_pts"] is not None for row in remote["per_round"])
    again = subprocess.run([FEDTUNE, "audit", "last", "--bias", "-w", str(tmp_path / "ws")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "served to real sites" in again.stderr
    assert "Traceback" not in again.stderr
