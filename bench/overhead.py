"""Framework overhead: fedtune vs a plain single-process PyTorch loop doing the same training.

Workload (issue #2): digits, 10 nodes Dirichlet(0.5), MLP 64-128-10, 1 local epoch, batch 32,
SGD lr 0.05, 20 rounds, central evaluation every round. Both variants use the same data split
and the same initial weights; each runs in its own subprocess (so peak RSS is its own), three
times, alternating, and the medians are compared. One-time import costs are paid before the
timers start, the same way in both. fedtune runs as a user runs it: run store,
checkpoints every 10 rounds, energy metering on.

Prints a human summary and, last, one JSON line of figures.
Usage: python bench/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 20
OVERRIDES = ["data.dataset=digits", "data.num_nodes=10", "data.partition=dirichlet",
             "data.alpha=0.5", "model.hidden=[128]", "local.epochs=1", "local.batch_size=32",
             "local.lr=0.05", "local.momentum=0.0", f"run.rounds={ROUNDS}", "run.eval_every=1",
             "evaluation.personalize_steps=0", "run.checkpoint_every=10"]


def _config(workspace: str):
    from fedtune.config import load_config

    return load_config(None, [*OVERRIDES, f"run.workspace=\"{workspace}\""])


def run_fedtune(workspace: str) -> dict:
    from fedtune.experiment import run

    cfg = _config(workspace)
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = run(cfg, on_start=lambda *_: stamps.append(time.perf_counter()),
                 on_round=lambda _: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    rounds = [b - a for a, b in itertools.pairwise(stamps)]
    return {"total_s": total, "round_s": statistics.median(rounds[2:]),
            "accuracy": result.final_test_accuracy}


def run_plain(workspace: str) -> dict:
    """What a careful PyTorch user writes by hand: state_dicts, torch.optim.SGD, averaging."""
    import torch
    from torch.nn import functional as F

    from fedtune.seeds import derived_seed
    from fedtune.tasks import build_task

    t0 = time.perf_counter()
    cfg = _config(workspace)
    task = build_task(cfg)
    torch.manual_seed(cfg.run.seed)
    model = task.model_factory()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    stamps = [time.perf_counter()]
    for r in range(1, ROUNDS + 1):
        states, weights = [], []
        for node in task.data.nodes:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, r, node.node_id, "fit"))
            n = node.x_train.shape[0]
            order = torch.randperm(n, generator=gen)
            model.train()
            for start in range(0, n, 32):
                idx = order[start:start + 32]
                opt.zero_grad()
                F.cross_entropy(model(node.x_train[idx]), node.y_train[idx]).backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(n)
        total = sum(weights)
        global_state = {k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True))
                        for k in global_state}
        model.load_state_dict(global_state)
        model.eval()
        with torch.no_grad():
            acc = float((model(task.data.x_test).argmax(1) == task.data.y_test).float().mean())
        stamps.append(time.perf_counter())
    rounds = [b - a for a, b in itertools.pairwise(stamps)]
    return {"total_s": time.perf_counter() - t0, "round_s": statistics.median(rounds[2:]),
            "accuracy": acc}


def metering_cost() -> float:
    """Seconds one node's metering costs (clock reads + energy meter start/stop)."""
    from fedtune.energy import EnergyMeter

    meter = EnergyMeter()
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        w, c, tok = time.perf_counter(), time.process_time(), meter.start()
        meter.stop(tok, time.process_time() - c)
        _ = time.perf_counter() - w
    return (time.perf_counter() - t0) / n


def warm_up(workspace: str) -> None:
    """Pay one-time costs outside the timers, identically for both variants: imports
    (scikit-learn, torch.optim's lazy dynamo hooks), the first autograd pass."""
    import torch

    from fedtune.tasks import build_task

    build_task(_config(workspace))
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()


def child(variant: str) -> None:
    with tempfile.TemporaryDirectory() as ws:
        warm_up(ws)
        out = run_fedtune(ws) if variant == "fedtune" else run_plain(ws)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["fedtune", "plain"])
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results: dict[str, list[dict]] = {"fedtune": [], "plain": []}
    for _ in range(args.repeats):
        for variant in ("plain", "fedtune"):
            proc = subprocess.run([sys.executable, __file__, "--child", variant],
                                  capture_output=True, text=True, check=True)
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    per_node = metering_cost()
    calls = ROUNDS * 10 + 10 + ROUNDS  # fits + final evaluations + server-side phases
    figures = {
        "bench": "overhead",
        "total_time_ratio": med("fedtune", "total_s") / med("plain", "total_s"),
        "steady_round_ratio": med("fedtune", "round_s") / med("plain", "round_s"),
        "peak_memory_ratio": med("fedtune", "peak_rss_mb") / med("plain", "peak_rss_mb"),
        "fedtune_total_s": med("fedtune", "total_s"), "plain_total_s": med("plain", "total_s"),
        "fedtune_round_s": med("fedtune", "round_s"), "plain_round_s": med("plain", "round_s"),
        "fedtune_peak_rss_mb": med("fedtune", "peak_rss_mb"),
        "plain_peak_rss_mb": med("plain", "peak_rss_mb"),
        "fedtune_accuracy": med("fedtune", "accuracy"), "plain_accuracy": med("plain", "accuracy"),
        "metering_fraction_of_run": per_node * calls / med("fedtune", "total_s"),
        "repeats": args.repeats,
    }
    print(f"fedtune vs plain PyTorch: total {figures['total_time_ratio']:.3f}x (target <= 1.25), "
          f"steady round {figures['steady_round_ratio']:.3f}x (<= 1.15), peak memory "
          f"{figures['peak_memory_ratio']:.3f}x (<= 1.2); accuracy {figures['fedtune_accuracy']:.4f}"
          f" vs {figures['plain_accuracy']:.4f}; metering "
          f"{100 * figures['metering_fraction_of_run']:.3f} % of the run")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
