"""Contribution scores over real gRPC: four site processes with certificates and tokens (the
coordinator knows every site from its tokens), the same scores as the in-process run."""

from __future__ import annotations

import json

import pytest

from fedtune.config import load_config
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.runtime.grpc.security import make_certificates
from fedtune.store import RunStore

from .deployment import Federation
from .test_pinned_runs import ALL_SITES, BASE, as_toml

CASE = [*BASE, *ALL_SITES, 'fairness.contribution="gtg"']


def test_gtg_shapley_over_grpc_scores_as_in_process(tmp_path):
    local = run(load_config(None, [*CASE, f'run.workspace="{tmp_path / "local"}"']))
    sites = [f"node-{i}" for i in range(4)]
    pki = tmp_path / "pki"
    make_certificates(pki, sites=sites, hosts=["127.0.0.1"])
    server = ['server.address="{address}"', f'server.tls_cert="{pki / "coordinator.pem"}"',
              f'server.tls_key="{pki / "coordinator.key"}"',
              f'server.client_ca="{pki / "ca.pem"}"', f'server.tokens="{pki / "tokens.toml"}"',
              "server.wait_for_sites_s=120"]
    fed = Federation(tmp_path, as_toml([*CASE, 'run.workspace="{workspace}"', *server]))
    try:
        fed.serve()
        for site in sites:
            fed.join(site, "--ca", str(pki / "ca.pem"), "--cert", str(pki / f"{site}.pem"),
                     "--key", str(pki / f"{site}.key"),
                     "--token", (pki / f"{site}.token").read_text().strip())
        summary = json.loads(fed.finish())
    finally:
        fed.close()
    assert summary["status"] == "complete", fed.log()[-3000:]
    store = RunStore(fed.root / "ws")
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
