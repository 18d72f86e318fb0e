"""A site's side of real deployment: ``fedtune join``.

The site dials the coordinator (no inbound port), authenticates with its token (and client
certificate under mutual TLS), receives the run's resolved config, builds the same model the
simulation builds, and then answers tasks with the same :class:`Node` code as in simulation.
If the connection drops, it reconnects by itself with capped exponential back-off; its node
state (SCAFFOLD's control variate, DiLoCo's inner optimizer) is kept in a state file, so a
restarted site carries on. Refusals (bad token, unknown site, bad certificate) end the site
with a clear message instead of retrying forever.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ...attack.settings import red_team_refusal
from ...config import config_from_dict
from ...data.federated import NodeData
from ...energy.grids import parse_grid
from ...errors import DataError, FedtuneError, MessageError
from ...node.node import Node, Workbench
from ...task import Task
from ...types import FitIns
from .security import read_file
from .transfer import MAX_FRAME_BYTES, Assembler, control_chunk, decode_assembly, message_chunks, open_session

log = logging.getLogger("fedtune.site")
_END = object()


@dataclass
class SiteOptions:
    server: str
    site: str
    data: str
    token: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    state_dir: str = ""
    chunk_kb: int = 4096
    max_message_mb: int = 8192
    max_backoff_s: float = 30.0
    max_attempts: int = 0  # 0: retry for ever
    task: str = ""
    device: str = "auto"
    grid: str = ""  # a country, g/kWh or an hourly CSV (energy/grids.py), sent when joining
    red_team: bool = False  # carry out simulated attacks the coordinator names this site for


class Refused(FedtuneError):
    """The coordinator refused this site (credentials, certificate, protocol)."""


def load_site_data(spec: str, site: str, task: Task) -> NodeData:
    """The site's private data: ``partition:NODE`` (that node of the task's data: the
    config's bundled dataset split as in simulation, or a custom task's own node) or a
    ``.npz`` file with x_train, y_train, x_test, y_test."""

    if spec.startswith("partition:"):
        wanted = spec.split(":", 1)[1] or site
        data = task.data.nodes.site(wanted)
        if data is None:
            ids = task.data.nodes.ids
            raise FedtuneError(f"--data {spec!r}: the config's partition has no node {wanted!r}; "
                               f"it has {', '.join(sorted(ids)[:5])}...")
        return data
    return read_site_file(spec, site)


def read_site_file(spec: str, site: str) -> NodeData:
    """A site's ``.npz`` (x_train, y_train, x_test, y_test), checked at the door
    (:mod:`fedtune.data.checks`): ``join`` reads it before it connects."""
    import numpy as np

    from ...task import node_data

    path = Path(spec)
    if not path.is_file():
        raise FedtuneError(f"--data {spec!r} is neither partition:NODE nor an existing .npz file")
    try:
        arrays = np.load(path)
        parts = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except (OSError, ValueError, KeyError) as exc:
        raise FedtuneError(f"--data {spec!r}: need an .npz with x_train, y_train, x_test, "
                           f"y_test ({exc})") from None
    return node_data(site, (parts[0], parts[1]), (parts[2], parts[3]))


class Site:
    """One site process: connect, answer tasks, reconnect, stop when the run ends."""

    def __init__(self, options: SiteOptions) -> None:
        self.o = options
        self.node: Node | None = None
        self.joined = False
        self.bench: Workbench | None = None
        self.state_path = (Path(options.state_dir) / f"{options.site}.state.pt"
                           if options.state_dir else None)
        # the grid this site declares when it joins: read (and refused if broken) up front
        self.grid = {"grid": parse_grid(options.grid)} if options.grid else {}

    def _channel(self) -> grpc.Channel:
        opts = [("grpc.max_receive_message_length", MAX_FRAME_BYTES),
                ("grpc.max_send_message_length", MAX_FRAME_BYTES),
                ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
        if not self.o.ca:
            return grpc.insecure_channel(self.o.server, options=opts)
        creds = grpc.ssl_channel_credentials(
            root_certificates=read_file(self.o.ca, "--ca"),
            private_key=read_file(self.o.key, "--key") if self.o.key else None,
            certificate_chain=read_file(self.o.cert, "--cert") if self.o.cert else None)
        return grpc.secure_channel(self.o.server, creds, options=opts)

    def _setup(self, welcome: dict[str, Any]) -> None:
        """Build the model and node from the coordinator's config (once per process)."""
        import torch

        from ...machine import make_meter, resolve_device

        if self.node is not None:
            return
        cfg = config_from_dict(welcome)
        from ...personal.settings import layout
        if cfg.strategy.mode == "secagg":
            from ...secagg.protocol import install

            install()  # the run's extra stages and their messages
        if self.o.task:
            from ...task import load_task_factory

            task = load_task_factory(self.o.task)(cfg)
        else:
            from ...tasks import build_task

            task = build_task(cfg)
        data = load_site_data(self.o.data, self.o.site, task)
        if tuple(data.x_train.shape[1:]) != tuple(task.data.input_shape):
            raise DataError(f"site {self.o.site!r}: --data {self.o.data!r} has feature shape "
                            f"{tuple(data.x_train.shape[1:])} but the run's model takes "
                            f"{tuple(task.data.input_shape)}; give the run's features in its "
                            "order")
        device = resolve_device(self.o.device)
        self.bench = Workbench.create(task, device, cfg.run.seed, **layout(cfg))
        meter, co2 = make_meter(cfg, device)
        self.node = Node(NodeData(self.o.site, data.x_train, data.y_train, data.x_test,
                                  data.y_test), seed=cfg.run.seed, meter=meter,
                         co2_per_joule=co2, device=device)
        if self.state_path is not None and self.state_path.is_file():
            self.node.load_state(self.state_path)
            log.info("site %s: restored node state from %s", self.o.site, self.state_path)
        torch.set_grad_enabled(True)

    def _answer(self, msg: Any) -> Any:
        assert self.node is not None and self.bench is not None
        why = None if self.o.red_team or not isinstance(msg, FitIns) else red_team_refusal(
            msg, self.o.site)
        if why is not None:
            log.warning("site %s: %s", self.o.site, why)
            raise MessageError(why)
        result = self.node.answer(msg, self.bench)
        if isinstance(msg, FitIns) and self.state_path is not None:
            self.node.save_state(self.state_path)
        return result

    def session(self) -> bool:
        """One connection. Returns True when the run ended, False to reconnect."""
        outbox: queue.Queue[Any] = queue.Queue()

        def requests() -> Iterator[bytes]:
            yield control_chunk("hello", site=self.o.site)
            while True:
                item = outbox.get()
                if item is _END:
                    return
                yield from item

        meta = (("x-fedtune-site", self.o.site), ("x-fedtune-token", self.o.token))
        with self._channel() as channel:
            responses = open_session(channel)(requests(), metadata=meta)
            assembler = Assembler(self.o.max_message_mb * 2**20, reuse=True)
            try:
                for chunk in responses:
                    if chunk.kind == "welcome":
                        self._setup(json.loads(bytes(chunk.data)))
                        self.joined = True
                        assert self.node is not None
                        ready = json.dumps({"train_examples": self.node.data.num_train,
                                            **self.grid})
                        outbox.put([control_chunk("ready", text=ready, site=self.o.site)])
                        log.info("site %s: joined the run", self.o.site)
                    elif chunk.kind == "stop":
                        log.info("site %s: the run is over", self.o.site)
                        return True
                    elif chunk.kind == "error":
                        log.warning("coordinator says: %s", chunk.text)
                        if chunk.task_id == 0:
                            raise Refused(chunk.text)
                    elif chunk.kind in ("fit", "evaluate", "task"):
                        done = assembler.add(chunk)
                        if done is None:
                            continue
                        task_id, round_ = done.task_id, done.round
                        try:
                            result = self._answer(decode_assembly(done))
                            meter = getattr(result, "meter", None)
                            if meter is not None:  # the site's live progress, in its log
                                log.info("site %s: round %d %s done, %.3g J, %.3g g CO2e",
                                         self.o.site, round_, chunk.kind, meter.energy_j,
                                         meter.co2_g)
                        except MessageError as exc:
                            outbox.put([control_chunk("error", text=str(exc),
                                                      task_id=task_id)])
                            continue
                        finally:
                            del done  # so its buffer can take the next message
                        outbox.put(message_chunks("result", result, task_id=task_id,
                                                  round_=round_, site=self.o.site,
                                                  chunk_bytes=self.o.chunk_kb * 1024))
                        del result
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Refused(f"the coordinator refused site {self.o.site!r}: "
                                  f"{exc.details()}") from None
                self.last_error = f"{code.name}: {exc.details()}"
                log.warning("site %s: connection lost (%s)", self.o.site, self.last_error)
                return False
            finally:
                outbox.put(_END)
                responses.cancel()
        return False

    def run(self) -> None:
        """Serve until the coordinator says stop; reconnect with back-off in between."""
        attempt, backoff = 0, 0.5
        stop = threading.Event()
        while True:
            attempt += 1
            self.joined = False
            if self.session():
                return
            if self.joined:  # it worked until it broke: start the back-off afresh
                attempt, backoff = 1, 0.5
            if self.o.max_attempts and attempt >= self.o.max_attempts:
                raise FedtuneError(f"site {self.o.site}: gave up after {attempt} attempts to "
                                   f"reach {self.o.server}; last error: {self.last_error} (check "
                                   "the address, --ca and the certificates' validity)")
            wait = backoff * (0.5 + random.random())
            log.info("site %s: reconnecting in %.1f s", self.o.site, wait)
            stop.wait(wait)  # back-off between reconnects, not a polling loop
            backoff = min(backoff * 2, self.o.max_backoff_s)
