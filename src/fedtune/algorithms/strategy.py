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

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import catalog
from ..catalog import AGGREGATORS
from .aggregate import Aggregator, weighted_mean
from .fold import RoundFold
from .scaffold import ScaffoldServer, scaffold_control_step
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
    byzantine: int = 0  # updates a robust rule assumes may be Byzantine (Krum, Bulyan)
    krum_m: int = 0
    clip_radius: float = 0.0
    norm_bound: float = 0.0


@dataclass(frozen=True)
class Strategy:
    """One federated optimization method, assembled from parts."""

    name: str
    aggregator: Aggregator
    server_opt: ServerOptimizer
    normalize_by_steps: bool = False
    control: ScaffoldServer | None = None  # SCAFFOLD's server part
    node_plan: dict[str, NodePlanValue] = field(default_factory=dict)

    @property
    def scaffold(self) -> bool:
        """Whether control variates travel (SCAFFOLD)."""
        return self.control is not None


def _aggregator(p: StrategyParams) -> Aggregator:
    if p.aggregator not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {p.aggregator!r}; allowed: {sorted(AGGREGATORS)}")
    part: Aggregator = AGGREGATORS.load(p.aggregator)(
        trim=p.trim, byzantine=p.byzantine, krum_m=p.krum_m, clip_radius=p.clip_radius,
        norm_bound=p.norm_bound)
    return part


def _lr(p: StrategyParams, default: float) -> float:
    return default if p.server_lr is None else p.server_lr


def _mom(p: StrategyParams, default: float) -> float:
    return default if p.server_momentum is None else p.server_momentum


def _sgd_strategy(name: str, p: StrategyParams, *, lr: float, momentum: float,
                  nesterov: bool = False, **parts: Any) -> Strategy:
    opt = SGD(lr=_lr(p, lr), momentum=_mom(p, momentum), nesterov=nesterov)
    return Strategy(name=name, aggregator=_aggregator(p), server_opt=opt, **parts)


def _adaptive(kind: str, p: StrategyParams) -> Strategy:
    opt = Adaptive(kind=kind, lr=_lr(p, 0.03), beta1=p.beta1, beta2=p.beta2, tau=p.tau)
    return Strategy(name=f"fed{kind}", aggregator=_aggregator(p), server_opt=opt)


# Each builder is the entry of its name in fedtune.catalog.STRATEGIES (where it is described).
def fedavg(p: StrategyParams) -> Strategy:
    return _sgd_strategy("fedavg", p, lr=1.0, momentum=0.0)


def fedavgm(p: StrategyParams) -> Strategy:
    return _sgd_strategy("fedavgm", p, lr=1.0, momentum=0.9)


def fedprox(p: StrategyParams) -> Strategy:
    return _sgd_strategy("fedprox", p, lr=1.0, momentum=0.0, node_plan={"prox_mu": p.prox_mu})


def scaffold(p: StrategyParams) -> Strategy:
    return _sgd_strategy("scaffold", p, lr=1.0, momentum=0.0, control=ScaffoldServer())


def fedadam(p: StrategyParams) -> Strategy:
    return _adaptive("adam", p)


def fedyogi(p: StrategyParams) -> Strategy:
    return _adaptive("yogi", p)


def fedadagrad(p: StrategyParams) -> Strategy:
    return _adaptive("adagrad", p)


def fednova(p: StrategyParams) -> Strategy:
    return _sgd_strategy("fednova", p, lr=1.0, momentum=0.0, normalize_by_steps=True)


def diloco(p: StrategyParams) -> Strategy:
    return _sgd_strategy("diloco", p, lr=0.7, momentum=0.9, nesterov=True,
                         node_plan={"optimizer": "adamw", "keep_optimizer_state": True})


STRATEGIES = catalog.STRATEGIES  # name -> (description, builder)


def build_strategy(name: str, params: StrategyParams | None = None) -> Strategy:
    """Assemble the strategy registered under ``name``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    strategy: Strategy = STRATEGIES.load(name)(params or StrategyParams())
    return strategy


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


__all__ = ["STRATEGIES", "Strategy", "StrategyParams", "aggregate_updates", "build_strategy",
           "scaffold_control_step", "server_step", "weighted_mean"]
