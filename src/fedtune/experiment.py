"""Assemble and run an experiment: config -> task -> nodes -> runtime -> coordinator.

This is the Python API's front door (:func:`run`) and what ``fedtune run`` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .algorithms.strategy import Strategy, build_strategy
from .config import RunConfig, config_from_dict
from .coordinator import Coordinator
from .energy import EnergyMeter
from .energy.settings import check_grid_file, check_simulated_grids
from .errors import ConfigError
from .machine import make_meter, resolve_device
from .node.node import Node, Workbench
from .personal.settings import add_local_gains, layout
from .rounds.federation import run_federation
from .runtime.base import Runtime
from .runtime.inprocess import InProcessRuntime
from .store import RunStore
from .task import Task
from .types import RoundRecord, RunResult


def _assemble(cfg: RunConfig, task: Task | None,
              ) -> tuple[Task, Strategy, Workbench, EnergyMeter, float]:
    """What every runtime's coordinator needs: task, strategy, model, energy meter."""
    device = resolve_device(cfg.run.device)
    if task is None:
        from .tasks import build_task

        task = build_task(cfg)
    try:
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.params())
    except ValueError as exc:
        raise ConfigError(f"strategy: {exc}") from None
    meter, co2_per_joule = make_meter(cfg, device)
    return task, strategy, Workbench.create(task, device, cfg.run.seed, **layout(cfg)), meter, \
        co2_per_joule


def _resume(coordinator: Coordinator, store: RunStore, run_id: str,
            saved: tuple[int, dict[str, torch.Tensor], dict[str, str]]) -> None:
    """Put a coordinator back to a stored run's state and reopen the run there."""
    round_, tensors, _ = saved
    try:
        coordinator.restore(round_, tensors, store.round_records(run_id))
    except ValueError as exc:
        raise ConfigError(f"cannot resume run {run_id}: {exc}") from None
    store.mark_resumed(run_id, round_)


def run(config: RunConfig | dict[str, Any] | None = None, *, task: Task | None = None,
        store: RunStore | bool | None = True,
        on_round: Callable[[RoundRecord], None] | None = None,
        on_start: Callable[[str, int], None] | None = None,
        resume: bool = False, resume_run: str | None = None) -> RunResult:
    """Run one federated fine-tuning experiment and return its result.

    Args:
        config: a :class:`RunConfig`, a dict of sections, or None for the default experiment.
        task: your own :class:`Task`; by default the bundled dataset the config names.
        store: a :class:`RunStore`, True for the config's workspace, False to store nothing.
        on_round: called with each finished round's record (progress bars, logging).
        on_start: called with the run id and the number of rounds before round 1.
        resume: continue the newest interrupted, crashed or killed run in the config's
            workspace (or ``resume_run``) from its last completed round, with the config
            stored for it: the result is bitwise that of a run never stopped.

    A stored run writes the state to continue from after every round; Ctrl-C (or an error)
    leaves it ``interrupted`` (``crashed``), which ``resume`` continues.
    """
    cfg = config if isinstance(config, RunConfig) else config_from_dict(config or {})
    check_simulated_grids(cfg)
    run_store = RunStore(cfg.run.workspace) if store is True else (store or None)
    saved: tuple[int, dict[str, torch.Tensor], dict[str, str]] | None = None
    run_id = ""
    if resume:
        if run_store is None:
            raise ConfigError("resume needs a run store; pass store=True or a RunStore")
        run_id = run_store.resumable_run(resume_run)
        cfg = config_from_dict(run_store.load_run(run_id)["config"])
        saved = run_store.latest_state(run_id)
    try:
        return _run(cfg, task, run_store, run_id, saved, on_round, on_start)
    finally:
        if store is True and run_store is not None:
            run_store.close()


