"""Client-level DP in the round: the clip bound, the noise on the aggregate, adaptive
clipping (Andrew et al. 2021), the budget stop, determinism, resume and refusals."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.config import load_config
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.node.context import FitContext
from fedtune.node.instructions import NodeInstructions
from fedtune.privacy.accountant import Sampling
from fedtune.privacy.client_dp import ClientDP, DPState
from fedtune.privacy.noise import gaussian
from fedtune.privacy.settings import PrivacySection
from fedtune.privacy.site import SiteDP
from fedtune.seeds import derived_seed
from fedtune.store import RunStore

from .conftest import small_config

EVERYONE = Sampling("fixed", 10, size=10)


def part(**kw) -> ClientDP:
    settings_ = PrivacySection(mode=kw.pop("mode", "central"), secure_rng=False, **kw)
    return ClientDP(settings_, EVERYONE, min_nodes=1, seed=7, rounds=50)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.floats(-1e30, 1e30), min_size=1, max_size=64), st.floats(1e-3, 1e3))
def test_no_update_leaves_the_coordinator_or_a_site_longer_than_the_clip(values, clip):
    update = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(update.norm()):
        return  # refused before any part sees it (the coordinator's finiteness check)
    central = part(clip=clip)
    clipped = central.receive(update, {}, central.init(), "a")
    assert float(clipped.norm()) <= clip * (1 + 1e-5)
    ctx = FitContext(1, torch.zeros(len(values)), {}, NodeInstructions.from_config({}), {},
                     seed=3, update=update.clone())
    SiteDP(clip=clip, noise_std=0.0, bit_noise_std=0.0, secure=True).after_fit(ctx)
    assert float(ctx.update.norm()) <= clip * (1 + 1e-5)


def test_the_central_noise_on_the_aggregate_is_z_c_over_m():
    p = part(clip=2.0, noise_multiplier=1.5)
    noisy = p.release(torch.zeros(300_000), p.init(), round_=4)
    assert noisy.double().std().item() == pytest.approx(1.5 * 2.0 / 10, rel=0.01)
    again = p.release(torch.zeros(300_000), p.init(), round_=4)
    assert torch.equal(noisy, again), "seeded noise (secure_rng = false) is reproducible"
    secure = ClientDP(PrivacySection(mode="central"), EVERYONE, min_nodes=1, seed=7, rounds=5)
    assert not torch.equal(secure.release(torch.zeros(50), secure.init(), 4),
                           secure.release(torch.zeros(50), secure.init(), 4))


def test_adaptive_clipping_by_hand():
    p = part(clip=1.0, noise_multiplier=1.0, adaptive_clip=True, clip_count_noise=1.0,
             target_quantile=0.5, clip_lr=0.2)
    # Andrew et al. Theorem 1: the update noise that makes the pair cost z = 1
    assert p.update_z == pytest.approx((1.0 - 0.25) ** -0.5)
    state = p.init()
    for norm in (0.5, 0.9, 3.0, 0.2, 5.0, 0.1, 7.0):  # 4 of 7 within the clip 1.0
        p.receive(torch.tensor([norm, 0.0]), {}, state, "a")
    p.release(torch.zeros(2), state, round_=2)
    gen = torch.Generator().manual_seed(derived_seed(7, 2, "dp", "count"))
    count = 4 + float(gaussian(1, 1.0, secure=False, generator=gen)[0])
    assert state.clip == pytest.approx(math.exp(-0.2 * (count / 10 - 0.5)))


def test_adaptive_clipping_follows_the_quantile_of_the_norms():
    p = part(clip=0.1, noise_multiplier=0.05, adaptive_clip=True, clip_count_noise=0.05,
             target_quantile=0.5, clip_lr=0.2)
    state = p.init()
    norms = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # median 5.5
    for round_ in range(1, 200):
        for norm in norms:
            p.receive(torch.tensor([norm]), {}, state, "a")
        p.release(torch.zeros(1), state, round_)
        p.after_round(state)
    assert 4.5 <= state.clip <= 6.5


def test_the_run_stops_before_the_round_that_would_pass_the_budget(tmp_path):
    cfg = small_config("data.num_nodes=10", "run.rounds=30", 'privacy.mode="central"',
                       "privacy.noise_multiplier=1.0", "privacy.max_epsilon=12",
                       f'run.workspace="{tmp_path}"')
    result = run(cfg)
    eps = [r.epsilon for r in result.rounds]
    assert 0 < len(eps) < 30 and eps == sorted(eps) and eps[-1] <= 12
    p = result.extra["privacy"]
    assert p["epsilon"] == eps[-1] and p["rounds"] == len(eps) and p["private"]
    assert p["epsilon_rdp"] >= p["epsilon"]
    assert f"round {len(eps) + 1} would take epsilon" in result.extra["stopped"]
    store = RunStore(tmp_path)
    try:
        assert [r.epsilon for r in store.round_records(result.run_id)] == eps
        assert store.load_run(result.run_id)["status"] == "complete"
    finally:
        store.close()


def test_seeded_dp_runs_repeat_and_secure_ones_do_not():
    seeded = small_config('privacy.mode="central"', "privacy.secure_rng=false",
                          "privacy.noise_multiplier=0.8", "data.num_nodes=6")
    a, b = run(seeded, store=False), run(seeded, store=False)
    assert a.final_test_loss == b.final_test_loss and not a.extra["privacy"]["private"]
    secure = small_config('privacy.mode="central"', "privacy.noise_multiplier=0.8",
                          "data.num_nodes=6")
    assert run(secure, store=False).final_test_loss != run(secure, store=False).final_test_loss


def test_a_resumed_dp_run_keeps_its_spent_budget_and_its_clip(tmp_path):
    base = ["data.num_nodes=8", "run.rounds=6", 'privacy.mode="central"',
            "privacy.secure_rng=false", "privacy.adaptive_clip=true",
            "privacy.clip_count_noise=2.0", "privacy.noise_multiplier=1.0"]
    whole = run(small_config(*base, f'run.workspace="{tmp_path / "a"}"'))

    def stop_after_three(record):
        if record.round == 3:
            raise KeyboardInterrupt

    cfg = small_config(*base, f'run.workspace="{tmp_path / "b"}"')
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_round=stop_after_three)
    resumed = run(cfg, resume=True)
    assert [r.epsilon for r in resumed.rounds] == [r.epsilon for r in whole.rounds]
    assert resumed.extra["privacy"] == whole.extra["privacy"]
    assert resumed.final_test_loss == whole.final_test_loss


@pytest.mark.parametrize(("override", "message"), [
    ('strategy.aggregator="median"', "does not bound one site's influence"),
    ('strategy.name="scaffold"', "control variates"),
    ('strategy.weighting="examples"', "strategy.weighting"),
    ('strategy.mode="async"', "not accounted for"),
    ('server.stragglers="stale"', "stale"),
    ("privacy.noise_multiplier=-1", "greater than 0"),
    ("privacy.delta=1.5", "less than 1"),
])
def test_settings_dp_cannot_account_for_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ['privacy.mode="central"', override])


def test_a_delta_above_one_over_the_sites_and_a_weak_count_noise_are_refused():
    with pytest.raises(ConfigError, match=r"privacy.delta = 0.2 is not below 1 / 10"):
        run(small_config("data.num_nodes=10", 'privacy.mode="central"', "privacy.delta=0.2"),
            store=False)
    with pytest.raises(ConfigError, match="clip_count_noise"):
        run(small_config("data.num_nodes=10", 'privacy.mode="central"',
                         "privacy.adaptive_clip=true"), store=False)


def test_an_old_store_gains_the_epsilon_column_and_keeps_its_rounds(tmp_path):
    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.executescript("""
      CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
        finished REAL, status TEXT NOT NULL, pid INTEGER, host TEXT, config_json TEXT NOT NULL,
        result_json TEXT);
      CREATE TABLE rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, nodes INTEGER,
        failed INTEGER, train_loss REAL, test_loss REAL, test_accuracy REAL, wall_s REAL,
        bytes_down INTEGER, bytes_up INTEGER, energy_j REAL, co2_g REAL,
        PRIMARY KEY (run_id, round));
      INSERT INTO runs VALUES ('old', 'x', 0, 1, 'complete', 0, 'h', '{}', '{}');
      INSERT INTO rounds VALUES ('old', 1, 2, 0, 0.5, 0.4, 0.9, 1.0, 10, 10, 1.0, 0.1);
    """)
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    try:
        [record] = store.round_records("old")
        assert (record.test_accuracy, record.epsilon) == (0.9, None)
    finally:
        store.close()


def test_distributed_sites_send_a_noisy_clip_bit_the_coordinator_counts():
    p = part(mode="distributed", clip=1.0, adaptive_clip=True, clip_count_noise=1.0)
    config = p.node_config(p.init())
    assert config["dp_clip"] == 1.0 and config["dp_noise_std"] == pytest.approx(p.update_z)
    ins = NodeInstructions.from_config(config)
    ctx = FitContext(1, torch.zeros(4), {}, ins, {}, seed=11,
                     update=torch.tensor([3.0, 4.0, 0.0, 0.0]))
    SiteDP(clip=ins.dp_clip, noise_std=ins.dp_noise_std, bit_noise_std=ins.dp_bit_noise_std,
           secure=False).after_fit(ctx)
    bit = ctx.out_aux["dp_clip_bit"]
    state = DPState(clip=1.0)
    p.receive(ctx.update, ctx.out_aux, state, "a")
    assert state.within == pytest.approx(float(bit))
    p.receive(ctx.update, {"dp_clip_bit": torch.tensor([1e9])}, state, "b")
    assert state.within <= float(bit) + 11.0, "one site cannot swing the count"
