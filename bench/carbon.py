"""Carbon-aware rounds against uniform selection, in the same command.

Digits over 20 sites (the default Dirichlet label skew), half of them per round, 50 rounds.
The sites sit on five real grids, four sites each, with CodeCarbon's intensities: Sweden,
France, Germany, Poland, India. ``strategy.selection = "carbon"`` takes the cleanest sites
first while every site takes part in at least ``strategy.participation_floor`` = 0.25 of the
rounds; ``"fixed"`` draws the same number uniformly. Energy is metered (CPU time x TDP share,
which varied by 25 % between identical runs here), so the settings run three times each,
alternating, and the means count.

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

FLOOR = 0.25
REPEATS = 3
ROUNDS = 50
BASE = ["data.num_nodes=20", "strategy.fraction=0.5", f"run.rounds={ROUNDS}",
        'energy.site_countries=["SWE", "FRA", "DEU", "POL", "IND"]',
        f"strategy.participation_floor={FLOOR}", "evaluation.personalize_steps=0",
        "run.checkpoint_every=0"]


def measure(selection: str) -> dict:
    """One run: its CO2 (every round's, sites and coordinator), accuracy, least share."""
    with tempfile.TemporaryDirectory() as ws:
        result = run(load_config(None, [*BASE, f'strategy.selection="{selection}"',
                                        f'run.workspace="{ws}"']))
    counts: dict[str, int] = {}
    for r in result.rounds:
        for node in r.nodes:
            counts[node] = counts.get(node, 0) + 1
    least = min(counts.get(f"node-{i:02d}", 0) for i in range(20)) / len(result.rounds)
    return {"co2_g": sum(r.co2_g for r in result.rounds),
            "accuracy": result.final_test_accuracy, "min_participation_frac": least}


def mean_of(runs: list[dict]) -> dict:
    return {"co2_g": statistics.mean(r["co2_g"] for r in runs),
            "accuracy": statistics.mean(r["accuracy"] for r in runs),
            "min_participation_frac": min(r["min_participation_frac"] for r in runs)}


def main() -> None:
    pairs = [(measure("fixed"), measure("carbon")) for _ in range(REPEATS)]  # alternating
    uniform = mean_of([u for u, _ in pairs])
    aware = mean_of([a for _, a in pairs])
    row = {"bench": "carbon", "sites": 20, "rounds": ROUNDS, "participation_floor": FLOOR,
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
