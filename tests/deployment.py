"""Starting real coordinator and site processes on loopback for the deployment tests."""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from fedtune.config import ServerSection, load_config
from fedtune.runtime.grpc.fedtune_pb2 import Chunk
from fedtune.runtime.grpc.fedtune_pb2_grpc import FederationStub
from fedtune.runtime.grpc.server import GrpcRuntime
from fedtune.runtime.grpc.transfer import Assembler, Frame, control_chunk
from fedtune.types import FitIns

from .conftest import FEDTUNE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Federation:
    """A coordinator process and site processes in one temporary folder."""

    def __init__(self, root: Path, config: str, *, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = root / "config.toml"
        self.config.write_text(config.replace("{address}", self.address)
                               .replace("{workspace}", str(root / "ws")))
        self.sites: dict[str, subprocess.Popen[str]] = {}
        self.server: subprocess.Popen[str] | None = None

    def serve(self, *extra: str) -> subprocess.Popen[str]:
        log = (self.root / "serve.log").open("a")
        self.server = subprocess.Popen(
            [FEDTUNE, "serve", str(self.config), "--output", "json", *extra], cwd=self.root,
            stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL)
        return self.server

    def join(self, site: str, *extra: str) -> subprocess.Popen[str]:
        log = (self.root / f"{site}.log").open("a")
        proc = subprocess.Popen(
            [FEDTUNE, "join", "--server", self.address, "--site", site, *extra],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=log, text=True,
            stdin=subprocess.DEVNULL)
        self.sites[site] = proc
        return proc

    def start(self, sites: int, *join_extra: str) -> None:
        """The coordinator and sites node-0 .. node-(sites-1)."""
        self.serve()
        for i in range(sites):
            self.join(f"node-{i}", *join_extra)

    def log(self, name: str = "serve") -> str:
        path = self.root / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def wait_for_log(self, name: str, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared in {name}.log:\n{self.log(name)[-3000:]}")

    def finish(self, timeout: float = 240.0) -> str:
        assert self.server is not None
        out, _ = self.server.communicate(timeout=timeout)
        for proc in self.sites.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return out

    def close(self) -> None:
        for proc in [*self.sites.values(), self.server]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def run_with_tokens(root: Path, toml_of: Any, overrides: list[str], sites: list[str]) -> str:
    """A coordinator with mutual TLS and a token per site (so it knows every site by name),
    and the ``sites`` joining with their certificates; the coordinator's JSON summary.
    ``toml_of`` turns ``section.key=value`` overrides into a TOML document."""
    from fedtune.runtime.grpc.security import make_certificates

    pki = root / "pki"
    make_certificates(pki, sites=sites, hosts=["127.0.0.1"])
    server = ['server.address="{address}"', f'server.tls_cert="{pki / "coordinator.pem"}"',
              f'server.tls_key="{pki / "coordinator.key"}"',
              f'server.client_ca="{pki / "ca.pem"}"', f'server.tokens="{pki / "tokens.toml"}"',
              "server.wait_for_sites_s=120"]
    fed = Federation(root, toml_of([*overrides, 'run.workspace="{workspace}"', *server]))
    try:
        fed.serve()
        for site in sites:
            fed.join(site, "--ca", str(pki / "ca.pem"), "--cert", str(pki / f"{site}.pem"),
                     "--key", str(pki / f"{site}.key"),
                     "--token", (pki / f"{site}.token").read_text().strip())
        return fed.finish()
    finally:
        fed.close()


class RawSite:
    """A hand-driven client that can send anything. It speaks through protobuf's generated
    stub (not fedtune's hand-made frames), so it also checks that fedtune's frames are plain
    ``Chunk`` protobufs both ways."""

    def __init__(self, address: str, site: str, hello: bytes | None = None, *,
                 ready: bool = True) -> None:
        self.outbox: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.channel = grpc.insecure_channel(address)
        self.site = site
        self.outbox.put(hello or control_chunk("hello", site=site))
        if ready:
            self.ready()

        def requests():
            while (item := self.outbox.get()) is not None:
                yield Chunk.FromString(item) if isinstance(item, bytes) else item

        self.responses = FederationStub(self.channel).Session(
            requests(), metadata=(("x-fedtune-site", site),))
        threading.Thread(target=self._pump, daemon=True).start()

    def ready(self) -> None:
        """Say ready: from now on the coordinator may give this site tasks."""
        self.outbox.put(control_chunk("ready", text='{"train_examples": 100}', site=self.site))

    def _pump(self) -> None:
        try:
            for chunk in self.responses:
                self.inbox.put(chunk)
        except grpc.RpcError:
            pass
        self.inbox.put(None)

    def next_message(self):
        asm = Assembler(2**30)
        while True:
            chunk = self.inbox.get(timeout=30)
            if chunk is None or chunk.kind in ("welcome", "error", "stop"):
                return chunk
            done = asm.add(Frame(chunk, memoryview(chunk.data)))
            if done is not None:
                return done

    def close(self) -> None:
        self.outbox.put(None)
        self.responses.cancel()
        self.channel.close()


def make_runtime(expected_bytes: int = 2**21, **settings) -> tuple[GrpcRuntime, str]:
    """A coordinator's gRPC runtime in this process on a free loopback port."""
    cfg = load_config(None, ["data.num_nodes=2"])
    address = f"127.0.0.1:{free_port()}"
    base = dict(address=address, insecure_no_auth=True, round_deadline_s=20)
    runtime = GrpcRuntime(ServerSection(**{**base, **settings}),
                          welcome=cfg.model_dump(exclude={"server"}),
                          expected_bytes=expected_bytes)
    return runtime, address


def fit_in_background(runtime: GrpcRuntime, sites: list[str], round_: int = 1,
                      numel: int = 10) -> queue.Queue:
    """Run one fit over ``sites``; its replies arrive on the returned queue."""
    replies: queue.Queue = queue.Queue()
    ins = FitIns(round_, torch.zeros(numel), {"lr": 0.1})

    def consume() -> None:
        for reply in runtime.fit(sites, ins):
            replies.put(reply)
            del reply  # as the coordinator does: a held update holds its upload slot

    threading.Thread(target=consume, daemon=True).start()
    return replies
