"""Privacy over real gRPC with four site processes: distributed client-level DP (sites with
certificates and tokens clip and noise their own updates, with adaptive clipping or summed
under secure aggregation's masks), and secure aggregation recovering 10 % and 30 % dropouts;
every run ends on the in-process run's model."""

from __future__ import annotations

import math

import pytest

from fedtune.config import load_config
from fedtune.experiment import run
from fedtune.store import RunStore

from .deployment import Federation, run_with_tokens
from .test_pinned_runs import BASE, CASES, as_toml, expected, fingerprint


@pytest.mark.parametrize("name", ["all-dp-distributed-adaptive", "all-secagg-dp"])
def test_distributed_dp_over_grpc_matches_the_in_process_pin(tmp_path, name):
    run_with_tokens(tmp_path, as_toml, [*BASE, *CASES[name]], [f"node-{i}" for i in range(4)])
    assert fingerprint(tmp_path / "ws") == expected(name, tmp_path), \
        (tmp_path / "serve.log").read_text()[-3000:]
    store = RunStore(tmp_path / "ws")
    try:
        run = store.load_run("last")
    finally:
        store.close()
    eps = [r["epsilon"] for r in run["rounds"] if r["round"] > 0]
    assert len(eps) == 3 and eps == sorted(eps) and eps[0] > 0


@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_secure_aggregation_over_grpc_recovers_dropouts_as_in_process(tmp_path, dropout):
    """10 % and 30 % of four sites (rounded up: one and two) drop after sharing their keys;
    the sum is exact in the ring, so the run ends on the same model as in one process."""
    case = [*BASE, 'strategy.mode="secagg"', f"secagg.simulated_dropout={dropout}",
            "strategy.fraction=1.0", "strategy.min_nodes=4"]
    local = run(load_config(None, [*case, f'run.workspace="{tmp_path / "local"}"']))
    assert local.status == "complete"
    assert all(len(r.nodes) == 4 - math.ceil(dropout * 4) for r in local.rounds)
    fed = Federation(tmp_path, as_toml([*case, 'run.workspace="{workspace}"',
                                        'server.address="{address}"',
                                        "server.insecure_no_auth=true",
                                        "server.wait_for_sites_s=120"]))
    try:
        fed.start(4)
        fed.finish()
    finally:
        fed.close()
    assert fingerprint(tmp_path / "ws") == fingerprint(tmp_path / "local"), fed.log()[-3000:]
