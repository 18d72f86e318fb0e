"""Strategies: named assemblies of aggregation, normalization, server optimizer and node plan.

A :class:`Strategy` is data, not a class tree: which aggregator, which server optimizer,
whether updates are normalized by local step counts (FedNova), whether SCAFFOLD control
variates travel, and what each node's local plan adds (proximal term, inner optimizer).
:func:`server_step` is the one pure function the coordinator calls each round.

References:
    McMahan et al. 2017 (FedAvg); Hsu et al. 2019 (FedAvgM);
    Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx);
    Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning" (option II control variates);
    Reddi et al. 2021, "Adaptive Federated Optimization" (FedAdam, FedYogi, FedAdagrad);
    Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
    Federated Optimization" (FedNova);
    Douillard et al. 2023, "DiLoCo" (inner AdamW, outer Nesterov SGD).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from .aggregate import AGGREGATORS, Aggregator, trimmed_mean, weighted_mean
from .fold import RoundFold
from .server_opt import SGD, Adaptive, OptState, ServerOptimizer

NodePlanValue = int | float | str | bool


@dataclass(frozen=True)
class StrategyParams:
    """Knobs a user may set; ``None`` means the strategy's own default."""

    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    prox_mu: float = 0.01
    aggregator: str = "mean"
    trim: float = 0.1


@dataclass(frozen=True)
class Strategy:
    """One federated optimization method, assembled from parts."""

    name: str
    aggregator: Aggregator
    server_opt: ServerOptimizer
    normalize_by_steps: bool = False
    scaffold: bool = False
    node_plan: dict[str, NodePlanValue] = field(default_factory=dict)


def _aggregator(p: StrategyParams) -> Aggregator:
    if p.aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {p.aggregator!r}; allowed: {sorted(AGGREGATORS)}")
    if p.aggregator == "trimmed_mean":
        return partial(trimmed_mean, trim=p.trim)
    return AGGREGATORS[p.aggregator]


def _lr(p: StrategyParams, default: float) -> float:
    return default if p.server_lr is None else p.server_lr


def _mom(p: StrategyParams, default: float) -> float:
    return default if p.server_momentum is None else p.server_momentum


def _sgd(name: str, lr: float, mom: float, **kw: object) -> Callable[[StrategyParams], Strategy]:
    nesterov = bool(kw.pop("nesterov", False))

    def build(p: StrategyParams) -> Strategy:
        opt = SGD(lr=_lr(p, lr), momentum=_mom(p, mom), nesterov=nesterov)
        plan: dict[str, NodePlanValue] = {}
        if name == "fedprox":
            plan["prox_mu"] = p.prox_mu
        if name == "diloco":
            plan["optimizer"] = "adamw"
            plan["keep_optimizer_state"] = True
        return Strategy(name=name, aggregator=_aggregator(p), server_opt=opt,
                        normalize_by_steps=(name == "fednova"), scaffold=(name == "scaffold"),
                        node_plan=plan)

    return build


def _adaptive(kind: str) -> Callable[[StrategyParams], Strategy]:
    def build(p: StrategyParams) -> Strategy:
        opt = Adaptive(kind=kind, lr=_lr(p, 0.03), beta1=p.beta1, beta2=p.beta2, tau=p.tau)
        return Strategy(name=f"fed{kind}", aggregator=_aggregator(p), server_opt=opt)

    return build


STRATEGIES: dict[str, tuple[str, Callable[[StrategyParams], Strategy]]] = {
    "fedavg": ("weighted mean of updates, server lr 1", _sgd("fedavg", 1.0, 0.0)),
    "fedavgm": ("FedAvg with server momentum 0.9", _sgd("fedavgm", 1.0, 0.9)),
    "fedprox": ("FedAvg plus proximal term mu/2 |w - w_global|^2 at the nodes",
                _sgd("fedprox", 1.0, 0.0)),
    "scaffold": ("control variates correct client drift (option II)",
                 _sgd("scaffold", 1.0, 0.0)),
    "fedadam": ("Adam on the server over the averaged update (Reddi et al.)", _adaptive("adam")),
    "fedyogi": ("Yogi on the server over the averaged update (Reddi et al.)", _adaptive("yogi")),
    "fedadagrad": ("Adagrad on the server over the averaged update (Reddi et al.)",
                   _adaptive("adagrad")),
    "fednova": ("updates normalized by each node's local step count",
                _sgd("fednova", 1.0, 0.0)),
    "diloco": ("inner AdamW for H steps, outer SGD lr 0.7 with Nesterov momentum 0.9",
               _sgd("diloco", 0.7, 0.9, nesterov=True)),
}


def build_strategy(name: str, params: StrategyParams | None = None) -> Strategy:
    """Assemble the strategy registered under ``name``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name][1](params or StrategyParams())


def aggregate_updates(strategy: Strategy, updates: torch.Tensor, weights: torch.Tensor,
                      steps: torch.Tensor) -> torch.Tensor:
    """Combine ``[K, D]`` updates into one direction (FedNova-normalized when asked): the
    same fold, in row order, as a coordinator's :class:`RoundFold` over arriving updates."""
    fold = RoundFold(strategy.aggregator, normalize_by_steps=strategy.normalize_by_steps)
    for k, (row, w, tau) in enumerate(zip(updates, weights.tolist(), steps.tolist(),
                                          strict=True)):
        fold.offer(k, row, float(w), float(tau))
    return fold.delta(strategy.aggregator)


def server_step(strategy: Strategy, params: torch.Tensor, updates: torch.Tensor,
                weights: torch.Tensor, steps: torch.Tensor,
                state: OptState) -> tuple[torch.Tensor, OptState]:
    """One round on the server: aggregate the updates, then apply the server optimizer."""
    delta = aggregate_updates(strategy, updates, weights, steps)
    return strategy.server_opt.apply(params, delta, state)


def scaffold_control_step(control: torch.Tensor, control_delta_sum: torch.Tensor,
                          num_nodes: int) -> torch.Tensor:
    """c <- c + (1/N) sum_{i in S} delta c_i (Karimireddy et al. 2020, Algorithm 1), given
    the sum of the selected nodes' deltas."""
    return control + control_delta_sum / num_nodes


__all__ = ["STRATEGIES", "Strategy", "StrategyParams", "aggregate_updates", "build_strategy",
           "scaffold_control_step", "server_step", "weighted_mean"]
