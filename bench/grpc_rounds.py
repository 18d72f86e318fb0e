"""Round time over gRPC (10 site processes on loopback) vs the in-process simulation.

The digits workload of bench/overhead.py (10 nodes Dirichlet(0.5), MLP 64-128-10, 1 local
epoch, batch 32, SGD lr 0.05, central evaluation every round), 20 rounds; the figure is the
median round time over rounds 3-20 (a round ends when the coordinator has recorded it). Each
side runs in its own process, as users run them: the simulation as `fedtune run --threads 1`
does, the coordinator as `fedtune serve --threads 1`, each site as `fedtune join --threads 1`
(eleven processes share two cores here, so each gets one torch thread; idle OpenMP threads
sleep, as `serve` and `join` set). Both runs must end with the same test loss (same numbers,
which needs the same torch thread count on both sides).

A third figure is the floor this machine allows: the same ten site processes doing the same
node training per round, driven by the plainest possible gRPC exchange (raw bytes echoed over
one stream per site, no framework on either side). It shows how much of the gRPC round time
is ten processes sharing two cores rather than fedtune. (The floor leaves out what every
coordinator does between rounds, in-process too: evaluate, record; so it is a low floor.)
``fedtune_over_floor`` is against this floor. Beside it, the same echo on gRPC's asyncio
server (``aio_floor_round_s``: one event loop instead of two threads per stream), which shows
what moving the coordinator to grpc.aio could save in transport alone.

The coordinator's CPU per round is also reported by kind of thread, and both echo servers'
(the round loop, the sessions' readers, the gRPC pool threads that send, gRPC's own C++
threads), from /proc.

A fourth figure is the CPU time of the round's node training, summed over the ten nodes, in
ten site processes and in the simulation's one process: the training alone needs that much
CPU, so over gRPC a round cannot be shorter than half of it on this machine's two cores,
while a machine with a core per site would train the ten nodes at once.

Prints a human summary and, last, one JSON line of figures.
Usage: python bench/grpc_rounds.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

SITES = 10
OVERRIDES = ["data.dataset=digits", f"data.num_nodes={SITES}", "data.partition=dirichlet",
             "data.alpha=0.5", "model.hidden=[128]", "local.epochs=1", "local.batch_size=32",
             "local.lr=0.05", "local.momentum=0.0", "run.eval_every=1",
             "evaluation.personalize_steps=0", "run.checkpoint_every=0",
             f"strategy.min_nodes={SITES}", "server.insecure_no_auth=true"]
IDLE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # what `fedtune serve` and `fedtune join` set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(ws: str, port: int, rounds: int):
    from fedtune.config import load_config

    return load_config(None, [*OVERRIDES, f"run.rounds={rounds}", f"run.workspace=\"{ws}\"",
                              f"server.address=\"127.0.0.1:{port}\""])


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by kind of thread (Linux /proc/.../
    schedstat, named
    through Python's threads' native ids): the round loop, the sessions' readers, the gRPC
    pool threads that run the response streams, the run store's writer, gRPC's own C++
    threads, and the rest."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:  # nanoseconds on a CPU (the stat file's ticks are too coarse for one thread)
            cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
        except OSError:
            continue  # the thread ended
        name = names.get(int(task.name))
        if name is None:
            group = "gRPC C++ threads"
        elif name == "MainThread":
            group = "round loop (main thread)"
        elif name.startswith("fedtune-read"):
            group = "session readers"
        elif name.startswith("fedtune-rpc"):
            group = "response streams (gRPC pool)"
        elif name.startswith("fedtune-store"):
            group = "run store writer"
        else:
            group = "other Python threads"
        out[group] = out.get(group, 0.0) + cpu
    return out


def cpu_per_round(before: dict[str, float], after: dict[str, float],
                  rounds: int) -> dict[str, float]:
    return {k: round((v - before.get(k, 0.0)) / rounds * 1000, 2) for k, v in after.items()}


def part_federated(kind: str, ws: str, port: int, rounds: int) -> dict:
    """One side in this process: `run` (simulation) or `serve` (coordinator)."""
    import torch

    from fedtune.experiment import run, serve

    # fedtune serve --threads 1; the simulation as `fedtune run --threads 1`, so that its
    # nodes train with as many threads as the sites (bitwise the same numbers need that)
    torch.set_num_threads(1)
    stamps: list[float] = []
    cpu: list[dict[str, float]] = []

    def on_round(_: object) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) in (3, rounds + 1):  # after round 2, and after the last round
            cpu.append(thread_cpu())

    fn = run if kind == "run" else serve
    result = fn(config(ws, port, rounds), on_start=lambda *_: stamps.append(time.perf_counter()),
                on_round=on_round)
    rounds_s = [b - a for a, b in pairwise(stamps)]
    per_round = cpu_per_round(cpu[0], cpu[1], rounds - 2)
    return {"round_s": statistics.median(rounds_s[2:]), "test_loss": result.final_test_loss,
            "test_accuracy": result.final_test_accuracy,
            "site_cpu_s": site_cpu_per_round(ws, result.run_id),
            "thread_cpu_ms_per_round": per_round}


def site_cpu_per_round(ws: str, run_id: str) -> float:
    """Median over rounds 3+ of the CPU seconds the round's node training took, summed over
    the nodes (each node meters its own fit: in its process, or in the simulation's)."""
    from collections import defaultdict

    from fedtune.store import RunStore

    store = RunStore(ws)
    per_round: dict[int, float] = defaultdict(float)
    for row in store.load_run(run_id)["node_metrics"]:
        if row["phase"] == "fit" and row["round"] >= 3:
            per_round[row["round"]] += row["cpu_s"]
    store.close()
    return statistics.median(per_round.values())


def floor_site(address: str, node: str, ws: str, port: int, rounds: int) -> None:
    """A site of the floor measurement: fedtune's Node trains, raw gRPC carries bytes."""
    import grpc
    import torch

    from fedtune.machine import make_meter
    from fedtune.node.node import Node, Workbench
    from fedtune.tasks import build_task
    from fedtune.types import FitIns

    torch.set_num_threads(1)
    cfg = config(ws, port, rounds)
    task = build_task(cfg)
    data = {n.node_id: n for n in task.data.nodes}[node]
    bench = Workbench.create(task, torch.device("cpu"), cfg.run.seed)
    meter, co2 = make_meter(cfg)
    worker = Node(data, seed=cfg.run.seed, meter=meter, co2_per_joule=co2,
                  device=torch.device("cpu"))
    params = bench.flat.vector.detach().clone()
    plan = {**cfg.local.model_dump()}
    outbox: queue.Queue = queue.Queue()
    outbox.put(b"hello")

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    channel = grpc.insecure_channel(address)
    call = channel.stream_stream("/floor/Echo", request_serializer=None,
                                 response_deserializer=None)
    for round_, message in enumerate(call(requests()), start=1):
        if message == b"stop":
            break
        worker.fit(FitIns(round_, params, plan), bench)
        outbox.put(message)
    outbox.put(None)
    channel.close()


def floor_sites(ws: str, port: int, rounds: int) -> list[subprocess.Popen]:
    """The floor's ten site processes (fedtune's Node training, raw gRPC)."""
    return [subprocess.Popen([sys.executable, __file__, "--part", "floor-site",
                              f"127.0.0.1:{port}", f"node-{i}", ws, str(port), str(rounds)],
                             env={**os.environ, **IDLE_ENV}) for i in range(SITES)]


def floor_figures(stamps: list[float], cpu: list[dict[str, float]], rounds: int) -> dict:
    """An echo server's median round over rounds 3+ and its CPU per round by thread."""
    rounds_s = [b - a for a, b in pairwise(stamps)]
    return {"round_s": statistics.median(rounds_s[2:]),
            "thread_cpu_ms_per_round": cpu_per_round(cpu[0], cpu[-1], rounds - 2)}


def part_floor(ws: str, port: int, rounds: int) -> dict:
    from concurrent import futures

    import grpc

    replies: queue.Queue = queue.Queue()
    outboxes: list[queue.Queue] = []

    def echo(requests, context):
        box: queue.Queue = queue.Queue()
        next(requests)
        outboxes.append(box)

        def read():
            try:
                for message in requests:
                    replies.put(message)
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True, name="fedtune-read-floor").start()
        while (message := box.get()) is not None:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "floor", {"Echo": grpc.stream_stream_rpc_method_handler(echo)})
    server = grpc.server(futures.ThreadPoolExecutor(32, thread_name_prefix="fedtune-rpc"))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    sites = floor_sites(ws, port, rounds)
    while len(outboxes) < SITES:
        time.sleep(0.05)  # start-up only: the sites import torch and load their data
    payload = os.urandom(38_528)  # the digits FitIns / FitRes size
    stamps = []
    cpu: list[dict[str, float]] = []
    for _ in range(rounds):
        if len(stamps) == 2:
            cpu.append(thread_cpu())
        for box in outboxes:
            box.put(payload)
        for _ in range(SITES):
            replies.get()
        stamps.append(time.perf_counter())
    cpu.append(thread_cpu())
    for box in outboxes:
        box.put(b"stop")
        box.put(None)
    for p in sites:
        p.wait(timeout=60)
    server.stop(0)
    return floor_figures(stamps, cpu, rounds)


