"""Attacks over real gRPC are a red-team exercise: a named site started with ``--red-team``
attacks and the run ends on the in-process attacked run's numbers; a named site started
without it refuses every round that names it, with the reason; what cannot run is refused."""

from __future__ import annotations

import json

import pytest

from fedtune.config import load_config
from fedtune.errors import ConfigError
from fedtune.experiment import run, serve
from fedtune.store import RunStore

from .deployment import Federation
from .test_pinned_runs import ALL_SITES, BASE, as_toml, fingerprint

ATTACK = ['attack.kind="sign_flip"', "attack.scale=4.0", 'attack.sites=["node-1"]']
SERVER = ['server.address="{address}"', "server.insecure_no_auth=true",
          "server.wait_for_sites_s=120"]


def _ledger(workspace):
    store = RunStore(workspace)
    try:
        return store.load_run("last")
    finally:
        store.close()


def _federation(tmp_path, red_team: bool) -> tuple[dict, Federation]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    fed = Federation(tmp_path, as_toml([*BASE, *ALL_SITES, *ATTACK,
                                        'run.workspace="{workspace}"', *SERVER]))
    try:
        fed.serve()
        for i in range(4):
            flag = ["--red-team"] if red_team and i == 1 else []
            fed.join(f"node-{i}", *flag)
        summary = json.loads(fed.finish())
    finally:
        fed.close()
    return summary, fed


def test_a_red_team_site_attacks_over_grpc_as_in_process(tmp_path):
    local = run(load_config(None, [*BASE, *ALL_SITES, *ATTACK,
                                   f'run.workspace="{tmp_path / "local"}"']))
    assert local.extra["attack"] == {"kind": "sign_flip", "sites": ["node-1"]}
    summary, fed = _federation(tmp_path / "grpc", red_team=True)
    assert summary["status"] == "complete", fed.log()[-3000:]
    assert fingerprint(tmp_path / "grpc" / "ws") == fingerprint(tmp_path / "local")
    fits = [r for r in _ledger(tmp_path / "grpc" / "ws")["node_metrics"] if r["phase"] == "fit"]
    assert {r["node_id"]: r["attack"] for r in fits} == {
        "node-0": "", "node-1": "sign_flip", "node-2": "", "node-3": ""}


def test_a_named_site_without_the_flag_refuses_to_attack(tmp_path):
    summary, fed = _federation(tmp_path, red_team=False)
    rows = _ledger(tmp_path / "ws")["node_metrics"]
    refused = [r for r in rows if r["node_id"] == "node-1" and r["phase"] == "failed"]
    assert len(refused) == 3, "every round names node-1, and it refuses every one"
    assert all("not started as a red-team site" in r["energy_method"] for r in refused)
    assert not [r for r in rows if r["node_id"] == "node-1" and r["phase"] == "fit"]
    assert "refuses the round" in fed.log("node-1")
    assert summary["rounds"] == 3


@pytest.mark.parametrize(("extra", "match"), [
    (['attack.kind="alie"', 'attack.sites=["node-1"]'], "crafted by the coordinator"),
    (['attack.kind="sign_flip"'], r"name the attacking sites in attack\.sites"),
])
def test_what_cannot_run_over_grpc_is_refused_by_name(extra, match):
    with pytest.raises(ConfigError, match=match):
        serve(load_config(None, extra))
