"""Simulated attacks: each against what it must do to one site's update or data (worked on a
real node), seeded attacker sites, attacks that hurt the plain mean and a robust rule that
holds, a backdoor that implants, and the refusals."""

from __future__ import annotations

import pytest
import torch

from fedtune.energy import EnergyMeter
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.node.instructions import as_bytes
from fedtune.node.node import Node, Workbench
from fedtune.store import RunStore
from fedtune.tasks import build_task
from fedtune.types import FitIns

from .conftest import small_config

CPU = torch.device("cpu")


def _fit(*attack: str, sites: str = "node-0"):
    cfg = small_config()
    task = build_task(cfg)
    bench = Workbench.create(task, CPU, cfg.run.seed)
    node = Node(task.data.nodes[0], seed=0, meter=EnergyMeter(use_rapl=False),
                co2_per_joule=0.0, device=CPU)
    config = {**cfg.local.model_dump(), **dict(a.split("=") for a in attack),
              "attack_classes": 10}
    config = {k: (float(v) if k in ("attack_scale", "attack_noise") else v)
              for k, v in config.items()}
    start = bench.flat.shared.clone()
    aux = {"attack_sites": as_bytes(sites)}
    return node.fit(FitIns(1, start, config, aux), bench).update, node, bench, start


def test_update_attacks_do_what_they_say_to_the_honest_update():
    honest, *_ = _fit("attack=none")
    flipped, *_ = _fit("attack=sign_flip", "attack_scale=2")
    torch.testing.assert_close(flipped, -2 * honest)
    boosted, *_ = _fit("attack=scale", "attack_scale=10")
    torch.testing.assert_close(boosted, 10 * honest)
    assert torch.equal(_fit("attack=free_rider")[0], torch.zeros_like(honest))
    noise, *_ = _fit("attack=noise", "attack_noise=0.5")
    assert abs(float(noise.std()) - 0.5) < 0.02 and torch.equal(noise, _fit(
        "attack=noise", "attack_noise=0.5")[0]), "Gaussian, seeded"
    # a site that is not named trains honestly
    assert torch.equal(_fit("attack=sign_flip", sites="node-3")[0], honest)


def test_attackers_are_a_seeded_sample_recorded_with_the_run():
    cfg = small_config('attack.kind="sign_flip"', "attack.fraction=0.5", "energy.enabled=false")
    a, b = run(cfg, store=False), run(cfg, store=False)
    assert a.extra["attack"] == b.extra["attack"] and len(a.extra["attack"]["sites"]) == 2
    assert a.final_test_accuracy == b.final_test_accuracy
    named = run(small_config('attack.kind="noise"', 'attack.sites=["node-2"]',
                             "energy.enabled=false"), store=False)
    assert named.extra["attack"] == {"kind": "noise", "sites": ["node-2"]}


def test_a_sign_flipping_site_hurts_the_mean_and_krum_holds():
    base = ["data.num_nodes=8", "run.rounds=5", 'data.partition="iid"', "energy.enabled=false"]
    attack = ['attack.kind="sign_flip"', "attack.scale=4.0", "attack.fraction=0.25"]
    clean = run(small_config(*base), store=False).final_test_accuracy
    attacked = run(small_config(*base, *attack), store=False).final_test_accuracy
    defended = run(small_config(*base, *attack, 'strategy.aggregator="multi_krum"',
                                "strategy.byzantine=2"), store=False).final_test_accuracy
    assert attacked < clean - 0.2
    assert defended > clean - 0.05


def test_a_backdoor_implants_with_plain_fedavg():
    res = run(small_config("data.num_nodes=5", "run.rounds=8", 'data.partition="iid"',
                           'attack.kind="backdoor"', 'attack.sites=["node-0"]',
                           "attack.scale=5.0", "attack.target=3", "energy.enabled=false"),
              store=False)
    assert res.extra["attack"]["backdoor_asr"] > 0.8
    assert res.final_test_accuracy > 0.7, "the main task still learns: a stealthy backdoor"


def test_norm_bounding_holds_a_model_replacement_backdoor():
    # the bench's setting: 20 sites, 4 attackers poisoning 10 % of their rows, x10 boosted
    setting = ["data.num_nodes=20", "data.alpha=1.0", "run.rounds=30", "energy.enabled=false",
               "evaluation.personalize_steps=0", 'attack.kind="backdoor"', "attack.scale=10.0",
               "attack.poison_fraction=0.1", "attack.target=0"]
    plain = run(small_config(*setting), store=False)
    bounded = run(small_config(*setting, 'strategy.aggregator="norm_bound"'), store=False)
    assert plain.extra["attack"]["sites"] == bounded.extra["attack"]["sites"]
    assert len(plain.extra["attack"]["sites"]) == 4
    assert plain.extra["attack"]["backdoor_asr"] > 0.8
    assert bounded.extra["attack"]["backdoor_asr"] < 0.05
    assert bounded.final_test_accuracy > 0.8


