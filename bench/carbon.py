"""Carbon-aware rounds against uniform selection, in the same command.

Digits over 20 sites (the default Dirichlet label skew), half of them per round, 50 rounds
of three local epochs (enough work per fit that CPU-time metering is not mostly noise).
The sites sit on five real grids, four sites each, with CodeCarbon's intensities: Sweden,
France, Germany, Poland, India. ``strategy.selection = "carbon"`` takes the cleanest sites
first while every site takes part in at least ``strategy.participation_floor`` = 0.25 of the
rounds; ``"fixed"`` draws the same number uniformly. Energy is metered (CPU time x TDP share,
which varied by 25 % between identical runs here), so the settings run five times each,
alternating, and the means count.

A second row puts the same sites on hourly grids and lets carbon-aware rounds wait up to
``energy.defer_hours`` = 6 for a cleaner hour (rounds last one simulated hour). No hourly
data ships offline, so the profiles are synthetic: each country's CodeCarbon mean +- 30 % over
a day (dirtiest at 03:00, cleanest at 15:00, as solar generation shapes many grids); uniform
selection runs on the same clock without waiting.

Goal: >= 30 % less CO2 within 1 point of accuracy, every site above the floor.
Keys: ``co2_saving_frac``, ``accuracy_drop_pts``, ``min_participation_frac``,
``participation_floor``.
Usage: python bench/carbon.py
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile

from fedtune.config import load_config
from fedtune.energy.carbon import carbon_intensity
from fedtune.experiment import run

FLOOR = 0.25
REPEATS = 5
ROUNDS = 50
BASE = ["data.num_nodes=20", "local.epochs=3", "strategy.fraction=0.5", f"run.rounds={ROUNDS}",
        'energy.site_countries=["SWE", "FRA", "DEU", "POL", "IND"]',  # COUNTRIES
        f"strategy.participation_floor={FLOOR}", "evaluation.personalize_steps=0",
        "run.checkpoint_every=0"]


COUNTRIES = ["SWE", "FRA", "DEU", "POL", "IND"]
DEFER_HOURS = 6


def hourly_csv(folder: str) -> str:
    """The synthetic daily profiles of the second row (see the docstring)."""
    means = [carbon_intensity(c) for c in COUNTRIES]
    path = f"{folder}/grids.csv"
    with open(path, "w") as f:
        f.write("hour," + ",".join(COUNTRIES) + "\n")
        for h in range(24):
            shape = 1 + 0.3 * math.cos(2 * math.pi * (h - 3) / 24)
            f.write(f"{h}," + ",".join(f"{m * shape:.1f}" for m in means) + "\n")
    return path


def measure(selection: str, *extra: str) -> dict:
    """One run: its CO2 (every round's, sites and coordinator), accuracy, least share."""
    with tempfile.TemporaryDirectory() as ws:
        result = run(load_config(None, [*BASE, f'strategy.selection="{selection}"',
                                        f'run.workspace="{ws}"', *extra]))
    counts: dict[str, int] = {}
    for r in result.rounds:
        for node in r.nodes:
            counts[node] = counts.get(node, 0) + 1
    least = min(counts.get(f"node-{i:02d}", 0) for i in range(20)) / len(result.rounds)
    return {"co2_g": sum(r.co2_g for r in result.rounds),
            "accuracy": result.final_test_accuracy, "min_participation_frac": least,
            "deferred_hours": result.extra.get("clock", {}).get("deferred_hours", 0.0)}


def mean_of(runs: list[dict]) -> dict:
    return {"co2_g": statistics.mean(r["co2_g"] for r in runs),
            "accuracy": statistics.mean(r["accuracy"] for r in runs),
            "min_participation_frac": min(r["min_participation_frac"] for r in runs),
            "deferred_hours": statistics.mean(r["deferred_hours"] for r in runs)}


def compare(scenario: str, uniform_extra: list[str], aware_extra: list[str]) -> dict:
    pairs = [(measure("fixed", *uniform_extra), measure("carbon", *aware_extra))
             for _ in range(REPEATS)]  # alternating
    uniform = mean_of([u for u, _ in pairs])
    aware = mean_of([a for _, a in pairs])
    row = {"bench": "carbon", "scenario": scenario, "sites": 20, "rounds": ROUNDS,
           "participation_floor": FLOOR,
           "co2_g": aware["co2_g"], "co2_g_uniform": uniform["co2_g"],
           "co2_saving_frac": 1 - aware["co2_g"] / uniform["co2_g"],
           "accuracy": aware["accuracy"], "accuracy_uniform": uniform["accuracy"],
           "accuracy_drop_pts": 100 * (uniform["accuracy"] - aware["accuracy"]),
           "min_participation_frac": aware["min_participation_frac"],
           "min_participation_frac_uniform": uniform["min_participation_frac"],
           "deferred_hours": aware["deferred_hours"]}
    print(f"{scenario}: carbon-aware vs uniform: {100 * row['co2_saving_frac']:.1f} % less "
          f"CO2 (goal >= 30), accuracy {100 * row['accuracy']:.2f} % vs "
          f"{100 * row['accuracy_uniform']:.2f} % ({row['accuracy_drop_pts']:.2f} points; goal "
          f"<= 1), least participation {row['min_participation_frac']:.2f} (floor {FLOOR}), "
          f"waited {row['deferred_hours']:.0f} h in all", file=sys.stderr)
    return row


def main() -> None:
    print(json.dumps(compare("fixed grids", [], [])), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        grids = ['energy.site_countries=[]', f'energy.site_grid_csv="{hourly_csv(folder)}"']
        print(json.dumps(compare(f"hourly grids, wait <= {DEFER_HOURS} h", grids,
                                 [*grids, f"energy.defer_hours={DEFER_HOURS}"])), flush=True)


if __name__ == "__main__":
    main()
