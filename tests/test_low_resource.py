"""Low-resource sites: a site's step budget and its own uplink compression hold in every
round of a real stored run (read back from the SQLite ledger), partial work is normalised as
FedNova does, and a budget for a site that does not exist is refused by name."""

from __future__ import annotations

import pytest
import torch

from fedtune.algorithms.compression import CompressionSpec, compress
from fedtune.config import load_config
from fedtune.equity.low_resource import HEADER_BYTES, encode, entry, fitted_uplinks, upload_bound
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


def test_the_upload_bound_holds_for_any_update():
    gen = torch.Generator().manual_seed(0)
    n = 9610
    for spec in ("", "q8", "fp16", "topk:0.02+q8", "topk:0.001+q8", "topk:0.3", "randk:0.1+q4"):
        parsed = CompressionSpec.parse(spec) if spec else CompressionSpec()
        for x in (torch.randn(n, generator=gen), torch.zeros(n).index_fill_(0, torch.tensor(
                [0, n - 1]), 1.0)):  # spread out, and the widest gaps
            packed = compress(x, parsed, seed=1) if spec else {"values": x}
            size = sum(t.numel() * t.element_size() for t in packed.values())
            assert size <= upload_bound(spec, n) - HEADER_BYTES, spec


def test_a_slow_link_gets_the_compression_that_fits_its_upload_budget(tmp_path):
    links = {"node-1": 0.1, "node-2": 100.0}  # Mbit/s: 2,500 and 2.5 MB in 0.2 s
    assert fitted_uplinks(links, 0.2, 9610, given={}, default="", block=256).keys() == {"node-1"}
    assert fitted_uplinks(links, 0.2, 9610, given={"node-1": "q8"}, default="", block=256) == {}
    cfg = small_config(f'run.workspace="{tmp_path}"', "energy.enabled=false",
                       'fairness.site_link_mbps={"node-1" = 0.1, "node-2" = 100.0}',
                       "fairness.upload_budget_s=0.2")
    result = run(cfg)
    sites = result.extra["resources"]["sites"]
    assert sites["node-1"]["uplink_fitted"] and sites["node-1"]["uplink"].startswith("topk:")
    assert not sites["node-2"]["uplink_fitted"] and sites["node-2"]["uplink"] is None
    store = RunStore(tmp_path)
    try:
        fit = [r for r in store.load_run(result.run_id)["node_metrics"] if r["phase"] == "fit"]
    finally:
        store.close()
    assert len(fit) == 12
    for r in fit:
        seconds = r["bytes_up"] * 8 / (links.get(r["node_id"], 1.0) * 1e6)
        if r["node_id"] == "node-1":
            assert seconds <= 0.2
        else:
            assert r["bytes_up"] > 9610 * 4, "the others send dense updates"
    assert result.final_test_accuracy > 0.3
    with pytest.raises(ConfigError, match="cannot carry even one value"):
        run(small_config('fairness.site_link_mbps={"node-1" = 0.001}',
                         "fairness.upload_budget_s=0.01"), store=False)
    with pytest.raises(ConfigError, match=r"declare them in fairness\.site_link_mbps"):
        small_config("fairness.upload_budget_s=1")


def test_budgets_for_hundreds_of_sites_travel_in_one_instruction():
    from fedtune.equity.low_resource import ResourcePart
    from fedtune.node.instructions import as_text
    from fedtune.types import FitIns
    from fedtune.wire import decode
    from fedtune.wire import encode as wire_encode

    sites = [f"clinic-{i:03d}" for i in range(300)]
    part = ResourcePart({s: 3 for s in sites}, {s: "topk:0.5373+q8" for s in sites}, {})
    ins = FitIns(1, torch.zeros(10), {}, part.instruction_aux(None))
    back = decode(wire_encode(ins))  # the coordinator's message as a site decodes it
    assert entry(as_text(back.aux["site_steps"]), "clinic-299") == "3"
    assert entry(as_text(back.aux["site_uplink"]), "clinic-000") == "topk:0.5373+q8"
    assert len(as_text(back.aux["site_uplink"])) > 512 * 10


def test_low_resource_sites_over_grpc_as_in_process(tmp_path):
    from .deployment import run_with_tokens
    from .test_pinned_runs import ALL_SITES, BASE, as_toml, fingerprint

    case = [*BASE, *ALL_SITES, 'fairness.site_steps={"node-2" = 1}',
            'fairness.site_link_mbps={"node-1" = 0.1}', "fairness.upload_budget_s=0.2"]
    local = run(load_config(None, [*case, f'run.workspace="{tmp_path / "local"}"']))
    assert local.extra["resources"]["sites"]["node-1"]["uplink_fitted"]
    run_with_tokens(tmp_path, as_toml, case, [f"node-{i}" for i in range(4)])
    assert fingerprint(tmp_path / "ws") == fingerprint(tmp_path / "local")