def _run(cfg: RunConfig, task: Task | None, run_store: RunStore | None, run_id: str,
         saved: tuple[int, dict[str, torch.Tensor], dict[str, str]] | None,
         on_round: Callable[[RoundRecord], None] | None,
         on_start: Callable[[str, int], None] | None) -> RunResult:
    task, strategy, bench, meter, co2_per_joule = _assemble(cfg, task)
    device = bench.flat.device
    runtime: Runtime
    if cfg.runtime.kind == "ray":
        from .runtime.ray import RayRuntime

        r = cfg.runtime
        runtime = RayRuntime(task, seed=cfg.run.seed, device=str(device),
                             energy=cfg.energy.model_dump(), layout=layout(cfg),
                             address=r.ray_address,
                             actors=r.ray_actors, cpus_per_actor=r.ray_cpus_per_actor,
                             gpus_per_actor=r.ray_gpus_per_actor)
    else:
        sites = task.data.nodes

        def make_node(node_id: str) -> Node:  # sites with a grid: the coordinator prices CO2
            return Node.for_site(sites, node_id, seed=cfg.run.seed, meter=meter,
                                 co2_per_joule=co2_per_joule, device=device)

        runtime = InProcessRuntime.for_sites(sites, make_node, bench, seed=cfg.run.seed,
                                             speed_skew=cfg.runtime.simulated_speed_skew)
    try:
        coordinator = Coordinator(cfg, strategy, runtime, bench, meter=meter,
                                  co2_per_joule=co2_per_joule, store=run_store,
                                  run_id=run_id or "unsaved", resumable=run_store is not None,
                                  on_round=on_round)
        if run_store is not None and not run_id:  # stored once the run can start
            run_id = coordinator.run_id = run_store.start_run(cfg.run.name, cfg.model_dump())
        if saved is not None and run_store is not None:
            _resume(coordinator, run_store, run_id, saved)
        if on_start is not None:
            on_start(run_id or "unsaved", cfg.run.rounds)
        try:
            result = run_federation(coordinator)
            if cfg.run.baselines:
                from .baselines import run_baselines

                result.extra["baselines"] = run_baselines(list(cfg.run.baselines), cfg, task,
                                                          bench.flat.device)
                add_local_gains(result.extra)
                if run_store is not None:
                    run_store.finish_run(run_id, result, result.status)
            return result
        except KeyboardInterrupt:
            if run_store is not None:
                run_store.crash_run(run_id, "interrupted (Ctrl-C)", status="interrupted")
            raise
        except Exception as exc:  # not final: `fedtune run --resume` continues it
            if run_store is not None:
                run_store.crash_run(run_id, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        runtime.close()


LARGE_MODEL_MB = 256  # above this, serve suggests bounding the updates held at once


def serve(config: RunConfig, *, resume: bool = False, resume_run: str | None = None,
          task_factory: Callable[[RunConfig], Task] | None = None,
          on_round: Callable[[RoundRecord], None] | None = None,
          on_start: Callable[[str, int], None] | None = None) -> RunResult:
    """Coordinate real sites over gRPC (``fedtune serve``) until the run's last round.

    With ``resume``, continue the newest incomplete run in the workspace (or ``resume_run``)
    from its last completed round, with the config stored for it (only [server] may change).
    ``task_factory`` builds a custom :class:`Task` from the run's config (``serve --task``;
    the sites join with the same ``--task``); by default the bundled dataset's task.
    """
    from .attack.settings import check_served
    from .runtime.grpc.server import GrpcRuntime

    cfg = config
    check_served(cfg)  # an attack over gRPC: named red-team sites only
    store = RunStore(cfg.run.workspace)
    run_id = ""
    crashed = False
    saved: tuple[int, dict[str, torch.Tensor], dict[str, str]] | None = None
    if resume:
        run_id = store.resumable_run(resume_run)
        stored = store.load_run(run_id)["config"]
        cfg = config_from_dict({**stored, "server": cfg.server.model_dump()})
        saved = store.latest_state(run_id)
    check_grid_file(cfg)
    task = task_factory(cfg) if task_factory is not None else None
    _, strategy, bench, meter, co2_per_joule = _assemble(cfg, task)
    numel = bench.flat.spec.numel
    welcome = cfg.model_dump(exclude={"server"})
    runtime = GrpcRuntime(cfg.server, welcome=welcome, expected_bytes=3 * 4 * numel + 2**20)
    known = runtime.known_sites
    if known is not None and cfg.strategy.min_nodes > known:
        runtime.close()
        store.close()
        raise ConfigError(f"strategy.min_nodes = {cfg.strategy.min_nodes} but only {known} "
                          f"sites have a token in server.tokens = {cfg.server.tokens!r}: no "
                          "round could ever start; lower strategy.min_nodes or add sites")
    model_mb = 4 * numel / 2**20
    if model_mb >= LARGE_MODEL_MB and not cfg.server.max_concurrent_uploads:
        logging.getLogger("fedtune").warning(
            "the model has %.0f MB of trainable parameters and server.max_concurrent_uploads "
            "= 0: the coordinator may hold one update per site at once; set it to 1 or 2 "
            "(and server.park_model = true) to bound its memory (README, 'Large models')",
            model_mb)
    try:
        coordinator = Coordinator(cfg, strategy, runtime, bench, meter=meter,
                                  co2_per_joule=co2_per_joule, store=store,
                                  run_id=run_id or "unsaved", resumable=True, on_round=on_round)
        if not run_id:  # stored once the run can start
            run_id = coordinator.run_id = store.start_run(cfg.run.name, cfg.model_dump())
        if saved is not None:
            _resume(coordinator, store, run_id, saved)
        if on_start is not None:
            on_start(run_id, cfg.run.rounds)
        try:
            return run_federation(coordinator)
        except BaseException as exc:
            # not final: `fedtune serve --resume` continues from the last completed round,
            # and the sites keep reconnecting until it does
            crashed = True
            store.crash_run(run_id, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        runtime.close(final=not crashed)
        store.close()
