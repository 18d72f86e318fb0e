"""Round time over gRPC (10 site processes on loopback) vs the in-process simulation.

The digits workload of bench/overhead.py (10 nodes Dirichlet(0.5), MLP 64-128-10, 1 local
epoch, batch 32, SGD lr 0.05, central evaluation every round), 20 rounds; the figure is the
median round time over rounds 3-20. The coordinator runs in this process (`serve`), each site
is a `fedtune join --threads 1` process (ten sites share two cores here). Both runs must
end with the same test loss (same numbers).

Prints a human summary and, last, one JSON line of figures.
Usage: python bench/grpc_rounds.py
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROUNDS = 20
OVERRIDES = ["data.dataset=digits", "data.num_nodes=10", "data.partition=dirichlet",
             "data.alpha=0.5", "model.hidden=[128]", "local.epochs=1", "local.batch_size=32",
             "local.lr=0.05", "local.momentum=0.0", f"run.rounds={ROUNDS}", "run.eval_every=1",
             "evaluation.personalize_steps=0", "run.checkpoint_every=0",
             "strategy.min_nodes=10", "server.insecure_no_auth=true"]


def timed(fn, cfg) -> tuple[float, object]:
    stamps: list[float] = []
    result = fn(cfg, on_start=lambda *_: stamps.append(time.perf_counter()),
                on_round=lambda _: stamps.append(time.perf_counter()))
    rounds = [b - a for a, b in pairwise(stamps)]
    return statistics.median(rounds[2:]), result


def main() -> None:
    from fedtune.config import load_config
    from fedtune.experiment import run, serve

    fedtune = str(Path(sys.executable).parent / "fedtune")
    with tempfile.TemporaryDirectory() as ws, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cfg = load_config(None, [*OVERRIDES, f"run.workspace=\"{ws}\"",
                                 f"server.address=\"127.0.0.1:{port}\""])
        local_round, local = timed(run, cfg)
        sites = [subprocess.Popen([fedtune, "join", "--server", f"127.0.0.1:{port}", "--site",
                                   f"node-{i}", "--threads", "1"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(10)]
        try:
            grpc_round, remote = timed(serve, cfg)
        finally:
            for p in sites:
                p.wait(timeout=60)
    figures = {"bench": "grpc_rounds", "sites": 10, "round_time_ratio": grpc_round / local_round,
               "grpc_round_s": grpc_round, "inprocess_round_s": local_round,
               "same_test_loss": remote.final_test_loss == local.final_test_loss,
               "test_accuracy": remote.final_test_accuracy}
    print(f"round over gRPC {grpc_round * 1000:.1f} ms vs in-process {local_round * 1000:.1f} ms:"
          f" {figures['round_time_ratio']:.2f}x (target <= 1.5); same test loss: "
          f"{figures['same_test_loss']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
