"""The default local fine-tuning loop, written on the flat parameter vector.

Batches are index slices of tensors (no per-sample ``__getitem__``). Gradients land in the
model's flat gradient buffer, so the FedProx proximal term (``mu * (w - w_global)``), the
SCAFFOLD correction (``c - c_i``) and clipping are single vector operations, and SGD with
momentum is two fused ops instead of a loop over parameter tensors. AdamW (DiLoCo's inner
optimizer) is ``torch.optim.AdamW`` over the one flat parameter.

References:
    Li et al. 2020 (FedProx); Karimireddy et al. 2020 (SCAFFOLD);
    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..params import FlatModel
from ..task import LossFn

if TYPE_CHECKING:
    from ..privacy.dp_sgd import DPSGD


@dataclass(frozen=True)
class LocalPlan:
    """How a node fine-tunes in one round. ``steps > 0`` overrides ``epochs``. Read from a
    message by :class:`fedtune.node.instructions.NodeInstructions`, which refuses unknown
    keys."""

    epochs: float = 1.0
    steps: int = 0
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    max_grad_norm: float = 0.0
    keep_optimizer_state: bool = False

    def num_steps(self, num_examples: int) -> int:
        if self.steps > 0:
            return self.steps
        return max(1, math.ceil(self.epochs * batches_per_epoch(num_examples, self.batch_size)))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` examples (a last batch of one joins the one before)."""
    full = math.ceil(n / batch_size)
    return full - 1 if full > 1 and n % batch_size == 1 else full


@dataclass
class LocalStats:
    steps: int
    examples: int
    mean_loss: float


class _FlatSGD:
    """SGD with momentum and weight decay on one flat vector (torch.optim.SGD semantics)."""

    def __init__(self, flat: FlatModel, plan: LocalPlan, state: dict[str, Any] | None) -> None:
        self.flat, self.plan = flat, plan
        self.buf: torch.Tensor | None = state.get("momentum") if state else None

    def step(self) -> None:
        g, p = self.flat.grad, self.plan
        if p.weight_decay:
            g.add_(self.flat.vector, alpha=p.weight_decay)
        if p.momentum:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(p.momentum).add_(g)
            g = self.buf
        self.flat.vector.add_(g, alpha=-p.lr)

    def state(self) -> dict[str, Any]:
        return {"momentum": self.buf} if self.buf is not None else {}


class _FlatAdamW:
    def __init__(self, flat: FlatModel, plan: LocalPlan, state: dict[str, Any] | None) -> None:
        self.opt = torch.optim.AdamW([flat.flat_param], lr=plan.lr,
                                     weight_decay=plan.weight_decay or 0.01)
        if state:
            self.opt.load_state_dict(state["adamw"])

    def step(self) -> None:
        self.opt.step()

    def state(self) -> dict[str, Any]:
        return {"adamw": self.opt.state_dict()}


OPTIMIZERS: dict[str, type[_FlatSGD] | type[_FlatAdamW]] = {"sgd": _FlatSGD, "adamw": _FlatAdamW}


def train_locally(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                  plan: LocalPlan, generator: torch.Generator, *,
                  prox_center: torch.Tensor | None = None,
                  correction: torch.Tensor | None = None,
                  optimizer_state: dict[str, Any] | None = None,
                  dp: DPSGD | None = None,
                  trainable: slice | None = None) -> tuple[LocalStats, dict[str, Any]]:
    """Run ``plan`` on ``(x, y)`` starting from the model's current parameters; with ``dp``
    (sample-level DP, :mod:`fedtune.privacy.dp_sgd`) its Poisson batches and noised
    per-example gradients replace the shuffled batches and the batch gradient. The proximal
    centre and the correction cover the travelling prefix of the vector; ``trainable``
    limits the steps to one slice of it (the rest is put back after every step: FedRep).

    Returns the statistics and the optimizer state (kept by the node when the plan says so).
    """
    n = int(x.shape[0])
    if plan.optimizer not in OPTIMIZERS:
        raise ValueError(f"local.optimizer = {plan.optimizer!r}; allowed: {sorted(OPTIMIZERS)}")
    opt: _FlatSGD | _FlatAdamW = OPTIMIZERS[plan.optimizer](flat, plan, optimizer_state)
    model = flat.module
    model.train()
    target = plan.num_steps(n)
    loss_sum = torch.zeros((), device=flat.device)
    step = examples = 0
    batches = dp.batches(target, generator, x.device) if dp is not None \
        else shuffled_batches(n, plan.batch_size, target, generator, x.device)
    frozen = flat.vector.detach().clone() if trainable is not None else None
    for idx in batches:
        if dp is not None:
            loss = dp.backward(flat, x[idx], y[idx], loss_fn, step)
        else:
            flat.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
        if prox_center is not None and plan.prox_mu:
            shared = slice(0, prox_center.numel())
            flat.grad[shared].add_(flat.vector[shared] - prox_center, alpha=plan.prox_mu)
        if correction is not None:
            flat.grad[:correction.numel()].add_(correction)
        if plan.max_grad_norm:
            norm = flat.grad.norm()
            flat.grad.mul_(torch.clamp(plan.max_grad_norm / (norm + 1e-12), max=1.0))
        with torch.no_grad():
            opt.step()
            if frozen is not None and trainable is not None:
                _restore_outside(flat.vector, frozen, trainable)
        loss_sum += loss.detach()
        step += 1
        examples += int(idx.shape[0])
    if dp is not None:  # Poisson batches vary in size: report the expected count
        examples = round(step * dp.rate * dp.n)
    stats = LocalStats(steps=step, examples=examples, mean_loss=float(loss_sum) / max(step, 1))
    return stats, opt.state()


def _restore_outside(vector: torch.Tensor, saved: torch.Tensor, keep: slice) -> None:
    """Put ``vector`` back to ``saved`` everywhere outside ``keep``."""
    start, stop, _ = keep.indices(vector.numel())
    vector[:start].copy_(saved[:start])
    vector[stop:].copy_(saved[stop:])


def shuffled_batches(n: int, batch_size: int, steps: int, generator: torch.Generator,
              device: torch.device) -> Iterator[torch.Tensor]:
    """``steps`` batches of consecutive slices of a fresh permutation per epoch. A last
    slice of one example joins the slice before it: BatchNorm cannot train on one example
    (PyTorch raises), and its gradient would be the epoch's noisiest."""
    starts = list(range(0, n, batch_size))[:batches_per_epoch(n, batch_size)]
    ends = [*starts[1:], n]
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator).to(device)
        for start, end in zip(starts, ends, strict=True):
            yield order[start:end]
            step += 1
            if step >= steps:
                return


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                   metrics_fn: Any, batch_size: int = 2048) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``(x, y)``, in large batches."""
    if x.shape[0] == 0:
        return {"loss": float("nan")}
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    out = {"loss": float(loss_fn(logits, y))}
    out.update(metrics_fn(logits, y))
    return out
