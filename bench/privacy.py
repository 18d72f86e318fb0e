"""Privacy: what a differentially private run costs in accuracy, against the same run without
privacy, in the same command.

client-dp: 1,000 sites of MNIST-1D (40,000 samples generated locally, IID), Poisson sampling
of 10 % of the sites per round (about 100), 50 rounds of 10 local SGD steps, MLP 40-64-10.
Client-level DP at the coordinator (DP-FedAvg, adaptive clipping to the median norm) with the
noise multiplier ``fedtune privacy`` calibrates for epsilon = 8 at delta = 1e-5 (PLD
accountant), against the same federation without noise or clipping. Goal: within 5 points.

Prints one JSON line per setting with ``setting``, ``epsilon``, ``accuracy``,
``accuracy_nonprivate``, ``accuracy_drop_pts``.
Usage: python bench/privacy.py
"""

from __future__ import annotations

import json
import tempfile

from fedtune.config import load_config
from fedtune.experiment import run
from fedtune.privacy.accountant import calibrate, sampling_for

TARGET_EPSILON, DELTA, ROUNDS, SITES = 8.0, 1e-5, 50, 1000
FEDERATION = [
    'data.dataset="mnist1d"', f"data.num_nodes={SITES}", "data.options={num_samples=40000}",
    'data.partition="iid"', "strategy.fraction=0.1", 'strategy.selection="poisson"',
    f"run.rounds={ROUNDS}", "local.steps=10", 'strategy.weighting="uniform"',
    "evaluation.personalize_steps=0", "evaluation.max_sites=200", "energy.enabled=false",
]


def accuracy(overrides: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as ws:
        result = run(load_config(None, [*FEDERATION, *overrides, f'run.workspace="{ws}"']))
    return result.final_test_accuracy, result.extra.get("privacy", {})


def client_dp() -> dict:
    z = calibrate(TARGET_EPSILON, delta=DELTA, rounds=ROUNDS,
                  sampling=sampling_for("poisson", population=SITES, fraction=0.1, count=0,
                                        min_nodes=1))
    plain, _ = accuracy([])
    private, spent = accuracy(['privacy.mode="central"', f"privacy.noise_multiplier={z}",
                               "privacy.adaptive_clip=true", f"privacy.delta={DELTA}"])
    return {"bench": "privacy", "setting": "client-dp", "sites": SITES, "rounds": ROUNDS,
            "noise_multiplier": z, "epsilon": spent["epsilon"], "delta": DELTA,
            "epsilon_rdp": spent["epsilon_rdp"], "final_clip": spent["clip"],
            "accuracy": private, "accuracy_nonprivate": plain,
            "accuracy_drop_pts": 100 * (plain - private)}


def main() -> None:
    row = client_dp()
    print(f"client-level DP, {SITES} sites, epsilon {row['epsilon']:.2f} at delta {DELTA:g}: "
          f"accuracy {100 * row['accuracy']:.2f} % vs {100 * row['accuracy_nonprivate']:.2f} % "
          f"without privacy ({row['accuracy_drop_pts']:.2f} points; goal <= 5)")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