def test_attacks_are_refused_where_they_cannot_run():
    with pytest.raises(ConfigError, match="not a site"):
        run(small_config('attack.kind="noise"', 'attack.sites=["node-99"]'), store=False)
    with pytest.raises(ConfigError, match="free_rider"):
        small_config('attack.kind="scale"', "attack.scale=0")
    # over gRPC: named red-team sites only (tests/test_attacks_grpc.py)


def test_alie_and_ipm_craft_from_the_benign_updates_by_hand():
    from statistics import NormalDist

    from fedtune.attack.omniscient import alie_z, crafted

    x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    # n = 3, f = 1: s = floor(3/2 + 1) - 1 = 1 benign update must lie farther: z = Phi^-1(2/3)
    z = NormalDist().inv_cdf(2 / 3)
    assert alie_z(3, 1) == pytest.approx(z)
    std = (8 / 3) ** 0.5
    torch.testing.assert_close(crafted("alie", x, 1), torch.tensor([2.0 - z * std, 1.0]))
    torch.testing.assert_close(crafted("alie", x, 1, z=1.0), torch.tensor([2.0 - std, 1.0]))
    torch.testing.assert_close(crafted("ipm", x, 1, epsilon=0.5), torch.tensor([-1.0, -0.5]))
    assert alie_z(50, 24) == pytest.approx(NormalDist().inv_cdf(48 / 50))


def test_omniscient_attackers_see_the_round_and_a_large_ipm_reverses_the_mean():
    base = ["data.num_nodes=8", "run.rounds=5", 'data.partition="iid"', "energy.enabled=false"]
    clean = run(small_config(*base), store=False).final_test_accuracy
    ipm = ['attack.kind="ipm"', "attack.ipm_epsilon=10.0", "attack.fraction=0.25"]
    a, b = run(small_config(*base, *ipm), store=False), run(small_config(*base, *ipm),
                                                           store=False)
    assert a.final_test_accuracy == b.final_test_accuracy, "seeded"
    assert a.final_test_accuracy < clean - 0.2
    held = run(small_config(*base, *ipm, 'strategy.aggregator="median"'), store=False)
    assert held.final_test_accuracy > clean - 0.1
    alie = run(small_config(*base, 'attack.kind="alie"', "attack.fraction=0.25",
                            "attack.alie_z=3.0"), store=False)
    assert alie.extra["attack"]["kind"] == "alie" and len(alie.extra["attack"]["sites"]) == 2
    assert alie.final_test_loss > run(small_config(*base), store=False).final_test_loss
    with pytest.raises(ConfigError, match=r"compression\.uplink"):
        small_config('attack.kind="alie"', 'compression.uplink="q8"')


def test_an_attacked_run_is_stored_like_any_other_and_its_ledger_names_the_attackers(tmp_path):
    res = run(small_config('attack.kind="sign_flip"', f'run.workspace="{tmp_path}"',
                           "attack.fraction=0.5", "energy.enabled=false"))
    assert res.run_id != "unsaved" and res.extra["attack"]["kind"] == "sign_flip"
    store = RunStore(tmp_path)
    try:
        rows = store.load_run(res.run_id)["node_metrics"]
    finally:
        store.close()
    fit = [r for r in rows if r["phase"] == "fit"]
    assert len(fit) == 4 * 3, "4 sites, 3 rounds"
    marked = {r["node_id"] for r in fit if r["attack"] == "sign_flip"}
    assert marked == set(res.extra["attack"]["sites"]) and len(marked) == 2
    assert all(r["attack"] == "" for r in fit if r["node_id"] not in marked)
    assert all(r["attack"] in ("", None) for r in rows if r["phase"] != "fit")


def test_a_non_finite_attack_knob_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"attack\.scale"):
        small_config('attack.kind="scale"', "attack.scale=nan")


def test_any_number_of_attackers_travel_and_an_instruction_that_cannot_is_refused_up_front():
    from fedtune.attack.round_part import AttackPart
    from fedtune.attack.settings import red_team_refusal
    from fedtune.wire import decode, encode, sendable

    sites = [f"clinic-{i:03d}" for i in range(300)]
    cfg = small_config('attack.kind="sign_flip"', "attack.fraction=0.5")
    part = AttackPart(cfg, sites, classes=10)
    assert len(",".join(part.sites)) > 512 * 3  # once a config string, capped at 512
    ins = FitIns(1, torch.zeros(3), part.node_config(None), part.instruction_aux(None))
    back = decode(encode(sendable(ins)))
    named = set(part.sites)
    assert all((red_team_refusal(back, s) is not None) == (s in named) for s in sites)
    with pytest.raises(ConfigError, match=r"FitIns field 'config\.note'.*at most 512"):
        sendable(FitIns(1, torch.zeros(3), {"note": "x" * 600}))
