"""APFL: each site mixes its own model with the shared one, and learns how much of each.

A site keeps a personal model ``v`` and a mixing weight ``alpha``; its personal model is
``v_bar = alpha v + (1 - alpha) w``. Every local step, on one batch (Deng, Kamani & Mahdavi
2020, Algorithm 1):

    w     <- w - lr grad f(w)                       (the shared model's step; its update travels)
    v     <- v - lr alpha grad f(v_bar)
    alpha <- alpha - lr_alpha <v - w, grad f(v_bar)>   (clipped to [0, 1])

with both gradients taken at the step's start. ``v`` starts as the shared model the first time
a site trains and ``alpha`` at ``personalization.alpha_mix``; both stay in the site's node state.
Written on the flat vector (no library implements APFL on it): two forward-backward passes
per step.

References:
    Deng, Kamani & Mahdavi 2020, "Adaptive Personalized Federated Learning" (arXiv 2003.13461).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..node.context import FitContext
from ..node.trainer import LocalPlan, LocalStats, shuffled_batches
from ..params import FlatModel
from ..task import LossFn

KEY = "apfl"


def _grad_at(flat: FlatModel, point: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             loss_fn: LossFn) -> torch.Tensor:
    flat.vector.copy_(point)
    flat.zero_grad()
    with torch.enable_grad():
        loss = loss_fn(flat.module(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
    return loss.detach()


def apfl_loop(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
              plan: LocalPlan, generator: torch.Generator, *, personal: dict[str, Any],
              alpha_lr: float, prox_center: torch.Tensor | None = None,
              correction: torch.Tensor | None = None, **_: Any,
              ) -> tuple[LocalStats, dict[str, Any]]:
    """``plan.num_steps`` APFL steps; ``personal`` holds ``v`` and ``alpha`` (updated)."""
    n = int(x.shape[0])
    target = plan.num_steps(n)
    v, alpha = personal["v"], float(personal["alpha"])
    flat.module.train()
    loss_sum = torch.zeros((), device=flat.device)
    examples = 0
    with torch.no_grad():
        w = flat.vector.clone()
        for idx in shuffled_batches(n, plan.batch_size, target, generator, x.device):
            xb, yb = x[idx], y[idx]
            _grad_at(flat, alpha * v + (1 - alpha) * w, xb, yb, loss_fn)
            g_bar = flat.grad.clone()
            loss_sum += _grad_at(flat, w, xb, yb, loss_fn)
            g = flat.grad
            if prox_center is not None and plan.prox_mu:
                g[:prox_center.numel()].add_(w[:prox_center.numel()] - prox_center,
                                             alpha=plan.prox_mu)
            if correction is not None:
                g[:correction.numel()].add_(correction)
            new_alpha = min(1.0, max(0.0, alpha - alpha_lr * float(torch.dot(v - w, g_bar))))
            v.sub_(g_bar, alpha=plan.lr * alpha)  # grad_v f(v_bar) = alpha grad f(v_bar)
            w.sub_(g, alpha=plan.lr)
            alpha = new_alpha
            examples += int(idx.shape[0])
        flat.vector.copy_(w)
    personal["alpha"] = alpha
    return LocalStats(target, examples, float(loss_sum) / max(target, 1)), {}


class APFL:
    """The node hook: bring ``v`` and ``alpha`` to the loop, keep them after."""

    mutable: tuple[str, ...] = (KEY,)

    def before_fit(self, ctx: FitContext) -> None:
        saved = ctx.state.get(KEY)
        self.personal = {"v": ctx.model.vector.detach().clone() if saved is None
                         else saved["v"].to(ctx.model.device).clone(),
                         "alpha": ctx.instructions.apfl_alpha if saved is None
                         else float(saved["alpha"])}
        ctx.loop = partial(apfl_loop, personal=self.personal,
                           alpha_lr=ctx.instructions.apfl_alpha_lr)

    def after_fit(self, ctx: FitContext) -> None:
        ctx.state[KEY] = {"v": self.personal["v"].detach().clone(),
                          "alpha": float(self.personal["alpha"])}


def load_apfl(flat: FlatModel, state: dict[str, Any]) -> None:
    """The site's personal model ``alpha v + (1 - alpha) w`` around the loaded shared ``w``."""
    saved = state.get(KEY)
    if saved is not None:
        alpha = float(saved["alpha"])
        flat.vector.mul_(1 - alpha).add_(saved["v"].to(flat.device), alpha=alpha)
