"""Carbon-aware rounds over time: hourly grids from a CSV, rounds that wait for a cleaner
hour within energy.defer_hours (simulated clock), and CO2 priced at each round's hour."""

from __future__ import annotations

import pytest

from fedtune.algorithms.carbon_selection import CarbonAware
from fedtune.config import load_config
from fedtune.energy.grids import SiteGrids, parse_grid, read_hourly_csv
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.store import RunStore

from .conftest import small_config

HOURLY = {"a": [100.0, 10.0, 100.0, 100.0], "b": [50.0, 50.0, 5.0, 50.0]}


def test_a_round_waits_for_the_cleanest_hour_within_its_deadline() -> None:
    grids = SiteGrids(HOURLY)
    sel = CarbonAware(1, 0.0, grids.at, round_hours=1.0, defer_hours=2)
    # round 1 may start at hour 0, 1 or 2: b at 50, a at 10, b at 5 -> waits 2 hours for b
    assert sel.plan(["a", "b"], 1, 0) == (["b"], 2.0)
    # round 2 may start at 3, 4 or 5 (the profile repeats: 5 is hour 1): a at 10 at hour 5
    assert sel.plan(["a", "b"], 2, 0) == (["a"], 5.0)
    never = CarbonAware(1, 0.0, grids.at, round_hours=1.0, defer_hours=0)
    assert [never.plan(["a", "b"], r, 0)[1] for r in (1, 2, 3)] == [0.0, 1.0, 2.0]
    fixed = CarbonAware(1, 0.0, SiteGrids({"a": 10.0, "b": 20.0}).at, defer_hours=5)
    assert fixed.plan(["a", "b"], 1, 0) == (["a"], 0.0)  # nothing to gain: no wait


def test_hourly_csv_reads_and_bad_files_name_the_row(tmp_path) -> None:
    good = tmp_path / "grid.csv"
    good.write_text("hour,FRA,POL\n0,50,700\n1,60,650\n")
    assert read_hourly_csv(good) == {"FRA": [50.0, 60.0], "POL": [700.0, 650.0]}
    bad = tmp_path / "bad.csv"
    bad.write_text("hour,FRA\n0,50\n2,60\n")
    with pytest.raises(ConfigError, match="row 3: hour = '2', expected 1"):
        read_hourly_csv(bad)
    bad.write_text("hour,FRA\n0,-5\n")
    with pytest.raises(ConfigError, match=r"column 'FRA'.*not an intensity"):
        read_hourly_csv(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_hourly_csv(tmp_path / "none.csv")
    one = tmp_path / "site.csv"
    one.write_text("hour,g\n0,300\n1,100\n")
    assert parse_grid(str(one)) == [300.0, 100.0]
    assert parse_grid("250") == 250.0 and parse_grid("FRA") > 0
    with pytest.raises(ConfigError, match="one column"):
        parse_grid(str(good))


def test_a_simulated_run_defers_rounds_and_prices_co2_at_their_hour(tmp_path) -> None:
    csv_path = tmp_path / "grids.csv"  # one grid, clean at hours 2 and 3 of every 6
    profile = [800.0, 800.0, 20.0, 20.0, 800.0, 800.0]
    csv_path.write_text("hour,grid\n" + "".join(f"{h},{g:g}\n" for h, g in enumerate(profile)))
    ws = tmp_path / "ws"
    base = ["run.rounds=6", 'strategy.selection="carbon"', "strategy.count=2",
            f'energy.site_grid_csv="{csv_path}"', "energy.round_hours=2"]
    cfg = small_config(*base, "energy.defer_hours=3", f"run.workspace=\"{ws}\"")
    result = run(cfg)
    clock = result.extra["clock"]
    # round 1 waits from hour 0 to 2; round 2 (hour 4) finds no clean hour by 7; round 3
    # waits from 6 to 8 (hour 2 of the profile); and so on
    assert clock["start_hours"][:3] == [2.0, 4.0, 8.0]
    assert clock["rounds_deferred"] >= 2 and clock["deferred_hours"] >= 4
    again = run(cfg, store=False)  # the same config and seed: the same rounds and hours
    assert again.extra["clock"] == clock
    assert [r.nodes for r in again.rounds] == [r.nodes for r in result.rounds]
    store = RunStore(ws)
    fits = store.db.execute("SELECT round, energy_j, co2_g FROM node_metrics WHERE "
                            "run_id=? AND phase='fit'", (result.run_id,)).fetchall()
    store.close()
    for round_, energy_j, co2_g in fits:
        g = profile[int(clock["start_hours"][round_ - 1]) % 6]
        assert co2_g == pytest.approx(energy_j * g / 3.6e6)
    now = run(small_config(*base), store=False)  # no waiting: hours 0, 2, 4, ...
    assert now.extra["clock"]["start_hours"] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    def mean_grid(hours: list[float]) -> float:
        return sum(profile[int(h) % 6] for h in hours) / len(hours)

    assert mean_grid(clock["start_hours"]) < mean_grid(now.extra["clock"]["start_hours"])


def test_energy_settings_that_cannot_work_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="defer_hours"):
        load_config(None, ["energy.defer_hours=2"])
    with pytest.raises(ConfigError, match="both give the sites' grids"):
        load_config(None, ['energy.site_countries=["FRA"]', "energy.site_g_per_kwh=[5.0]"])
    with pytest.raises(ConfigError, match="does not exist"):  # before any run is stored
        run(small_config(f'energy.site_grid_csv="{tmp_path / "no.csv"}"',
                         f'run.workspace="{tmp_path / "ws"}"'))
    assert not (tmp_path / "ws").exists()


