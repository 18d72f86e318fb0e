"""Pinned runs: every strategy and round variant ends on the exact same model as before.

Each case runs a small federation in one process and hashes what it produced: the final
global model's bytes (its checkpoint), each round's losses and accuracy and nodes, and each
node's final evaluation. The hashes in ``pinned_runs.json`` were written by the code before
the round was split into parts; a refactor that changes any number, however small, fails
here. A deliberate change of numbers regenerates the file with
``FEDTUNE_REPIN=1 pytest tests/test_pinned_runs.py`` and says why in its commit.

Two cases also run over gRPC (real site processes on loopback) and one on Ray, and must hit
the same hashes: runtimes move bytes, not meaning.

Floating-point results depend on the CPU's vector units (a machine with AVX-512 and AMX
rounds matrix products differently from one with AVX2 alone), so the pins are kept per
family of machines: the family whose ``fedavg`` pin this machine's fedavg run reproduces. On
a machine of no pinned family the in-process cases must repeat exactly instead, and the Ray
and gRPC cases must equal an in-process run made here.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedtune.config import load_config
from fedtune.experiment import run
from fedtune.store import RunStore

PINS = Path(__file__).with_name("pinned_runs.json")
BASE = ["run.rounds=3", "data.num_nodes=4", "evaluation.personalize_steps=2",
        "run.checkpoint_every=3", "energy.enabled=false", "strategy.fraction=0.75"]
CASES: dict[str, list[str]] = {
    **{name: [f'strategy.name="{name}"'] for name in (
        "fedavg", "fedavgm", "fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad",
        "fednova", "diloco")},
    "fedavg-uniform": ['strategy.weighting="uniform"'],
    "fedavg-median": ['strategy.aggregator="median"', "strategy.fraction=1.0"],
    "fedavg-trimmed": ['strategy.aggregator="trimmed_mean"', "strategy.trim=0.25",
                       "strategy.fraction=1.0"],
    "fedavg-topk-q8-ef": ['compression.uplink="topk:0.1+q8"', "compression.error_feedback=true"],
    "fedavg-randk-noef": ['compression.uplink="randk:0.2"', "compression.error_feedback=false"],
    "fedavg-downlink-q8": ['compression.downlink="q8"'],
    "fednova-steps": ['strategy.name="fednova"', "local.epochs=2", "data.partition=\"dirichlet\""],
    "hybrid-central": ["data.central_fraction=0.2", "central.pretrain_steps=20",
                       "central.steps_between_rounds=5"],
    "async": ['strategy.mode="async"', "strategy.async_buffer=2",
              "strategy.async_concurrency=3", "runtime.simulated_speed_skew=1.0"],
    "clip-adamw": ['local.optimizer="adamw"', "local.max_grad_norm=0.5",
                   "local.weight_decay=0.01"],
}
# every site in every round, so that a gRPC round never starts before all four have joined
ALL_SITES = ["strategy.fraction=1.0", "strategy.min_nodes=4"]
CASES["all-fedyogi"] = ['strategy.name="fedyogi"', *ALL_SITES]
CASES["all-topk-q8-ef"] = [*CASES["fedavg-topk-q8-ef"], *ALL_SITES]
# client-level DP with seeded noise (secure noise differs on purpose from run to run)
SEEDED_DP = ["privacy.secure_rng=false", "privacy.noise_multiplier=0.5", "privacy.clip=1.0"]
CASES["dp-central"] = ['privacy.mode="central"', *SEEDED_DP]
CASES["all-dp-distributed-adaptive"] = [
    'privacy.mode="distributed"', "privacy.adaptive_clip=true", "privacy.clip_count_noise=1.0",
    *SEEDED_DP, *ALL_SITES]
# secure aggregation: one of the four sites drops after sharing its keys; and with
# distributed DP (the sites' noise is summed under the masks)
CASES["all-secagg-dropout"] = ['strategy.mode="secagg"', "secagg.simulated_dropout=0.25",
                               *ALL_SITES]
CASES["all-secagg-dp"] = ['strategy.mode="secagg"', 'privacy.mode="distributed"',
                          "secagg.clip_range=4.0", *SEEDED_DP, *ALL_SITES]
CASES["all-sample-dp"] = ["privacy.sample_dp=true", "privacy.secure_rng=false",
                          "privacy.sample_noise_multiplier=0.8", *ALL_SITES]
# personalization: a kept head and travelling BatchNorm statistics; FedBN; Ditto; Per-FedAvg
BATCHNORM = ['model.norm="batch"', "model.hidden=[32]"]
CASES["all-fedrep-bn"] = ['personalization.method="fedrep"', "personalization.head_steps=3",
                          *BATCHNORM, *ALL_SITES]
CASES["fedbn"] = ['personalization.method="fedbn"', *BATCHNORM]
CASES["ditto"] = ['personalization.method="ditto"', "personalization.lam=1.0",
                  "local.optimizer=\"sgd\""]
CASES["apfl"] = ['personalization.method="apfl"', "personalization.alpha_lr=0.05"]
CASES["fedex"] = ['personalization.method="fedex"', "personalization.tune_lr=[0.01, 0.1]",
                  "personalization.tune_steps=[3, 10]", "personalization.eval_every=2",
                  "personalization.prior_correction=true"]
CASES["all-fedex"] = [*CASES["fedex"], *ALL_SITES]
CASES["perfedavg-hf"] = ['personalization.method="perfedavg"', 'personalization.variant="hf"',
                         "personalization.holdout_sites=1"]


def fingerprint(workspace: Path) -> str:
    """SHA-256 over the final model's bytes, the round records' numbers and node evals."""
    store = RunStore(workspace)
    try:
        data = store.load_run("last")
        params = load_file(data["checkpoints"][-1]["path"])
    finally:
        store.close()
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].contiguous().numpy().tobytes())
    for r in data["rounds"]:
        h.update(json.dumps([r["round"], r["nodes"], r["failed"]]).encode())
        for value in (r["train_loss"], r["test_loss"], r["test_accuracy"]):
            h.update(struct.pack("<d", float("nan") if value is None else value))
    h.update(json.dumps(data["node_evals"], sort_keys=True).encode())
    return h.hexdigest()


def run_case(name: str, workspace: Path, *extra: str) -> str:
    cfg = load_config(None, [*BASE, *CASES[name], f'run.workspace="{workspace}"', *extra])
    result = run(cfg)
    assert result.status == "complete", f"{name}: {result.extra.get('status_reason')}"
    return fingerprint(workspace)


def families() -> dict[str, dict[str, str]]:
    return json.loads(PINS.read_text()) if PINS.exists() else {}


@cache
def family() -> str:
    """This machine's family: the one whose fedavg pin its fedavg run reproduces, or a new
    name (its vector units and today's date)."""
    digest = run_case("fedavg", Path(tempfile.mkdtemp(prefix="fedtune-family-")) / "ws")
    for label, pins in families().items():
        if pins.get("fedavg") == digest:
            return label
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    units = "amx" if "amx_tile" in flags else "avx512" if "avx512f" in flags else "avx2"
    return f"{units}, pinned {time.strftime('%Y-%m-%d')}"


def pinned() -> dict[str, str]:
    """The pins of this machine's family ({} when no family is pinned like it)."""
    return families().get(family(), {})


def expected(name: str, tmp_path: Path) -> str:
    """What a run of ``name`` must produce here: its pin, or an in-process run made now."""
    return pinned().get(name) or run_case(name, tmp_path / "in-process")


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_matches_its_pin(name, tmp_path):
    digest = run_case(name, tmp_path / "ws")
    if os.environ.get("FEDTUNE_REPIN"):
        all_pins = families()
        all_pins.setdefault(family(), {})[name] = digest
        all_pins[family()] = dict(sorted(all_pins[family()].items()))
        PINS.write_text(json.dumps(all_pins, indent=1) + "\n")
    if not pinned():  # a machine that rounds like no pinned one: it must at least repeat
        assert digest == run_case(name, tmp_path / "again"), f"{name}: not deterministic"
        return
    assert digest == pinned().get(name), f"{name}: the run's numbers changed"


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for both Ray cases (the runtime uses it and leaves it up)."""
    ray = pytest.importorskip("ray")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local instance
    for attempt in range(3):  # Ray's own start-up can time out on a busy 2-core machine
        try:
            ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2,
                     _temp_dir=tempfile.mkdtemp(prefix="fedtune-ray-", dir="/tmp"))
            break
        except Exception:  # Ray raises RuntimeError or a bare Exception for a slow start
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()
    mp.undo()


@pytest.mark.parametrize("name", ["fedyogi", "fednova-steps", "all-dp-distributed-adaptive",
                                  "all-sample-dp", "all-secagg-dropout", "fedbn", "ditto",
                                  "perfedavg-hf", "fedex", "apfl"])
def test_ray_run_matches_the_same_pin(name, tmp_path, ray_instance):
    digest = run_case(name, tmp_path / "ws", 'runtime.kind="ray"', "runtime.ray_actors=2",
                      "runtime.ray_cpus_per_actor=0.5")
    assert digest == expected(name, tmp_path)


def as_toml(overrides: list[str]) -> str:
    """``section.key=value`` overrides (values written as TOML) as a TOML document."""
    sections: dict[str, dict[str, str]] = {}
    for item in overrides:  # a later override of a key wins, as on the command line
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    return "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                   for s, keys in sections.items())


@pytest.mark.parametrize("name", ["all-fedyogi", "all-topk-q8-ef", "all-sample-dp",
                                  "all-secagg-dropout", "all-fedrep-bn", "all-fedex"])
def test_grpc_run_matches_the_same_pin(name, tmp_path):
    from .deployment import Federation

    server = ['server.address="{address}"', "server.insecure_no_auth=true",
              "server.wait_for_sites_s=120"]
    fed = Federation(tmp_path, as_toml(
        [*BASE, *CASES[name], 'run.workspace="{workspace}"', *server]))
    try:
        fed.start(4)
        fed.finish()
    finally:
        fed.close()
    assert fingerprint(tmp_path / "ws") == expected(name, tmp_path)
