"""Carbon-aware selection: the cleanest sites first, every site above its participation
floor, the same choice after a resume; and each simulated site's CO2 from its own grid."""

from __future__ import annotations

import pytest

from fedtune.algorithms.carbon_selection import CarbonAware, carbon_part
from fedtune.config import load_config
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.store import RunStore

from .conftest import small_config

GRIDS = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}


def fixed(grids):
    """Grids that do not change with the hour."""
    return lambda node_ids, hour: grids


def test_by_hand_the_cleanest_first_and_the_owed_when_due():
    sel = CarbonAware(2, 0.5, fixed(GRIDS))
    ids = list(GRIDS)
    # floor(0.5 r) rounds by round r: due 0, 1, 1, 2 -> the dirty pair is owed in 2 and 4
    assert [sel.select(ids, r, 0) for r in range(1, 5)] == [
        ["a", "b"], ["c", "d"], ["a", "b"], ["c", "d"]]
    low = CarbonAware(2, 0.25, fixed(GRIDS))
    assert [low.select(ids, r, 0) for r in range(1, 5)] == [
        ["a", "b"], ["a", "b"], ["a", "b"], ["c", "d"]]
    assert CarbonAware(2, 0.0, fixed(GRIDS)).select(ids, 7, 0) == ["a", "b"]


@pytest.mark.parametrize("floor", [0.1, 0.3, 0.5])
def test_every_site_keeps_its_floor_and_a_fresh_selector_agrees(floor):
    grids = {f"s{i:02d}": float(i) for i in range(20)}
    ids = list(grids)
    sel = carbon_part(fraction=0.5, count=0, min_nodes=1, intensity=fixed(grids),
                      floor=floor)
    counts = dict.fromkeys(ids, 0)
    for r in range(1, 41):
        chosen = sel.select(ids, r, 3)
        assert len(chosen) == 10
        for node in chosen:
            counts[node] += 1
        assert min(counts.values()) >= int(floor * r + 1e-9)
    again = carbon_part(fraction=0.5, count=0, min_nodes=1, intensity=fixed(grids),
                        floor=floor)
    assert again.select(ids, 40, 3) == sel.select(ids, 40, 3), "a resumed run chooses the same"


def test_with_the_run_known_every_site_ends_at_or_above_the_floor():
    grids = {f"s{i:02d}": float(i) for i in range(20)}
    ids = list(grids)
    sel = CarbonAware(10, 0.25, fixed(grids), rounds=50)  # 0.25 x 50 = 12.5: 13 rounds each
    counts = dict.fromkeys(ids, 0)
    for r in range(1, 51):
        for node in sel.select(ids, r, 1):
            counts[node] += 1
    assert min(counts.values()) == 13
    clean, dirty = sum(counts[n] for n in ids[:5]), sum(counts[n] for n in ids[-5:])
    assert clean >= 0.7 * 5 * 50 and dirty == 5 * 13, "the cleanest take what the floor leaves"


def test_a_site_on_a_dirty_grid_emits_more_for_the_same_work(tmp_path):
    # per joule, read from the stored ledger: measured seconds (and so joules) move with the
    # machine's load, the grams each joule costs do not
    cfg = small_config("data.num_nodes=2", 'data.partition="iid"', "run.rounds=2",
                       'energy.site_g_per_kwh=[10.0, 1000.0]', "energy.tdp_watts=100",
                       f'run.workspace="{tmp_path}"')
    result = run(cfg)
    assert result.total_co2_g > 0
    store = RunStore(tmp_path)
    try:
        rows = [n for n in store.load_run("last")["node_metrics"] if n["phase"] == "fit"]
    finally:
        store.close()
    assert {r["node_id"] for r in rows} == {"node-0", "node-1"} and len(rows) == 4
    for r in rows:
        assert r["energy_j"] > 0
        g_per_kwh = r["co2_g"] / (r["energy_j"] / 3.6e6)
        assert g_per_kwh == pytest.approx(10.0 if r["node_id"] == "node-0" else 1000.0,
                                          rel=1e-6)


def test_a_carbon_run_reports_participation_and_refuses_what_cannot_hold():
    cfg = small_config("data.num_nodes=6", "strategy.fraction=0.5", "run.rounds=10",
                       'strategy.selection="carbon"', "strategy.participation_floor=0.3",
                       'energy.site_countries=["SWE", "POL"]')
    share = run(cfg, store=False).extra["participation"]
    assert share["min_frac"] >= 0.3 and share["floor"] == 0.3
    with pytest.raises(ConfigError, match=r"energy\.site_countries"):  # a simulation's sites
        run(load_config(None, ['strategy.selection="carbon"']), store=False)
    with pytest.raises(ConfigError, match=r"participation_floor = 0\.8 cannot hold"):
        load_config(None, ['strategy.selection="carbon"', "strategy.fraction=0.5",
                           "strategy.participation_floor=0.8", 'energy.site_countries=["FRA"]'])
