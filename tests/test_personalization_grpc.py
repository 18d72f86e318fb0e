"""Personal parts over gRPC: kept in the site's state file, back after a site restart, and
never sent."""

from __future__ import annotations

import json
import os
import shutil
import signal

import torch

from fedtune.store import RunStore

from .deployment import Federation

CONFIG = """
[run]
rounds = 3
workspace = "{workspace}"
[data]
num_nodes = 3
[strategy]
min_nodes = 3
[local]
epochs = 150  # a round long enough that the kill lands inside it
[personalization]
method = "fedper"
[server]
address = "{address}"
insecure_no_auth = true
wait_for_sites_s = 120
"""


def test_a_restarted_site_gets_its_personal_head_back(tmp_path):
    fed = Federation(tmp_path, CONFIG)
    states = tmp_path / "states"
    try:
        fed.start(3, "--state-dir", str(states))
        fed.wait_for_log("serve", "round 1:")
        os.kill(fed.sites["node-2"].pid, signal.SIGKILL)
        fed.sites["node-2"].wait()
        kept = tmp_path / "at-kill.pt"
        shutil.copy(states / "node-2.state.pt", kept)
        fed.wait_for_log("serve", "dropped node node-2")
        fed.join("node-2", "--state-dir", str(states))
        summary = json.loads(fed.finish())
    finally:
        fed.close()
    # the round the site was killed in had too few updates: the run says so
    assert summary["status"] in ("complete", "degraded") and summary["rounds"] == 3
    assert "restored node state" in fed.log("node-2")
    at_kill = torch.load(kept, weights_only=True)["state"]["personal"]["local"]
    final = torch.load(states / "node-2.state.pt", weights_only=True)
    assert final["last_fit_round"] == 3
    # its round-3 fit started from the head it had when it was killed, not a fresh one
    assert torch.equal(final["before"]["personal"]["local"], at_kill)
    assert not torch.equal(final["state"]["personal"]["local"], at_kill)
    data = RunStore(tmp_path / "ws").load_run("last")
    personal = data["result"]["extra"]["personal"]
    assert personal["method"] == "fedper" and personal["sites"] == 3
