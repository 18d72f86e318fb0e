"""Privacy: what a differentially private run costs in accuracy, against the same run without
privacy, in the same command.

client-dp: 1,000 sites of MNIST-1D (40,000 samples generated locally, IID), Poisson sampling
of 10 % of the sites per round (about 100), 50 rounds of 10 local SGD steps, MLP 40-64-10.
Client-level DP at the coordinator (DP-FedAvg, adaptive clipping to the median norm) with the
noise multiplier ``fedtune privacy`` calibrates for epsilon = 8 at delta = 1e-5 (PLD
accountant), against the same federation without noise or clipping. Goal: within 5 points.

sample-dp: 4 silos holding the Wisconsin breast-cancer data (a 4-centre medical task, as in
the cross-silo study that lost about 1 point at epsilon = 1), 10 rounds of one local epoch in
batches of 64 at lr 0.1 (DP-SGD's noise is relatively smaller in larger batches); every site
runs DP-SGD calibrated by itself to epsilon = 1 at delta = 1e-5 over the whole run, against
the same federation without DP-SGD. The test set has 113 patients (one is 0.9 points) and the
noise is fresh in every run, so the private accuracy is the mean of three runs. Goal: within
3 points. A second row, sample-dp-small-sites,
does the same on digits (about 290 training images per site), where epsilon = 1 costs far
more: said, not hidden.

audit: 4 silos of MNIST-1D (4,000 samples), MLP 40-256-256-10, 30 rounds of 5 local epochs,
a model that overfits its sites' data; ``fedtune audit``'s two membership-inference attacks
on the final model, without DP and with DP-SGD at epsilon = 8 per site (``mia_auc_dp``,
``mia_auc_nonprivate``: the larger AUC of the two attacks; 0.5 = no leak).

Prints one JSON line per setting with ``setting``, ``epsilon``, ``accuracy``,
``accuracy_nonprivate``, ``accuracy_drop_pts`` (the audit row: ``mia_auc_dp``,
``mia_auc_nonprivate``).
Usage: python bench/privacy.py [client-dp] [sample-dp] [audit]
"""

from __future__ import annotations

import json
import sys
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


def accuracy(overrides: list[str], base: list[str] = FEDERATION) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as ws:
        result = run(load_config(None, [*base, *overrides, f'run.workspace="{ws}"']))
    return result.final_test_accuracy, {**result.extra.get("privacy", {}),
                                        **result.extra.get("sample_privacy", {})}


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


SILOS = ["data.num_nodes=4", 'data.partition="iid"', "run.rounds=10", "local.batch_size=64",
         "local.lr=0.1", "evaluation.personalize_steps=0", "energy.enabled=false"]
REPEATS = 3


def sample_dp(dataset: str, setting: str) -> dict:
    silos = [*SILOS, f'data.dataset="{dataset}"']
    plain, _ = accuracy([], silos)
    runs = [accuracy(["privacy.sample_dp=true", "privacy.sample_epsilon=1",
                      f"privacy.sample_delta={DELTA}"], silos) for _ in range(REPEATS)]
    private = sum(acc for acc, _ in runs) / REPEATS
    spent = runs[0][1]
    return {"bench": "privacy", "setting": setting, "dataset": dataset, "sites": 4,
            "epsilon": max(s["epsilon_max"] for _, s in runs),
            "epsilon_median": spent["epsilon_median"], "delta": DELTA,
            "accuracy": private, "accuracy_runs": [acc for acc, _ in runs],
            "accuracy_nonprivate": plain, "accuracy_drop_pts": 100 * (plain - private)}


OVERFIT = ['data.dataset="mnist1d"', "data.num_nodes=4", 'data.partition="iid"',
           "data.options={num_samples=4000}", "model.hidden=[256, 256]", "run.rounds=30",
           "local.epochs=5", "evaluation.personalize_steps=0", "energy.enabled=false"]


def audited(overrides: list[str]) -> tuple[float, float, dict]:
    from fedtune.privacy.audit import audit_run
    from fedtune.store import RunStore

    with tempfile.TemporaryDirectory() as ws:
        result = run(load_config(None, [*OVERFIT, *overrides, f'run.workspace="{ws}"']))
        store = RunStore(ws)
        try:
            report = audit_run(store.load_run(result.run_id))
        finally:
            store.close()
    worst = max(report["overall"].values(), key=lambda o: o["auc"])
    return worst["auc"], result.final_test_accuracy, report["overall"]


def audit() -> dict:
    auc_plain, acc_plain, plain = audited([])
    auc_dp, acc_dp, private = audited(["privacy.sample_dp=true", "privacy.sample_epsilon=8"])
    return {"bench": "privacy", "setting": "audit", "epsilon": 8.0, "delta": DELTA,
            "mia_auc_dp": auc_dp, "mia_auc_nonprivate": auc_plain, "accuracy": acc_dp,
            "accuracy_nonprivate": acc_plain, "accuracy_drop_pts": 100 * (acc_plain - acc_dp),
            "attacks_dp": private, "attacks_nonprivate": plain}


def main() -> None:
    chosen = [a for a in sys.argv[1:] if not a.startswith("-")] or ["client-dp", "sample-dp",
                                                                     "audit"]
    rows = []
    if "client-dp" in chosen:
        rows.append(client_dp())
    if "sample-dp" in chosen:
        rows += [sample_dp("breast_cancer", "sample-dp"),
                 sample_dp("digits", "sample-dp-small-sites")]
    if "audit" in chosen:
        rows.append(audit())
    for row in rows:
        if row["setting"] == "audit":
            print(f"audit: membership-inference AUC {row['mia_auc_nonprivate']:.3f} without DP, "
                  f"{row['mia_auc_dp']:.3f} with DP-SGD at epsilon 8 (0.5 = no leak)")
        else:
            print(f"{row['setting']}: epsilon {row['epsilon']:.2f}: accuracy "
                  f"{100 * row['accuracy']:.2f} % vs {100 * row['accuracy_nonprivate']:.2f} % "
                  f"without privacy ({row['accuracy_drop_pts']:.2f} points)")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
