"""Carbon-aware rounds against uniform selection, in the same command.

Digits over 20 sites (Dirichlet label skew), half of them per round, 30 rounds. The sites
sit on five real grids, four sites each, with CodeCarbon's intensities: Sweden, France,
Germany, Poland, India. ``strategy.selection = "carbon"`` takes the cleanest sites first while
every site takes part in at least ``strategy.participation_floor`` = 0.4 of the rounds;
``"fixed"`` draws the same number uniformly. Energy is metered (CPU time x TDP share), so
each setting runs three times and the means count.

Goal: >= 30 % less CO2 within 1 point of accuracy, every site above the floor.
Keys: ``co2_saving_frac``, ``accuracy_drop_pts``, ``min_participation_frac``,
``participation_floor``.
Usage: python bench/carbon.py
"""

from __future__ import annotations

import json
import statistics
import tempfile

from fedtune.config import load_config
from fedtune.experiment import run

FLOOR = 0.4
REPEATS = 3
BASE = ["data.num_nodes=20", "strategy.fraction=0.5", "run.rounds=30",
        'energy.site_countries=["SWE", "FRA", "DEU", "POL", "IND"]',
        f"strategy.participation_floor={FLOOR}", "evaluation.personalize_steps=0",
        "run.checkpoint_every=0"]


def measure(selection: str) -> dict:
    co2, acc, least = [], [], []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as ws:
            result = run(load_config(None, [*BASE, f'strategy.selection="{selection}"',
                                            f'run.workspace="{ws}"']))
        co2.append(sum(r.co2_g for r in result.rounds))
        acc.append(result.final_test_accuracy)
        counts: dict[str, int] = {}
        for r in result.rounds:
            for node in r.nodes:
                counts[node] = counts.get(node, 0) + 1
        least.append(min(counts.get(f"node-{i:02d}", 0) for i in range(20)) / len(result.rounds))
    return {"co2_g": statistics.mean(co2), "accuracy": statistics.mean(acc),
            "min_participation_frac": min(least)}


def main() -> None:
    uniform = measure("fixed")
    aware = measure("carbon")
    row = {"bench": "carbon", "sites": 20, "rounds": 30, "participation_floor": FLOOR,
           "co2_g": aware["co2_g"], "co2_g_uniform": uniform["co2_g"],
           "co2_saving_frac": 1 - aware["co2_g"] / uniform["co2_g"],
           "accuracy": aware["accuracy"], "accuracy_uniform": uniform["accuracy"],
           "accuracy_drop_pts": 100 * (uniform["accuracy"] - aware["accuracy"]),
           "min_participation_frac": aware["min_participation_frac"],
           "min_participation_frac_uniform": uniform["min_participation_frac"]}
    print(f"carbon-aware vs uniform: {100 * row['co2_saving_frac']:.1f} % less CO2 (goal >= 30), "
          f"accuracy {100 * row['accuracy']:.2f} % vs {100 * row['accuracy_uniform']:.2f} % "
          f"({row['accuracy_drop_pts']:.2f} points; goal <= 1), least participation "
          f"{row['min_participation_frac']:.2f} (floor {FLOOR})")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
