"""A Node answers instructions: load the global parameters, fine-tune, send the update.

The node keeps only what is its own across rounds: its data and the state its hooks keep
(SCAFFOLD's control variate ``c_i``, DiLoCo's inner optimizer state, the uplink's
error-feedback residual; see :mod:`fedtune.node.hooks`). The model it trains on is a
:class:`Workbench` owned by the process and shared by every node the process hosts, so a
simulation of 1,000 nodes holds one model, not 1,000.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..algorithms.compression import unpack_vector
from ..data.sites import HeldSites, NodeData, Sites
from ..energy import EnergyMeter
from ..energy.meter import MeterToken
from ..errors import MessageError
from ..params import FlatModel
from ..personal.fedex import head_slice
from ..personal.label_prior import add_own_prior
from ..personal.node_parts import load_global, load_own_model
from ..seeds import derived_seed
from ..task import Task
from ..types import EvalIns, EvalRes, FitIns, FitRes, NodeMeter
from .context import FitContext
from .hooks import hooks_for
from .instructions import EvalInstructions, NodeInstructions
from .stages import STAGES, Stage, register_stage
from .trainer import LocalPlan, LocalStats, evaluate_model, train_locally


@dataclass
class Workbench:
    """The one model a process trains on, with the task's loss and metrics."""

    flat: FlatModel
    task: Task

    @staticmethod
    def create(task: Task, device: torch.device, seed: int, *, local: Sequence[str] = (),
               buffers: str = "travel") -> Workbench:
        """The task's model from ``seed``; parameters matching ``local`` (and buffers, as
        :mod:`fedtune.personal.layout` says) stay at each site."""
        from ..personal.layout import local_buffer_names, local_names

        torch.manual_seed(seed)
        module = task.model_factory()
        return Workbench(FlatModel(module, device, local=local_names(module, local),
                                   local_buffers=local_buffer_names(module, local, buffers)),
                         task)


