"""Contribution scores over real gRPC: four site processes with certificates and tokens (the
coordinator knows every site from its tokens), the same scores as the in-process run."""

from __future__ import annotations

import json

import pytest

from fedtune.config import load_config
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.store import RunStore

from .deployment import run_with_tokens
from .test_pinned_runs import ALL_SITES, BASE, as_toml

CASE = [*BASE, *ALL_SITES, 'fairness.contribution="gtg"']


def test_gtg_shapley_over_grpc_scores_as_in_process(tmp_path):
    local = run(load_config(None, [*CASE, f'run.workspace="{tmp_path / "local"}"']))
    sites = [f"node-{i}" for i in range(4)]
    summary = json.loads(run_with_tokens(tmp_path, as_toml, CASE, sites))
    assert summary["status"] == "complete"
    store = RunStore(tmp_path / "ws")
    try:
        remote = store.load_run("last")["result"]["extra"]["contribution"]
    finally:
        store.close()
    mine = local.extra["contribution"]
    assert remote["method"] == mine["method"] == "gtg"
    assert set(remote["sites"]) == set(sites)
    for site in sites:
        assert remote["sites"][site]["per_round"] == pytest.approx(
            mine["sites"][site]["per_round"], abs=1e-9)
        assert remote["sites"][site]["rounds"] == 3


def test_without_tokens_the_sites_cannot_be_known_and_the_run_is_refused():
    from fedtune.experiment import serve

    with pytest.raises(ConfigError, match=r"fairness\.contribution .*server\.tokens"):
        serve(load_config(None, ['fairness.contribution="gtg"', "server.insecure_no_auth=true",
                                 'server.address="127.0.0.1:0"']))
