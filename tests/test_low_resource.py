"""Low-resource sites: a site's step budget and its own uplink compression hold in every
round of a real stored run (read back from the SQLite ledger), partial work is normalised as
FedNova does, and a budget for a site that does not exist is refused by name."""

from __future__ import annotations

import pytest

from fedtune.equity.low_resource import encode, entry
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.store import RunStore

from .conftest import small_config


def test_the_per_site_strings():
    text = encode({"node-3": 5, "clinic a": "topk:0.1+q8"})
    assert text == "clinic a=topk:0.1+q8,node-3=5"
    assert entry(text, "node-3") == "5" and entry(text, "clinic a") == "topk:0.1+q8"
    assert entry(text, "node-1") is None and entry("", "node-1") is None


def test_a_budget_and_a_slow_link_hold_every_round(tmp_path):
    cfg = small_config(f'run.workspace="{tmp_path}"', "energy.enabled=false",
                       'fairness.site_steps={"node-2" = 1}',
                       'fairness.site_uplink={"node-1" = "topk:0.05+q8"}',
                       'fairness.site_link_mbps={"node-1" = 0.5}')
    result = run(cfg)
    assert result.extra["resources"]["normalized_by_steps"] is True
    store = RunStore(tmp_path)
    try:
        fit = [r for r in store.load_run(result.run_id)["node_metrics"] if r["phase"] == "fit"]
    finally:
        store.close()
    by = {(r["round"], r["node_id"]): r for r in fit}
    for round_ in (1, 2, 3):
        assert by[round_, "node-2"]["steps"] == 1 < by[round_, "node-0"]["steps"]
        assert by[round_, "node-1"]["bytes_up"] * 5 < by[round_, "node-0"]["bytes_up"]
    assert result.final_test_accuracy > 0.3  # the round still learns


def test_a_budget_for_an_unknown_site_is_refused_by_name():
    with pytest.raises(ConfigError, match="'clinic-z', which is not a site"):
        run(small_config('fairness.site_steps={"clinic-z" = 3}'), store=False)
    with pytest.raises(ConfigError, match="site_uplink"):
        small_config('fairness.site_uplink={"node-1" = "zip:9"}')