def test_real_sites_declare_their_grids_over_grpc(tmp_path) -> None:
    """Three site processes over gRPC on loopback, each declaring its grid when it joins
    (a number, a country, an hourly CSV); the coordinator's config names none. Each site's
    CO2 comes from its own grid at the round's hour. (Every site trains every round: with
    fewer, which sites a round finds ready would race with their joining.)"""
    import json

    from .deployment import Federation

    hourly = tmp_path / "site2.csv"
    hourly.write_text("hour,g\n0,900\n1,5\n")  # clean every other hour
    fed = Federation(tmp_path, """
[run]
rounds = 4
workspace = "{workspace}"
[data]
num_nodes = 3
[strategy]
selection = "carbon"
min_nodes = 3
[evaluation]
personalize_steps = 0
[server]
address = "{address}"
insecure_no_auth = true
round_deadline_s = 60
""")
    try:
        fed.serve()
        fed.join("node-0", "--grid", "400")
        fed.join("node-1", "--grid", "POL")
        fed.join("node-2", "--grid", str(hourly))
        summary = json.loads(fed.finish())
        assert summary["status"] == "complete", fed.log()
        store = RunStore(tmp_path / "ws")
        rows = store.db.execute("SELECT round, node_id, energy_j, co2_g FROM node_metrics "
                                "WHERE phase='fit' ORDER BY round").fetchall()
        store.close()
        from fedtune.energy.carbon import carbon_intensity

        assert len(rows) == 12
        for round_, node, energy_j, co2_g in rows:  # round r runs at hour r - 1
            grid = {"node-0": 400.0, "node-1": carbon_intensity("POL"),
                    "node-2": [900.0, 5.0][(round_ - 1) % 2]}[node]
            assert co2_g == pytest.approx(energy_j * grid / 3.6e6)
    finally:
        fed.close()


def test_a_site_with_a_broken_grid_is_refused_before_it_connects(tmp_path) -> None:
    import subprocess

    from .conftest import FEDTUNE

    out = subprocess.run([FEDTUNE, "join", "--server", "127.0.0.1:1", "--site", "s",
                          "--grid", "-3"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "not an intensity" in out.stderr
    assert "Traceback" not in out.stderr


def test_on_a_wall_clock_a_deferred_round_really_waits(tmp_path) -> None:
    """energy.clock = "wall" with hours of 0.3 s: round 1 starts at hour 0 of a grid that is
    clean only at hour 2, so it waits about 0.6 s for it; the hours are real time."""
    csv_path = tmp_path / "grid.csv"
    csv_path.write_text("hour,grid\n0,800\n1,800\n2,20\n3,800\n4,800\n5,800\n")
    cfg = small_config("run.rounds=1", 'strategy.selection="carbon"', "strategy.count=2",
                       f'energy.site_grid_csv="{csv_path}"', 'energy.clock="wall"',
                       "energy.hour_seconds=0.3", "energy.defer_hours=3")
    result = run(cfg, store=False)
    hour = result.extra["clock"]["start_hours"][0]
    assert 2.0 <= hour < 2.5  # a whole hour ahead of the clock, the clean one
    assert result.wall_s >= 0.5  # it slept until then


def test_a_malformed_grid_declaration_is_refused_with_the_reason() -> None:
    """What a site sends in its ready message: a number or hourly numbers, nothing else."""
    from fedtune.energy.grids import declared_grid

    assert declared_grid(120, "s") == 120.0
    assert declared_grid([10, 20.5], "s") == [10.0, 20.5]
    for bad in ("FRA", float("nan"), -1, True, [], [1] * 10_000, {"g": 1}, [5, "x"]):
        reason = declared_grid(bad, "s")
        assert isinstance(reason, str) and "site 's'" in reason, bad