class Node:
    """One site: private data plus the state it keeps between rounds."""

    def __init__(self, data: NodeData | Callable[[], NodeData], *, seed: int,
                 meter: EnergyMeter, co2_per_joule: float, device: torch.device,
                 node_id: str = "") -> None:
        """``data`` is the node's data, or (with ``node_id``) a function that makes it when
        the node is asked to work: a site of a large simulation holds no data between
        rounds."""
        if isinstance(data, NodeData):
            held = _on(device, data)
            self.node_id = data.node_id
            self._load: Callable[[], NodeData] = lambda: held
        else:
            if not node_id:
                raise ValueError("a Node made from a data function needs its node_id")
            self.node_id, self._load = node_id, data
        self.seed = seed
        self.device = device
        self.meter = meter
        self.co2_per_joule = co2_per_joule
        self.state: dict[str, Any] = {}
        self.last_fit_round = -1
        self._state_before_last_fit: dict[str, Any] = {}

    @classmethod
    def for_site(cls, sites: Sites, node_id: str, *, seed: int, meter: EnergyMeter,
                 co2_per_joule: float, device: torch.device) -> Node:
        """The Node of one site of a federation: held data is moved to the device once,
        generated data is made (or found in the sites' cache) each time the node works."""
        data = (sites.require(node_id) if isinstance(sites, HeldSites)
                else partial(sites.require, node_id))
        return cls(data, node_id=node_id, seed=seed, meter=meter,
                   co2_per_joule=co2_per_joule, device=device)

    @property
    def data(self) -> NodeData:
        """This node's data on its device."""
        return _on(self.device, self._load())

    def _seed_model_randomness(self, round_: int) -> None:
        """Seed what the model draws (dropout) per node and round. Not torch.manual_seed: on
        a CPU-only machine that records a stack trace for lazy CUDA seeding on every call."""
        seed = derived_seed(self.seed, round_, self.node_id, "model")
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _generator(self, round_: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, round_, self.node_id, purpose))

    def _metered(self, wall0: float, cpu0: float, token: MeterToken) -> NodeMeter:
        cpu = time.process_time() - cpu0
        joules = self.meter.stop(token, cpu)
        def short(x: float) -> float:  # 4 significant digits keep message headers small
            return float(f"{x:.4g}")

        return NodeMeter(wall_s=short(time.perf_counter() - wall0), cpu_s=short(cpu),
                         energy_j=short(joules), co2_g=short(joules * self.co2_per_joule),
                         energy_method=self.meter.code)

    def saved_state(self) -> dict[str, Any]:
        """What the node keeps between rounds, as torch.save can write it."""
        return {"state": self.state, "last_fit_round": self.last_fit_round,
                "before": self._state_before_last_fit}

    def restore_state(self, saved: dict[str, Any]) -> None:
        self.state = saved["state"]
        self.last_fit_round = int(saved["last_fit_round"])
        self._state_before_last_fit = saved["before"]

    def save_state(self, path: Path) -> None:
        """Persist what the node keeps between rounds (atomic rename)."""
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.saved_state(), tmp)
        os.replace(tmp, path)

    def load_state(self, path: Path) -> None:
        self.restore_state(torch.load(path, weights_only=True))

    def answer(self, ins: Any, bench: Workbench) -> Any:
        """Answer any instruction: fit, evaluate, or a stage registered with
        :func:`register_stage` (every runtime hands its messages here)."""
        handler = STAGES.get(type(ins))
        if handler is None:
            raise MessageError(f"a node cannot answer a {type(ins).__name__}; it answers "
                               f"{', '.join(sorted(c.__name__ for c in STAGES))}")
        return handler(self, ins, bench)

    def fit(self, ins: FitIns, bench: Workbench) -> FitRes:
        """Train on this node's data from ``ins.params``, between the round's hooks.

        Idempotent per round: asked the same round again (a coordinator that restarted
        mid-round), the node first rolls back the state its hooks declare mutable to before
        that round, so nothing is applied twice and the answer is the same."""
        wall0, cpu0, token = time.perf_counter(), time.process_time(), self.meter.start()
        instructions = NodeInstructions.from_config(ins.config)
        hooks = hooks_for(instructions, ins.aux, bench.flat, self.node_id)
        self._roll_back(ins.round, [key for hook in hooks for key in hook.mutable])
        flat, plan = bench.flat, instructions.plan
        if ins.encoding:  # a compressed broadcast: train from what it decodes to
            ins = FitIns(ins.round, unpack_vector(
                ins.aux, ins.encoding, numel=flat.spec.numel,
                seed=derived_seed(self.seed, ins.round, "down")).to(flat.device),
                ins.config, ins.aux)
        flat.load_(ins.params)
        self._seed_model_randomness(ins.round)
        data = self.data
        ctx = FitContext(ins.round, ins.params, ins.aux, instructions, self.state,
                         seed=derived_seed(self.seed, ins.round, self.node_id, "up"),
                         num_train=data.num_train, model=flat, node_seed=self.seed,
                         node_id=self.node_id)
        ctx.train = partial(self._phase, bench, data, ins.round)
        ctx.evaluate_rows = partial(self._loss_on, bench, data)
        for hook in hooks:
            hook.before_fit(ctx)
        plan = ctx.plan or plan
        x, y = (data.x_train, data.y_train) if ctx.rows is None else (
            data.x_train[ctx.rows], data.y_train[ctx.rows])
        if ctx.poison is not None:
            x, y = ctx.poison(x, y)
        if bench.task.train_fn is not None:
            if ctx.dp is not None or ctx.loop is not None or ctx.trainable is not None:
                raise MessageError("privacy.sample_dp and personalization methods with their "
                                   "own local loop need fedtune's loop; this task has a "
                                   "custom train_fn")
            steps = bench.task.train_fn(flat.module, x, y, plan,
                                        self._generator(ins.round, "fit"))
            flat.reseat_grads()  # user code may have set .grad to None
            examples, loss = int(x.shape[0]), float("nan")
            ctx.optimizer_state = {}
        else:
            stats, ctx.optimizer_state = (ctx.loop or train_locally)(
                flat, x, y, bench.task.loss_fn, plan,
                self._generator(ins.round, "fit"),
                prox_center=ins.params if plan.prox_mu else None, correction=ctx.correction,
                optimizer_state=ctx.optimizer_state, dp=ctx.dp, trainable=ctx.trainable)
            steps, examples, loss = stats.steps, stats.examples, stats.mean_loss
        ctx.update, ctx.steps = flat.shared - ins.params, steps
        for hook in hooks:
            hook.after_fit(ctx)
        return FitRes(self.node_id, ins.round, ctx.update, examples, steps, loss, ctx.out_aux,
                      self._metered(wall0, cpu0, token), ctx.encoding)

    def _phase(self, bench: Workbench, data: NodeData, round_: int, plan: LocalPlan,
               purpose: str, rows: torch.Tensor | None = None, **options: Any) -> LocalStats:
        """One more local training phase of a round (a hook's), seeded by its purpose, on
        the node's training data or some of its rows."""
        x, y = (data.x_train, data.y_train) if rows is None else (
            data.x_train[rows], data.y_train[rows])
        stats, _ = train_locally(bench.flat, x, y, bench.task.loss_fn, plan,
                                 self._generator(round_, purpose), **options)
        return stats

    @staticmethod
    def _loss_on(bench: Workbench, data: NodeData, rows: torch.Tensor) -> dict[str, float]:
        """The model's loss and metrics on some of the node's training rows (a validation
        part)."""
        return evaluate_model(bench.flat.module, data.x_train[rows], data.y_train[rows],
                              bench.task.loss_fn, bench.task.metrics_fn)

    def _roll_back(self, round_: int, mutable: list[str]) -> None:
        """Before a round: restore ``mutable`` keys when the round repeats, else remember
        them as they are."""
        if round_ == self.last_fit_round:
            for key in mutable:
                self.state.pop(key, None)
            self.state.update(copy.deepcopy(self._state_before_last_fit))
        else:
            self._state_before_last_fit = copy.deepcopy(
                {key: self.state[key] for key in mutable if key in self.state})
            self.last_fit_round = round_

    def evaluate(self, ins: EvalIns, bench: Workbench) -> EvalRes:
        """Metrics of the global model on the node's test split, and (when
        ``personalize_steps`` > 0) after that many local fine-tuning steps."""
        wall0, cpu0, token = time.perf_counter(), time.process_time(), self.meter.start()
        flat, task, d = bench.flat, bench.task, self.data
        flat.load_(ins.params)
        load_global(flat, ins.aux)
        metrics = evaluate_model(flat.module, d.x_test, d.y_test, task.loss_fn, task.metrics_fn)
        instructions = EvalInstructions.from_config(ins.config)
        aux: dict[str, torch.Tensor] = {}
        if instructions.bias_audit:  # the global model's, before any fine-tuning
            from ..equity.bias_counts import site_counts

            aux["bias_counts"] = site_counts(flat.module, d.x_test, d.y_test,
                                             instructions.bias_group_feature)
        own = load_own_model(flat, instructions.personal, self.state)  # or its kept part
        prior = instructions.prior_correction and not own  # own models learned theirs
        if prior:
            add_own_prior(flat.module, d.y_train)
        if instructions.personalize_steps > 0:
            scope = head_slice(flat) if instructions.personalize_scope == "head" else None
            train_locally(flat, d.x_train, d.y_train, task.loss_fn, instructions.plan,
                          self._generator(ins.round, "personalize"), trainable=scope)
        if own or prior or instructions.personalize_steps > 0:
            tuned = evaluate_model(flat.module, d.x_test, d.y_test, task.loss_fn, task.metrics_fn)
            metrics.update({f"{k}_personalized": v for k, v in tuned.items()})
        return EvalRes(self.node_id, ins.round, int(d.x_test.shape[0]), metrics,
                       self._metered(wall0, cpu0, token), aux)


def _on(device: torch.device, d: NodeData) -> NodeData:
    if d.x_train.device == device:
        return d
    return NodeData(d.node_id, d.x_train.to(device), d.y_train.to(device), d.x_test.to(device),
                    d.y_test.to(device))


__all__ = ["STAGES", "Node", "Stage", "Workbench", "register_stage"]

register_stage(FitIns, Node.fit)
register_stage(EvalIns, Node.evaluate)