async def part_aio_floor(ws: str, port: int, rounds: int) -> dict:
    """The same echo on gRPC's asyncio server: one event loop instead of a reader thread
    and a pool thread per stream (what a coordinator on grpc.aio could save)."""
    import asyncio

    import grpc

    outboxes: list[asyncio.Queue] = []
    replies: asyncio.Queue = asyncio.Queue()
    readers = set()

    async def echo(requests, context):
        box: asyncio.Queue = asyncio.Queue()
        stream = requests.__aiter__()
        await stream.__anext__()
        outboxes.append(box)

        async def read():
            try:
                async for message in stream:
                    replies.put_nowait(message)
            except grpc.RpcError:
                pass

        readers.add(asyncio.ensure_future(read()))
        while (message := await box.get()) is not None:
            yield message

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "floor", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    sites = floor_sites(ws, port, rounds)
    while len(outboxes) < SITES:
        await asyncio.sleep(0.05)  # start-up only
    payload = os.urandom(38_528)
    stamps: list[float] = []
    cpu: list[dict[str, float]] = []
    for _ in range(rounds):
        if len(stamps) == 2:
            cpu.append(thread_cpu())
        for box in outboxes:
            box.put_nowait(payload)
        for _ in range(SITES):
            await replies.get()
        stamps.append(time.perf_counter())
    cpu.append(thread_cpu())
    for box in outboxes:
        box.put_nowait(b"stop")
        box.put_nowait(None)
    for p in sites:
        await asyncio.get_running_loop().run_in_executor(None, p.wait)
    await server.stop(0)
    return floor_figures(stamps, cpu, rounds)


