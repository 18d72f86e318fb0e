"""Communication: bytes on the wire to reach a target accuracy, with and without compression,
and LoRA adapters vs full fine-tuning of a pretrained transformer.

Part ``digits``: the default experiment's workload (digits, 10 nodes Dirichlet(0.5), MLP
64-128-10), FedAvg, up to 80 rounds, with uplink fp32, 8-bit, top-k 1 % + error feedback,
4-bit + top-k 10 % + error feedback, and 8-bit + top-k 1 % + error feedback. The target is
the fp32 run's accuracy after 40 rounds minus one point; each setting reports the uplink and
downlink bytes spent until its central test accuracy first reaches the target, and its round
time on a simulated 10 MB/s link (nodes train in parallel; a round lasts as long as its
slowest node's compute plus transfers).

Part ``minilm``: MiniLM-L6 on Rotten Tomatoes snippets (1,500 sampled, 5 IID sites). Full
fine-tuning with FedAvg runs 6 rounds; its accuracy minus two points is the target. Then LoRA
(r = 8, query and value) runs up to 15 rounds with FedAvg, with DiLoCo's outer Nesterov
optimizer, and hybrid (the coordinator first trains adapters and head on a 20 % central
split, then the federation fine-tunes). Each reports bytes per round, bytes to reach the
target, and the ratio of full fine-tuning's bytes to target over its own.

Prints one JSON line per setting, each with "bench": "communication".
Usage: python bench/communication.py [--part digits|minilm|all]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

LINK_BYTES_PER_S = 10e6
DIGITS = ["data.dataset=digits", "data.num_nodes=10", "data.partition=dirichlet",
          "data.alpha=0.5", "evaluation.personalize_steps=0", "run.checkpoint_every=0"]
SETTINGS = {"fp32": [], "q8": ["compression.uplink=q8"],
            "topk1%+ef": ["compression.uplink=\"topk:0.01\""],
            "q4+topk10%+ef": ["compression.uplink=\"topk:0.1+q4\""],
            "q8+topk1%+ef": ["compression.uplink=\"topk:0.01+q8\""]}


def _run(overrides: list[str], workspace: str):
    from fedtune.config import load_config
    from fedtune.experiment import run

    cfg = load_config(None, [*overrides, f"run.workspace=\"{workspace}\""])
    return run(cfg)


def _round_times(workspace: str, run_id: str) -> dict[int, float]:
    """Round time on the simulated link: max over nodes of compute + bytes / link rate,
    plus the coordinator's own work."""
    db = sqlite3.connect(Path(workspace) / "runs.sqlite")
    per_round: dict[int, float] = defaultdict(float)
    server: dict[int, float] = defaultdict(float)
    for rnd, node, phase, wall, down, up in db.execute(
            "SELECT round, node_id, phase, wall_s, bytes_down, bytes_up FROM node_metrics "
            "WHERE run_id=?", (run_id,)):
        if phase == "fit":
            per_round[rnd] = max(per_round[rnd], wall + (down + up) / LINK_BYTES_PER_S)
        elif node == "coordinator":
            server[rnd] += wall
    return {r: per_round[r] + server[r] for r in per_round}


def _to_target(result, target: float) -> dict:
    up = down = 0
    for rec in result.rounds:
        up += rec.bytes_up
        down += rec.bytes_down
        if rec.test_accuracy is not None and rec.test_accuracy >= target:
            return {"rounds_to_target": rec.round, "uplink_bytes_to_target": up,
                    "downlink_bytes_to_target": down}
    return {"rounds_to_target": None, "uplink_bytes_to_target": None,
            "downlink_bytes_to_target": None}


def digits_part() -> None:
    with tempfile.TemporaryDirectory() as ws:
        ref = _run([*DIGITS, "run.rounds=40"], ws)
        target = ref.final_test_accuracy - 0.01
        rows = {}
        for name, extra in SETTINGS.items():
            res = _run([*DIGITS, "run.rounds=80", *extra], ws)
            times = _round_times(ws, res.run_id)
            row = {"bench": "communication", "task": "digits", "setting": name,
                   "target_accuracy": target, "final_accuracy_80_rounds": res.final_test_accuracy,
                   **_to_target(res, target),
                   "sim_round_s_10MBps": sum(times.values()) / len(times),
                   "uplink_bytes_per_round": res.rounds[-1].bytes_up}
            rows[name] = row
        base = rows["fp32"]
        for row in rows.values():
            if row["uplink_bytes_to_target"] and base["uplink_bytes_to_target"]:
                row["uplink_reduction_x"] = (base["uplink_bytes_to_target"]
                                             / row["uplink_bytes_to_target"])
            row["sim_round_time_vs_fp32"] = row["sim_round_s_10MBps"] / base["sim_round_s_10MBps"]
            print(json.dumps(row), flush=True)


MINILM = ["data.dataset=rotten_tomatoes", "data.options={max_samples = 1500, max_length = 32}",
          "data.num_nodes=5", "data.partition=iid",
          "evaluation.personalize_steps=0", "run.checkpoint_every=0", "local.optimizer=adamw",
          "local.epochs=1", "local.batch_size=32"]
MINILM_SETTINGS = {
    "full-fedavg": ["model.kind=minilm-full", "local.lr=0.0001", "run.rounds=6"],
    "lora-fedavg": ["model.kind=minilm-lora", "local.lr=0.003", "run.rounds=15"],
    "lora-diloco": ["model.kind=minilm-lora", "local.lr=0.003", "strategy.name=diloco",
                    "run.rounds=15"],
    "lora-hybrid": ["model.kind=minilm-lora", "local.lr=0.003", "data.central_fraction=0.2",
                    "run.rounds=15",
                    "central.pretrain_steps=40", "central.lr=0.003",
                    "central.optimizer=adamw"],
}


def minilm_part() -> None:
    import time

    rows = {}
    target = 0.0
    with tempfile.TemporaryDirectory() as ws:
        for name, extra in MINILM_SETTINGS.items():
            t0 = time.perf_counter()
            res = _run([*MINILM, *extra], ws)
            if name == "full-fedavg":
                target = res.final_test_accuracy - 0.02
            times = _round_times(ws, res.run_id)
            rows[name] = {"bench": "communication", "task": "minilm-rottentomatoes",
                          "setting": name, "target_accuracy": target,
                          "final_accuracy": res.final_test_accuracy,
                          "accuracy_by_round": [r.test_accuracy for r in res.rounds],
                          **_to_target(res, target),
                          "uplink_bytes_per_round": res.rounds[-1].bytes_up,
                          "sim_round_s_10MBps": sum(times.values()) / len(times),
                          "wall_s": time.perf_counter() - t0}
    full = rows["full-fedavg"]
    for row in rows.values():
        row["uplink_per_round_reduction_vs_full_x"] = (full["uplink_bytes_per_round"]
                                                       / row["uplink_bytes_per_round"])
        if row["uplink_bytes_to_target"] and full["uplink_bytes_to_target"]:
            row["uplink_to_target_reduction_vs_full_x"] = (full["uplink_bytes_to_target"]
                                                           / row["uplink_bytes_to_target"])
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["digits", "minilm", "all"], default="all")
    args = parser.parse_args()
    if args.part in ("digits", "all"):
        digits_part()
    if args.part in ("minilm", "all"):
        minilm_part()


if __name__ == "__main__":
    main()
