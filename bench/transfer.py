"""Transfer: broadcast a large parameter vector to 4 sites and collect 4 equally large updates.

The coordinator is fedtune's own: the :class:`Coordinator` of ``fedtune serve`` with its gRPC
runtime and run store (a state file every round, as serve writes for --resume), in this
process. Its model has the given number of trainable parameters: a small classifier head,
which the coordinator evaluates every round, plus one large block of weights that travels
like the rest. Each site is a separate process that speaks the real protocol (the same
chunked Session stream as `fedtune join`): it receives the FitIns and answers with a FitRes
whose update is as large as the model. The coordinator folds each reply into one running sum
in selection order as it arrives, takes the FedAvg step, evaluates and records the round.

Per stream: a download's rate is measured at its site (first to last byte), an upload's at
the coordinator (from the moment its buffer is admitted to the last byte). Each setting runs
`--rounds` rounds (default 3) in a fresh process; rates are the median over rounds 2+, and
round 1 is reported on its own: it includes the first touch of fresh memory, which on this
VM costs up to 2.8 s per GB (the host backs guest memory lazily), and a long-running
federation pays it once. Coordinator peak memory is this process's maximum RSS minus its RSS
before the model existed (building the model included), as a multiple of the model size.

Settings (`--at-once`): 1 = server.max_concurrent_uploads = max_concurrent_downloads = 1
(one large transfer at a time: uploads are read one by one and only while no broadcast is
being sent); 4 = no limits (all four streams at once). `--park` adds server.park_model = true
(the model waits in a temporary file while updates come in); `--park 0 1` measures both.

Prints a human summary and, last, one JSON line of figures.
Usage: python bench/transfer.py [--sizes-mb 100 1000] [--at-once 1 4] [--park 0 1]
                                [--rounds 3] [--sites 4]
(`--sizes-mb 2200 --sites 2 --rounds 1` shows a message beyond protobuf's 2 GB limit.)
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SITES = 4


def site_main(address: str, name: str) -> None:
    import grpc

    from fedtune.runtime.grpc.transfer import (
        MAX_FRAME_BYTES,
        Assembler,
        control_chunk,
        decode_assembly,
        message_chunks,
        open_session,
    )
    from fedtune.types import FitRes, NodeMeter

    outbox: queue.Queue = queue.Queue()
    outbox.put([control_chunk("hello", site=name),
                control_chunk("ready", text='{"train_examples": 1000}', site=name)])

    def requests():
        while (item := outbox.get()) is not None:
            yield from item

    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
        ("grpc.max_send_message_length", MAX_FRAME_BYTES)])
    responses = open_session(channel)(requests(), metadata=(("x-fedtune-site", name),))
    asm = Assembler(8 * 2**30, reuse=True)  # as `fedtune join` does
    start = 0.0
    for chunk in responses:
        if chunk.kind == "stop":
            break
        if chunk.kind != "fit":
            continue
        if chunk.first:
            start = time.time()
        done = asm.add(chunk)
        if done is None:
            continue
        seconds = time.time() - start  # the download, first to last byte
        if os.environ.get("FEDTUNE_BENCH_TRACE"):
            print(f"{name} round {done.round}: download {start % 1000:.2f}..+{seconds:.2f} s",
                  file=sys.stderr)
        ins = decode_assembly(done, require_finite=False)
        res = FitRes(name, ins.round, ins.params, 1, 1, 0.0,
                     meter=NodeMeter(wall_s=seconds, cpu_s=0.0, energy_j=0.0))
        outbox.put(message_chunks("result", res, task_id=done.task_id, round_=done.round,
                                  chunk_bytes=4 * 2**20, site=name))
        del ins, done, res  # the buffer can take the next round's model
    outbox.put(None)
    channel.close()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def ballast_task(numel: int):
    """A task whose model has ``numel`` trainable float32 parameters: a 16 -> 4 classifier
    head (what is evaluated) and one block of weights that travels like the rest."""
    import torch
    from torch import nn

    from fedtune.task import make_task

    class Ballast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 4)
            self.block = nn.Parameter(torch.randn(numel - 68))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    return make_task(Ballast, {"site-0": ((x, y), (x, y))}, (x, y), num_classes=4,
                     name="ballast")


def measure(size_mb: int, port: int, limit: int, rounds: int, sites_n: int = SITES,
            park: int = 0) -> dict:
    import torch

    from fedtune.algorithms.strategy import build_strategy
    from fedtune.config import config_from_dict
    from fedtune.coordinator import Coordinator
    from fedtune.machine import make_meter
    from fedtune.node.node import Workbench
    from fedtune.rounds.sync import sync_round
    from fedtune.runtime.grpc.server import GrpcRuntime
    from fedtune.store import RunStore

    address = f"127.0.0.1:{port}"
    numel = size_mb * 2**20 // 4
    workspace = tempfile.mkdtemp(prefix="fedtune-transfer-")
    cfg = config_from_dict({
        "run": {"rounds": rounds, "workspace": workspace, "checkpoint_every": 0},
        "strategy": {"name": "fedavg", "min_nodes": sites_n},
        "energy": {"enabled": False},
        "server": {"address": address, "insecure_no_auth": True, "round_deadline_s": 3600,
                   "max_concurrent_uploads": limit, "max_concurrent_downloads": limit,
                   "park_model": bool(park)}})
    runtime = GrpcRuntime(cfg.server, welcome={}, expected_bytes=numel * 4 + 2**20)
    sites = [subprocess.Popen([sys.executable, __file__, "--site", address, f"site-{i}"])
             for i in range(sites_n)]
    store = RunStore(workspace)
    per_round = []
    try:
        runtime.wait_for_nodes(sites_n)
        strategy, task = build_strategy("fedavg"), ballast_task(numel)
        meter, co2 = make_meter(cfg)
        run_id = store.start_run("transfer", cfg.model_dump())
        base = rss_mb()
        bench = Workbench.create(task, torch.device("cpu"), cfg.run.seed)
        coordinator = Coordinator(cfg, strategy, runtime, bench, meter=meter,
                                  co2_per_joule=co2, store=store, run_id=run_id,
                                  resumable=True)
        for round_ in range(1, rounds + 1):
            runtime.received.clear()
            record = sync_round(coordinator, round_)
            coordinator.writer.wait()  # the round's store writes run in the background
            assert not record.failed, record.failed
            rows = store.db.execute("SELECT wall_s FROM node_metrics WHERE run_id=? AND "
                                    "round=? AND phase='fit'", (run_id, round_)).fetchall()
            down = [size_mb / max(r["wall_s"], 1e-9) for r in rows]
            up = [size_mb * 2**20 / seconds / 2**20 for _, _, seconds in runtime.received]
            if os.environ.get("FEDTUNE_BENCH_TRACE"):
                print(f"round {round_}: downloads {[round(x) for x in down]} MB/s, uploads in "
                      f"arrival order {[round(x) for x in up]} MB/s", file=sys.stderr)
            per_round.append({"down": statistics.median(down), "up": statistics.median(up),
                              "min": min(down + up), "s": record.wall_s})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        runtime.close()
        store.close()
        for p in sites:
            p.wait(timeout=120)
        shutil.rmtree(workspace, ignore_errors=True)
    steady = per_round[1:] or per_round
    return {"size_mb": size_mb, "sites": sites_n, "transfers_at_once": limit or sites_n,
            "park_model": bool(park), "rounds": rounds,
            "download_mb_s_per_stream": statistics.median(r["down"] for r in steady),
            "upload_mb_s_per_stream": statistics.median(r["up"] for r in steady),
            "min_stream_mb_s": min(r["min"] for r in steady),
            "round_s": statistics.median(r["s"] for r in steady),
            "aggregate_mb_s": 2 * sites_n * size_mb / statistics.median(r["s"] for r in steady),
            "first_round": {"download_mb_s_per_stream": per_round[0]["down"],
                            "upload_mb_s_per_stream": per_round[0]["up"],
                            "round_s": per_round[0]["s"]},
            "coordinator_peak_over_base_mb": peak - base,
            "coordinator_peak_x_model": (peak - base) / size_mb}


def rounds_label(r: dict) -> str:
    if r["rounds"] == 1:
        return "round 1 only"
    first = r["first_round"]
    return (f"rounds 2+; round 1: {first['download_mb_s_per_stream']:.0f} / "
            f"{first['upload_mb_s_per_stream']:.0f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--site":
        site_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--sites", type=int, default=SITES)
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, SITES],
                        help="server.max_concurrent_uploads/downloads settings to measure")
    parser.add_argument("--park", type=int, nargs="+", default=[0],
                        help="server.park_model settings to measure (0 = off, 1 = on)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import socket

    rows = []
    for park in args.park:
        for at_once in args.at_once:
            for size in args.sizes_mb:
                # each setting in a fresh process so peak RSS belongs to that setting alone
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                limit = 0 if at_once >= args.sites else at_once
                proc = subprocess.run([sys.executable, __file__, "--measure", str(size),
                                       str(port), str(limit), str(args.rounds), str(args.sites),
                                       str(park)],
                                      capture_output=True, text=True, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{size:5d} MB x {args.sites} sites, {r['transfers_at_once']} transfer(s) "
                      f"at once{', model parked' if park else ''}: download "
                      f"{r['download_mb_s_per_stream']:.0f} MB/s per stream, upload "
                      f"{r['upload_mb_s_per_stream']:.0f} MB/s per stream (target >= 500), "
                      f"all {r['aggregate_mb_s']:.0f} MB/s ({rounds_label(r)}); coordinator "
                      f"peak {r['coordinator_peak_x_model']:.2f}x the model (<= 3)")
    print(json.dumps({"bench": "transfer", "sites": args.sites, "settings": rows}))


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--measure":
        print(json.dumps(measure(*map(int, sys.argv[2:]))))
    else:
        main()
