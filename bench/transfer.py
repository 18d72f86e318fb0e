"""Transfer: broadcast a large parameter vector to 4 sites and collect 4 equally large updates.

The coordinator is fedtune's gRPC server runtime in this process; each site is a separate
process that speaks the real protocol (the same chunked Session stream as `fedtune join`):
it receives the FitIns, and answers with a FitRes whose update is as large as the model.
Sites report when their download started and ended and when their upload started, so each
stream's throughput is measured where it happens. Coordinator peak memory is this process's
maximum RSS minus its RSS before the model existed, as a multiple of the model size.
Uploads are limited to one in flight (server.max_concurrent_uploads = 1) and each reply is
dropped once received, as a streaming aggregator does.

Prints a human summary and, last, one JSON line of figures.
Usage: python bench/transfer.py [--sizes-mb 100 1000]
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import statistics
import subprocess
import sys
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
    outbox.put([control_chunk("hello", site=name), control_chunk("ready", site=name)])

    def requests():
        while (item := outbox.get()) is not None:
            yield from item

    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_FRAME_BYTES),
        ("grpc.max_send_message_length", MAX_FRAME_BYTES)])
    responses = open_session(channel)(requests(), metadata=(("x-fedtune-site", name),))
    asm = Assembler(8 * 2**30)
    start = None
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
        got = time.time()
        ins = decode_assembly(done, require_finite=False)
        res = FitRes(name, ins.round, ins.params, 1, 1, 0.0,
                     meter=NodeMeter(wall_s=start, cpu_s=got, energy_j=time.time()))
        outbox.put(message_chunks("result", res, task_id=done.task_id, round_=done.round,
                                  chunk_bytes=4 * 2**20, site=name))
        del ins, done
    outbox.put(None)
    channel.close()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(size_mb: int, port: int) -> dict:
    import torch

    from fedtune.config import ServerSection
    from fedtune.runtime.grpc.server import GrpcRuntime
    from fedtune.types import FitIns, FitRes

    address = f"127.0.0.1:{port}"
    numel = size_mb * 2**20 // 4
    runtime = GrpcRuntime(ServerSection(address=address, insecure_no_auth=True,
                                        max_concurrent_uploads=1, round_deadline_s=3600),
                          welcome={}, expected_bytes=numel * 4 + 2**20)
    sites = [subprocess.Popen([sys.executable, __file__, "--site", address, f"site-{i}"])
             for i in range(SITES)]
    try:
        runtime.wait_for_nodes(SITES)
        base = rss_mb()
        params = torch.randn(numel)
        t0 = time.time()
        down, up = [], []
        for reply in runtime.fit(runtime.node_ids, FitIns(1, params, {})):
            t_reply = time.time()
            res = reply.result
            assert isinstance(res, FitRes), res
            m = res.meter
            down.append(size_mb / max(m.cpu_s - m.wall_s, 1e-9))
            up.append(size_mb / max(t_reply - m.energy_j, 1e-9))
            del res, reply
        total = time.time() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        runtime.close()
        for p in sites:
            p.wait(timeout=120)
    return {"size_mb": size_mb, "download_mb_s_per_stream": statistics.median(down),
            "upload_mb_s_per_stream": statistics.median(up),
            "min_stream_mb_s": min(down + up),
            "round_trip_s": total, "aggregate_mb_s": 2 * SITES * size_mb / total,
            "coordinator_peak_over_base_mb": peak - base,
            "coordinator_peak_x_model": (peak - base) / size_mb}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--site":
        site_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    import socket

    rows = []
    for size in args.sizes_mb:
        # each size in a fresh process so peak RSS belongs to that size alone
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, __file__, "--measure", str(size), str(port)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{size:5d} MB x {SITES} sites: download {r['download_mb_s_per_stream']:.0f} MB/s "
              f"per stream, upload {r['upload_mb_s_per_stream']:.0f} MB/s per stream (target "
              f">= 500), coordinator peak {r['coordinator_peak_x_model']:.2f}x the model (<= 3)")
    print(json.dumps({"bench": "transfer", "sites": SITES, "settings": rows}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
