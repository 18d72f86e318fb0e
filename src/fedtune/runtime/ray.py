"""Ray runtime: nodes live in Ray actors, on one machine or a cluster (extra ``fedtune[ray]``).

Each actor hosts a shard of the nodes (node i goes to actor i mod A) and one Workbench, just
like the in-process runtime hosts all nodes on one; it receives the task (with its sites:
generated sites travel as their generator) and makes a site's Node when the site first works.
The coordinator encodes each instruction once with the wire format, puts it in Ray's object
store once, and every selected node's actor answers with the wire bytes of its result, so
byte counts are the same as in every other runtime. Results are yielded as they complete.
Actors use the driver's torch thread count, so the arithmetic (and the numbers) equal the
in-process run's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..data.sites import Sites
from ..errors import FedtuneError
from ..types import EvalIns, FitIns, FitRes, NodeFailure
from ..wire import decode, encode
from .base import Capabilities, Reply, not_asynchronous


class _NodeHost:
    """Runs inside a Ray actor: a Workbench and the Node objects of its shard."""

    def __init__(self, task: Any, seed: int, device: str, energy: dict[str, Any],
                 threads: int, layout: dict[str, Any]) -> None:
        from ..energy import carbon_intensity
        from ..machine import energy_meter
        from ..node.node import Workbench
        from ..secagg.protocol import install

        install()  # secure aggregation's stages, for a run that uses them
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.meter, self.seed = energy_meter(energy, self.device), seed
        self.co2 = carbon_intensity(energy["country"]) / 3.6e6
        self.bench = Workbench.create(task, self.device, seed, **layout)
        self.sites = task.data.nodes
        self.nodes: dict[str, Any] = {}  # a site's Node is made the first time it works

    def call(self, node_id: str, payload: bytes) -> bytes:
        from ..node.node import Node

        ins = decode(payload)
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node.for_site(
                self.sites, node_id, seed=self.seed, meter=self.meter, co2_per_joule=self.co2,
                device=self.device)
        res = node.answer(ins, self.bench)
        return encode(res)


class RayRuntime:
    """Nodes as Ray actors with configurable CPUs and GPUs each."""

    def __init__(self, task: Any, *, seed: int, device: str, energy: dict[str, Any],
                 layout: dict[str, Any] | None = None, address: str = "", actors: int = 2,
                 cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise FedtuneError("runtime.kind = 'ray' needs Ray: pip install 'fedtune[ray]'") from None
        self.ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True}
            if address:
                kwargs["address"] = address
            else:
                # short path: Ray's unix sockets must fit in 107 characters
                kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="fedtune-ray-", dir="/tmp")
            self._start(kwargs, local=not address)
        sites = task.data.nodes
        ids = sites.ids
        count = max(1, min(actors, len(ids)))
        host_cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(_NodeHost)
        threads = torch.get_num_threads()
        shared = ray.put(task)  # one copy in the object store for every actor
        self._hosts: list[Any] = [host_cls.remote(shared, seed, device, energy, threads,
                                                  layout or {})
                                  for _ in range(count)]
        self._where = {node_id: self._hosts[i % count] for i, node_id in enumerate(ids)}
        self._ids = ids
        self._sites: Sites = sites

    @property
    def node_ids(self) -> list[str]:
        return list(self._ids)

    def train_examples(self, node_id: str) -> int | None:
        return self._sites.num_train(node_id)

    def _start(self, kwargs: dict[str, Any], *, local: bool, attempts: int = 3) -> None:
        """Start (or join) Ray. A local instance's start-up can time out on a busy machine
        (its node or GCS server is slow to come up): that is retried, twice."""
        for attempt in range(1, attempts + 1):
            try:
                self.ray.init(**kwargs)
                return
            except Exception as exc:  # Ray raises RuntimeError or a bare Exception here
                self.ray.shutdown()
                if not local or attempt == attempts:
                    raise FedtuneError(f"Ray did not start ({exc}); check runtime.ray_address "
                                       "or the machine's load, and run again") from None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def wait_for_nodes(self, count: int) -> list[str]:
        return self.node_ids  # every actor exists from the start

    def take_late(self) -> list[tuple[FitRes, int]]:
        return []  # a round waits for every actor

    def submit(self, node_id: str, ins: FitIns) -> None:
        raise not_asynchronous(self)

    def collect(self) -> Reply:
        raise not_asynchronous(self)

    def drain(self) -> None:
        return None

    def exchange(self, node_ids: Sequence[str], ins: Any) -> Iterator[Reply]:
        payload = encode(ins)
        ref = self.ray.put(payload)
        return self._gather({n: (ref, len(payload)) for n in node_ids}, ins.round)

    def exchange_each(self, messages: Mapping[str, Any]) -> Iterator[Reply]:
        payloads = {n: encode(ins) for n, ins in messages.items()}
        rounds = {ins.round for ins in messages.values()}
        return self._gather({n: (p, len(p)) for n, p in payloads.items()},
                            rounds.pop() if rounds else 0)

    def _gather(self, sends: dict[str, tuple[Any, int]], round_: int) -> Iterator[Reply]:
        pending = {self._where[n].call.remote(n, ref): n for n, (ref, _) in sends.items()}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            node_id = pending.pop(done[0])
            down = sends[node_id][1]
            try:
                data = self.ray.get(done[0])
            except self.ray.exceptions.RayError as exc:
                yield Reply(NodeFailure(node_id, round_, f"actor failed: {exc}"[:500]), down, 0)
                continue
            yield Reply(decode(data), down, len(data))

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    def evaluate(self, node_ids: Sequence[str], ins: EvalIns) -> Iterator[Reply]:
        return self.exchange(node_ids, ins)

    def node_states(self) -> bytes:
        return b""  # the nodes keep their own state (``holds_nodes`` is False)

    def restore_node_states(self, blob: bytes) -> None:
        return None

    def close(self) -> None:
        for host in self._hosts:
            self.ray.kill(host)
        self._hosts.clear()
        if self._owns_ray:
            self.ray.shutdown()