def run_part(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", *args], capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rounds = args.rounds
    fedtune = str(Path(sys.executable).parent / "fedtune")
    with tempfile.TemporaryDirectory() as ws:
        local = run_part(["run", ws, "0", str(rounds)])
        port = free_port()
        sites = [subprocess.Popen([fedtune, "join", "--server", f"127.0.0.1:{port}", "--site",
                                   f"node-{i}", "--threads", "1"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(SITES)]
        try:
            remote = run_part(["serve", ws, str(port), str(rounds)], IDLE_ENV)
        finally:
            for p in sites:
                p.wait(timeout=60)
        floor = run_part(["floor", ws, str(free_port()), str(rounds)])
        aio = run_part(["aio-floor", ws, str(free_port()), str(rounds)])
    figures = {"bench": "grpc_rounds", "sites": SITES,
               "round_time_ratio": remote["round_s"] / local["round_s"],
               "grpc_round_s": remote["round_s"], "inprocess_round_s": local["round_s"],
               "floor_round_s": floor["round_s"],
               "floor_ratio": floor["round_s"] / local["round_s"],
               "fedtune_over_floor": remote["round_s"] / floor["round_s"],
               "site_cpu_per_round_s": {"grpc": remote["site_cpu_s"],
                                        "inprocess": local["site_cpu_s"]},
               "coordinator_cpu_ms_per_round": remote["thread_cpu_ms_per_round"],
               "floor_coordinator_cpu_ms_per_round": floor["thread_cpu_ms_per_round"],
               "aio_floor_round_s": aio["round_s"],
               "aio_floor_server_cpu_ms_per_round": aio["thread_cpu_ms_per_round"],
               "same_test_loss": remote["test_loss"] == local["test_loss"],
               "test_accuracy": remote["test_accuracy"]}
    print(f"round over gRPC {remote['round_s'] * 1000:.1f} ms vs in-process "
          f"{local['round_s'] * 1000:.1f} ms: {figures['round_time_ratio']:.2f}x (target <= 1.5);"
          f" same test loss: {figures['same_test_loss']}")
    print(f"floor on this machine (same 10 site processes and node training, raw gRPC echo): "
          f"{floor['round_s'] * 1000:.1f} ms, {figures['floor_ratio']:.2f}x in-process; "
          f"fedtune over gRPC is {figures['fedtune_over_floor']:.2f}x the floor")
    print(f"node training per round, CPU summed over the 10 nodes: "
          f"{remote['site_cpu_s'] * 1000:.1f} ms in 10 site processes vs "
          f"{local['site_cpu_s'] * 1000:.1f} ms in one process (two cores here)")
    print(f"the same echo on gRPC's asyncio server: {aio['round_s'] * 1000:.1f} ms per round")
    for name, side in (("coordinator", remote), ("floor's server", floor),
                       ("asyncio echo server", aio)):
        per_thread = side["thread_cpu_ms_per_round"]
        print(f"{name} CPU per round by thread (ms), {sum(per_thread.values()):.2f} in all: "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_thread.items(),
                                                           key=lambda kv: -kv[1])))
    print(json.dumps(figures))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        part, rest = sys.argv[2], sys.argv[3:]
        if part == "floor-site":
            floor_site(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        elif part == "floor":
            print(json.dumps(part_floor(rest[0], int(rest[1]), int(rest[2]))))
        elif part == "aio-floor":
            import asyncio

            print(json.dumps(asyncio.run(part_aio_floor(rest[0], int(rest[1]), int(rest[2])))))
        else:
            print(json.dumps(part_federated(part, rest[0], int(rest[1]), int(rest[2]))))
    else:
        main()
