"""Server optimizers: turn the aggregated update into the next global parameters.

optax style: ``init(params) -> state`` and ``apply(params, delta, state) -> (params, state)``,
pure functions of tensors; :class:`WithTransforms` chains update transforms of the aggregate
(:mod:`fedtune.algorithms.transforms`) in front of an optimizer. ``delta`` is the
aggregated update direction (mean of local-minus-global), i.e. the negative
pseudo-gradient, so plain FedAvg is ``sgd(lr=1)``. A caller that gives ``delta`` up passes
``consume=True``: an optimizer may then write the new parameters into its memory, so the
step holds two model-size vectors instead of three (``params`` itself is never modified).

References:
    McMahan et al. 2017 (FedAvg); Hsu et al. 2019, "Measuring the Effects of Non-Identical
    Data Distribution for Federated Visual Classification" (FedAvgM);
    Reddi et al. 2021, "Adaptive Federated Optimization" (FedAdam, FedYogi, FedAdagrad);
    Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language
    Models" (outer SGD with Nesterov momentum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..seeds import derived_seed
from .transforms import Chain, TransformContext


@dataclass
class OptState:
    """Server optimizer state: first and second moments (unused ones stay ``None``)."""

    step: int
    m: torch.Tensor | None
    v: torch.Tensor | None


class ServerOptimizer(Protocol):
    """``init(params) -> state``; ``apply(params, delta, state) -> (params, state)``. The
    state is the optimizer's own (an :class:`OptState`, a :class:`ChainState`, ...)."""

    def init(self, params: torch.Tensor) -> Any: ...

    def apply(self, params: torch.Tensor, delta: torch.Tensor, state: Any, *,
              consume: bool = False) -> tuple[torch.Tensor, Any]: ...


@dataclass(frozen=True)
class SGD:
    """x <- x + lr * step, where step is delta, its momentum, or its Nesterov look-ahead."""

    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False

    def init(self, params: torch.Tensor) -> OptState:
        m = torch.zeros_like(params) if self.momentum > 0 else None
        return OptState(step=0, m=m, v=None)

    def apply(self, params: torch.Tensor, delta: torch.Tensor, state: OptState, *,
              consume: bool = False) -> tuple[torch.Tensor, OptState]:
        if state.m is None:  # no temporary, and no new tensor when delta is given up
            new = torch.add(params, delta, alpha=self.lr, out=delta) if consume \
                else torch.add(params, delta, alpha=self.lr)
            return new, OptState(state.step + 1, None, None)
        m = self.momentum * state.m + delta
        step = delta + self.momentum * m if self.nesterov else m
        return params + self.lr * step, OptState(state.step + 1, m, None)


@dataclass(frozen=True)
class Adaptive:
    """FedAdam / FedYogi / FedAdagrad of Reddi et al. 2021 (Algorithm 2, no bias correction)."""

    kind: str = "adam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def init(self, params: torch.Tensor) -> OptState:
        if self.kind not in ("adam", "yogi", "adagrad"):
            raise ValueError(f"unknown adaptive optimizer {self.kind!r}")
        return OptState(step=0, m=torch.zeros_like(params),
                        v=torch.full_like(params, self.tau ** 2))

    def apply(self, params: torch.Tensor, delta: torch.Tensor, state: OptState, *,
              consume: bool = False) -> tuple[torch.Tensor, OptState]:
        assert state.m is not None and state.v is not None
        m = self.beta1 * state.m + (1 - self.beta1) * delta
        d2 = delta * delta
        if self.kind == "adam":
            v = self.beta2 * state.v + (1 - self.beta2) * d2
        elif self.kind == "yogi":
            v = state.v - (1 - self.beta2) * d2 * torch.sign(state.v - d2)
        else:
            v = state.v + d2
        new = params + self.lr * m / (v.sqrt() + self.tau)
        return new, OptState(state.step + 1, m, v)


@dataclass
class ChainState:
    """The state of :class:`WithTransforms`: its transforms' and its optimizer's."""

    transforms: tuple[object, ...]
    optimizer: OptState

    @property
    def step(self) -> int:
        return self.optimizer.step


@dataclass(frozen=True)
class WithTransforms:
    """optax's ``chain(transforms..., optimizer)`` on the server: the aggregate passes through
    update transforms (clipping, noise, ...) before the optimizer steps with it. A transform
    that draws randomness gets a seed derived from ``seed`` and the step."""

    transforms: Chain
    optimizer: ServerOptimizer
    seed: int = 0

    def init(self, params: torch.Tensor) -> ChainState:
        return ChainState(self.transforms.init(), self.optimizer.init(params))

    def apply(self, params: torch.Tensor, delta: torch.Tensor, state: ChainState, *,
              consume: bool = False) -> tuple[torch.Tensor, ChainState]:
        ctx = TransformContext(seed=derived_seed(self.seed, "server", state.step))
        delta, inner = self.transforms.apply(delta, state.transforms, ctx)
        params, opt = self.optimizer.apply(params, delta, state.optimizer, consume=consume)
        return params, ChainState(inner, opt)
