"""The coordinator: the federation's state and the steps a round is made of.

The coordinator holds the global parameter vector, the server optimizer state and, for
SCAFFOLD, the server control variate, and offers the steps of a round as a public API:
:meth:`Coordinator.select` (who trains), :meth:`Coordinator.instruction` (what they get),
:meth:`Coordinator.screen` (decode and validate one reply), :meth:`Coordinator.fold_in`
(aggregate it), :meth:`Coordinator.step` (the server step) and
:meth:`Coordinator.close_round` (central steps, evaluation, record, store). Round drivers in
:mod:`fedtune.rounds` put these steps in order (synchronous, buffered asynchronous); the
coordinator talks to nodes only through a runtime, so the same drivers run a simulation, a
Ray cluster or real sites. Invalid updates (wrong size or dtype,
NaN or infinite values, more examples than the node can have visited) are dropped with a
logged reason and never reach the aggregate; a step that would make the model non-finite is
not taken (the round leaves the model unchanged, and :mod:`fedtune.run_health` judges the run
by such rounds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .algorithms.compression import unpack_vector
from .algorithms.fold import RoundFold
from .algorithms.selection import Selector
from .algorithms.strategy import Strategy
from .algorithms.transforms import Compress, TransformContext
from .attack.omniscient import with_omniscient_attackers
from .attack.round_part import mark_attackers
from .catalog import SELECTORS
from .config import RunConfig
from .coordinator_state import CoordinatorState
from .energy import EnergyMeter
from .energy.grids import RunGrids
from .node.instructions import NodeInstructions
from .node.node import Workbench
from .node.trainer import LocalPlan, evaluate_model, train_locally
from .params import unflatten
from .personal.evaluation import round_evaluation, training_sites
from .personal.node_parts import load_global
from .privacy.sample_level import reported_epsilon
from .round_parts import round_parts
from .run_health import RunHealth, update_problem
from .runtime.base import Reply, Runtime
from .seeds import derived_seed
from .store import RunStore
from .store_writer import RoundWriter
from .types import FitIns, FitRes, NodeFailure, NodeRoundRecord, RoundRecord
from .wire import all_finite, sendable

log = logging.getLogger("fedtune")
SERVER = "coordinator"


class Coordinator:
    """The global model, its optimizer state, and the steps of a round."""

    def __init__(self, cfg: RunConfig, strategy: Strategy, runtime: Runtime, bench: Workbench,
                 *, meter: EnergyMeter, co2_per_joule: float, store: RunStore | None = None,
                 run_id: str = "unsaved", resumable: bool = False,
                 on_round: Callable[[RoundRecord], None] | None = None) -> None:
        runtime = with_omniscient_attackers(cfg, runtime)  # ALIE, IPM: they see the round
        self.cfg, self.strategy, self.runtime, self.bench = cfg, strategy, runtime, bench
        self.meter, self.co2_per_joule = meter, co2_per_joule
        self.store, self.run_id, self.on_round = store, run_id, on_round
        self.resumable = resumable  # write the state to resume from after every round
        params = bench.flat.shared.detach().clone()
        self.numel, self.device = params.numel(), params.device
        self.saved_params: Path | None = None  # state file holding the current params
        # The workbench (the model, its gradient) is only needed to evaluate and to train
        # centrally: free it in between unless in-process nodes train on it too.
        self.release_bench = cfg.server.park_model or not runtime.capabilities.shares_workbench
        if self.release_bench:
            bench.flat.release()
        self.round_parts = round_parts(cfg, runtime, bench, lambda: self.state.params)
        for part in self.round_parts:
            strategy = self.strategy = part.adapt(strategy)
        self.state = CoordinatorState(
            params=params, parts={"opt": strategy.server_opt.init(params)})
        self.state.parts.update({part.name: part.init() for part in self.round_parts})
        self.stopped: str | None = None  # why the run stopped before its last round
        self.personal_rounds: list[dict[str, object]] = []  # personal models' accuracy
        if strategy.control is not None:
            self.state.parts[strategy.control.name] = strategy.control.init(params)
        local = cfg.local.model_dump()
        comp = cfg.compression
        uplink = {"uplink": comp.uplink, "error_feedback": comp.error_feedback,
                  "block": comp.block} if comp.uplink else {}
        self.node_config = {**local, **strategy.node_plan, **uplink}
        self.plan = NodeInstructions.from_config(self.node_config).plan
        s = cfg.strategy
        self.grids = RunGrids(cfg.energy, runtime)  # sites' grids: configured and declared
        self.selector: Selector = SELECTORS.load(s.selection)(
            fraction=s.fraction, count=s.count, min_nodes=s.min_nodes,
            intensity=self.grids.at, floor=s.participation_floor, rounds=cfg.run.rounds,
            round_hours=cfg.energy.round_hours, defer_hours=cfg.energy.defer_hours,
            start_hour=cfg.energy.start_hour, clock=self.grids.now if self.grids.wall else None)
        self.health = RunHealth()
        self.warned_count = False  # strategy.count above the sites is said once
        self.writer = RoundWriter()  # each round's store writes, beside the next round
        self.unchanged_because: str | None = None  # set by step for close_round
        data = bench.task.data
        self.x_central, self.y_central = (data.x_central.to(bench.flat.device),
                                          data.y_central.to(bench.flat.device))
        self.x_test, self.y_test = data.x_test.to(bench.flat.device), data.y_test.to(
            bench.flat.device)

    # -- server-side work ----------------------------------------------------------------
    def meter_server(self, round_: int, phase: str, work: Callable[[], int], *,
                      extra_cpu: float = 0.0) -> NodeRoundRecord:
        """Run ``work`` and meter it; ``extra_cpu`` adds CPU seconds spent on the same phase
        earlier (folding updates while they arrived)."""
        wall0, cpu0, token = time.perf_counter(), time.process_time(), self.meter.start()
        examples = work()
        cpu = time.process_time() - cpu0 + extra_cpu
        joules = self.meter.stop(token, cpu)
        return NodeRoundRecord(round_, SERVER, phase, examples, 0, float("nan"),
                               time.perf_counter() - wall0, cpu, 0, 0, joules,
                               joules * self.co2_per_joule, self.meter.code)

    def central_train(self, round_: int, steps: int) -> int:
        c = self.cfg.central
        plan = LocalPlan(steps=steps, batch_size=c.batch_size, lr=c.lr, optimizer=c.optimizer,
                         momentum=0.0)
        flat = self.bench.flat
        flat.load_(self.state.params)
        gen = torch.Generator().manual_seed(derived_seed(self.cfg.run.seed, "central", round_))
        stats, _ = train_locally(flat, self.x_central, self.y_central, self.bench.task.loss_fn,
                                 plan, gen)
        self.state.params = flat.shared.detach().clone()
        return stats.examples

    def parts_aux(self) -> dict[str, torch.Tensor]:
        """The tensors the round parts add to every instruction (travelling buffers)."""
        return {k: v for p in self.round_parts for k, v in
                p.instruction_aux(self.state.parts[p.name]).items()}

    def evaluate_central(self) -> dict[str, float]:
        self.bench.flat.load_(self.state.params, with_grad=False)
        load_global(self.bench.flat, self.parts_aux())
        task = self.bench.task
        return evaluate_model(self.bench.flat.module, self.x_test, self.y_test, task.loss_fn,
                              task.metrics_fn)

    # -- one round -----------------------------------------------------------------------
    def select(self, round_: int) -> list[str]:
        """The nodes that train in ``round_`` (seeded, the same in every runtime)."""
        nodes = training_sites(self)  # held-out sites never train
        count = self.cfg.strategy.count
        if count > len(nodes) and not self.warned_count:
            self.warned_count = True
            log.warning("strategy.count = %d but %d sites take part: every round takes all "
                        "of them; lower strategy.count or add sites", count, len(nodes))
        chosen = self.selector.select(nodes, round_, self.cfg.run.seed)
        self.grids.wait_for(round_, self.selector)  # a wall-clock round deferred: it waits
        return chosen

    def instruction(self, round_: int) -> FitIns:
        """What every node asked in ``round_`` receives: the global model (compressed when
        configured), its local plan and SCAFFOLD's server control variate."""
        comp, params = self.cfg.compression, self.state.params
        control = self.strategy.control
        aux = control.instruction_aux(self.state.parts[control.name]) \
            if control is not None else {}
        aux.update(self.parts_aux())
        config = dict(self.node_config)
        for part in self.round_parts:
            config.update(part.node_config(self.state.parts[part.name]))
        if not comp.downlink:  # checked as the far side checks it, in every runtime
            return sendable(FitIns(round_, params, config, aux))
        ctx = TransformContext(seed=derived_seed(self.cfg.run.seed, round_, "down"))
        dense, _ = Compress(comp.downlink, comp.block).apply(params, None, ctx)
        return sendable(FitIns(round_, dense, config, {**aux, **ctx.aux}, ctx.encoding))

    def stop_reason(self, round_: int) -> str | None:
        """Why the run must stop before ``round_`` (a privacy budget), or None."""
        for part in self.round_parts:
            reason = part.stop_reason(round_, self.state.parts[part.name])
            if reason is not None:
                self.stopped = reason
                return reason
        return None

    def _decoded(self, res: FitRes) -> FitRes | str:
        """The result with its update decompressed (or why it cannot be)."""
        if not res.encoding:
            return res
        try:
            dense = unpack_vector(res.aux, res.encoding, numel=self.numel,
                                  seed=derived_seed(self.cfg.run.seed, res.round, res.node_id,
                                                    "up"))
        except (ValueError, KeyError, RuntimeError) as exc:
            return f"compressed update cannot be decoded: {exc}"
        aux = {k: v for k, v in res.aux.items() if not k.startswith("packed.")}
        return FitRes(res.node_id, res.round, dense.to(self.device),
                      res.num_examples, res.num_steps, res.train_loss, aux, res.meter)

    def valid(self, res: FitRes, *, masked: bool = False) -> str | None:
        """Why ``res`` cannot be folded (shape, dtype, finiteness, claimed examples), or None.
        ``masked``: the update travels later, masked (secure aggregation), so only the
        claimed examples are checked here."""
        return update_problem(res, self.numel, self.plan, self.runtime, masked=masked)

    def new_fold(self) -> RoundFold:
        return RoundFold(self.strategy.aggregator,
                         normalize_by_steps=self.strategy.normalize_by_steps)

    def fold_in(self, fold: RoundFold, res: FitRes, factor: float, *,
                position: int | None = None,
                update: Callable[[], torch.Tensor] | None = None) -> float:
        """Fold one valid update (weighted by examples x ``factor``, or by ``factor`` alone
        with strategy.weighting = "uniform"); ``position`` None folds it now; ``update``
        loads the update in place of ``res.update`` (spilled). Returns the CPU seconds it
        took (metered as the round's aggregation)."""
        cpu0 = time.thread_time()
        weight = float(res.num_examples) * factor \
            if self.cfg.strategy.weighting == "examples" else factor
        control = self.strategy.control
        dc = res.aux.get(control.receives) if control is not None else None
        vector: torch.Tensor | Callable[[], torch.Tensor] = \
            update if update is not None else res.update
        for part in self.round_parts:
            weight = part.weigh(weight, res.aux, self.state.parts[part.name], res.node_id)
            vector = part.receive(vector, res.aux, self.state.parts[part.name], res.node_id)
        if position is None:
            fold.append(vector, weight, float(res.num_steps), dc)
        else:
            fold.offer(position, vector, weight, float(res.num_steps), dc)
        return time.thread_time() - cpu0

    def screen(self, reply: Reply, round_: int, *, expected_round: int | None,
               allowed: Container[str], seen: Container[str],
               ) -> tuple[FitRes | None, NodeRoundRecord]:
        """Decode and validate one reply: (the usable result or None, its ledger row)."""
        res = reply.result
        if isinstance(res, FitRes):
            decoded = self._decoded(res)
            res = decoded if isinstance(decoded, FitRes) else NodeFailure(
                res.node_id, res.round, decoded)
        problem = res.reason if isinstance(res, NodeFailure) else (
            self.valid(res) if isinstance(res, FitRes) else "answered with the wrong kind")
        node_id = res.node_id
        if problem is None and node_id not in allowed:
            problem = "was not asked"
        if problem is None and expected_round is not None and isinstance(res, FitRes) \
                and res.round != expected_round:
            problem = f"answered round {res.round} during round {expected_round} (stale)"
        if problem is None and node_id in seen:
            problem = "answered twice"
        if problem is None and isinstance(res, FitRes):
            m = res.meter
            return res, NodeRoundRecord(round_, node_id, "fit", res.num_examples,
                                        res.num_steps, res.train_loss, m.wall_s, m.cpu_s,
                                        reply.bytes_down, reply.bytes_up, m.energy_j, m.co2_g,
                                        m.energy_method, reported_epsilon(res.aux))
        log.warning("round %d: dropped node %s: %s", round_, node_id, problem)
        return None, NodeRoundRecord(round_, node_id, "failed", 0, 0, float("nan"), 0.0, 0.0,
                                     reply.bytes_down, reply.bytes_up, 0.0, 0.0,
                                     str(problem)[:200])

    def close_round(self, round_: int, nodes: list[str], failed: list[str],
                    ledger: list[NodeRoundRecord], wall0: float) -> RoundRecord:
        """After aggregation: central steps, evaluation, the record, the store, callbacks."""
        st, cfg = self.state, self.cfg
        if cfg.central.steps_between_rounds and len(self.y_central):
            ledger.append(self.meter_server(
                round_, "central",
                lambda: self.central_train(round_, cfg.central.steps_between_rounds)))
        test: dict[str, float] = {}
        if round_ % cfg.run.eval_every == 0 or round_ == cfg.run.rounds:
            def evaluate() -> int:
                test.update(self.evaluate_central())
                return len(self.y_test)

            ledger.append(self.meter_server(round_, "evaluate", evaluate))
        personal, evaluated = round_evaluation(self, round_)  # personal models, bias counts
        ledger.extend(evaluated)
        if personal is not None:
            self.personal_rounds.append(personal)
        # in the order of ``nodes`` (selection order), not arrival order: every runtime then
        # averages the same numbers in the same order
        ledger[:] = mark_attackers(self.round_parts,  # sites' own grids; who attacked
                                   self.grids.reprice(ledger, round_, self.selector))
        rank = {node: i for i, node in enumerate(nodes)}
        fit = sorted((n for n in ledger if n.phase == "fit"),
                     key=lambda n: (rank.get(n.node_id, len(rank)), n.node_id))
        weights = [n.examples for n in fit]
        train_loss = float(np.average([n.train_loss for n in fit], weights=weights)) \
            if fit and sum(weights) else float("nan")
        record = RoundRecord(
            round=round_, nodes=nodes, failed=failed,
            train_loss=train_loss, test_loss=test.get("loss"),
            test_accuracy=test.get("accuracy"), wall_s=time.perf_counter() - wall0,
            bytes_down=sum(n.bytes_down for n in ledger), bytes_up=sum(n.bytes_up for n in ledger),
            energy_j=sum(n.energy_j for n in ledger), co2_g=sum(n.co2_g for n in ledger),
            coordinator_energy_j=sum(n.energy_j for n in ledger if n.node_id == SERVER))
        for part in self.round_parts:
            part.after_round(st.parts[part.name])
            record.epsilon = part.round_metrics(st.parts[part.name]).get("epsilon",
                                                                          record.epsilon)
        st.round = round_
        st.history.append(record)
        self.health.record(round_, self.unchanged_because)
        self.unchanged_because = None
        if self.store is not None:
            every = cfg.run.checkpoint_every
            self.writer.submit(partial(
                self._persist, self.store, round_, record, ledger,
                self.snapshot() if self.resumable else None,
                self._named_params() if every and (round_ % every == 0
                                                   or round_ == cfg.run.rounds) else None))
        if self.release_bench:
            self.bench.flat.release()  # until the next evaluation or central training
        if self.on_round is not None:
            self.on_round(record)
        return record

    def _persist(self, store: RunStore, round_: int, record: RoundRecord,
                 ledger: list[NodeRoundRecord], state: dict[str, torch.Tensor] | None,
                 checkpoint: dict[str, torch.Tensor] | None) -> None:
        """A round's writes (on the writer thread): the state to resume from, then the
        record that makes it current, then the checkpoint."""
        state_path = store.write_state(self.run_id, round_, state,
                                       {"kind": "coordinator-state"}) if state is not None else None
        store.record_round(self.run_id, record, ledger, state_path)
        if checkpoint is not None:
            store.save_checkpoint(self.run_id, round_, checkpoint, {"kind": "global"})
        self.saved_params = state_path  # the next round parks the model there

    def step(self, fold: RoundFold, late: Sequence[tuple[FitRes, float]] = (),
             examples: int = 0, min_updates: int | None = None) -> int:
        """Finish the fold (plus late updates) and take the server step; returns the
        examples behind it (0 when too few updates came and the model stays unchanged)."""
        st = self.state
        for res, factor in late:
            self.fold_in(fold, res, factor)
            examples += res.num_examples
        needed = self.cfg.strategy.min_nodes if min_updates is None else min_updates
        if fold.count < needed:
            self.unchanged_because = (f"fewer valid updates than strategy.min_nodes = "
                                      f"{needed}")
            log.warning("round %d: only %d valid updates, strategy.min_nodes = %d; the global "
                        "model is unchanged", st.round + 1, fold.count, needed)
            return 0
        delta = fold.delta(self.strategy.aggregator).to(st.params.device)
        for rp in self.round_parts:
            delta = rp.release(delta, st.parts[rp.name], st.round + 1)
        # the fold is finished, so the step may write the new parameters into delta
        params, opt_state = self.strategy.server_opt.apply(
            st.params, delta, st.parts["opt"], consume=True)
        del delta
        part, control = self.strategy.control, None
        if part is not None:
            control = part.after_step(st.parts[part.name], fold.control_delta_sum(),
                                      len(self.runtime.node_ids))
        # a non-finite aggregate (updates too large for float32, however valid each one is)
        # makes non-finite parameters: that step is not taken, the model stays as it is
        if not (all_finite(params) and (control is None or all_finite(control))):
            self.unchanged_because = "the aggregate was not finite (updates too large)"
            log.warning("round %d: the server step would make the model non-finite (the "
                        "aggregate of %d updates overflows float32); the global model is "
                        "unchanged", st.round + 1, fold.count)
            return 0
        st.params = params
        st.parts["opt"] = opt_state
        if part is not None:
            st.parts[part.name] = control
        return examples

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue after the current round, as named tensors: the
        parts' state and, when the nodes live in this process, theirs (``nodes``, bytes)."""
        out = self.state.snapshot()
        if self.runtime.capabilities.holds_nodes:
            blob = self.runtime.node_states()
            out["nodes"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        return out

    def restore(self, round_: int, tensors: dict[str, torch.Tensor],
                history: list[RoundRecord]) -> None:
        """Continue from a :meth:`snapshot` taken after ``round_``."""
        self.state.restore(round_, tensors, history)
        if "nodes" in tensors and self.runtime.capabilities.holds_nodes:
            self.runtime.restore_node_states(tensors["nodes"].numpy().tobytes())

    def _named_params(self) -> dict[str, torch.Tensor]:
        """The global parameters by name: views, no copy (safetensors writes disjoint views
        of one vector as they are)."""
        return {k: v.detach().cpu() for k, v in
                unflatten(self.state.params, self.bench.flat.spec).items()}
