"""Per-FedAvg's local loop: train the point from which one step of local SGD does best.

Each meta-step takes the model ``w`` on three fresh batches D, D', D'' (Fallah et al. 2020,
Algorithm 1 with eqs. 8 and 9):

* ``w_tmp = w - alpha grad f(w; D)``, then ``g = grad f(w_tmp; D')``;
* first order (``"fo"``): ``w <- w - beta g``;
* Hessian-free (``"hf"``): ``w <- w - beta (g - alpha d)`` with the Hessian-vector product
  ``d = [grad f(w + delta g; D'') - grad f(w - delta g; D'')] / (2 delta)``.

``beta`` is the local plan's learning rate and ``alpha`` the step the sites take to
personalize (``personalization.alpha``, which evaluation uses too). Written on the flat
vector with fedtune's own batches rather than with a meta-learning library: each step is a
few vector operations on the one parameter buffer.

References:
    Fallah, Mokhtari & Ozdaglar 2020, "Personalized Federated Learning with Theoretical
    Guarantees: A Model-Agnostic Meta-Learning Approach" (NeurIPS).
"""

from __future__ import annotations

from typing import Any

import torch

from ..node.trainer import LocalPlan, LocalStats, shuffled_batches
from ..params import FlatModel
from ..task import LossFn

HF_DELTA = 1e-3  # the finite-difference radius of the Hessian-vector product


def _gradient(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
              ) -> torch.Tensor:
    """The loss on ``(x, y)`` at the model's current parameters; the gradient is left in
    ``flat.grad``."""
    flat.zero_grad()
    loss = loss_fn(flat.module(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.detach()


def perfedavg_loop(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                   plan: LocalPlan, generator: torch.Generator, *, alpha: float,
                   variant: str, prox_center: torch.Tensor | None = None,
                   correction: torch.Tensor | None = None, **_: Any,
                   ) -> tuple[LocalStats, dict[str, Any]]:
    """``plan.num_steps`` meta-steps of Per-FedAvg from the model's parameters."""
    n = int(x.shape[0])
    per_step = 3 if variant == "hf" else 2
    target = plan.num_steps(n)
    batches = shuffled_batches(n, plan.batch_size, target * per_step, generator, x.device)
    flat.module.train()
    w = torch.empty_like(flat.vector)
    loss_sum = torch.zeros((), device=flat.device)
    examples = steps = 0
    with torch.no_grad():
        for _step in range(target):
            idx = [next(batches) for _batch in range(per_step)]
            w.copy_(flat.vector)
            with torch.enable_grad():
                loss_sum += _gradient(flat, x[idx[0]], y[idx[0]], loss_fn)
            flat.vector.sub_(flat.grad, alpha=alpha)  # w_tmp
            with torch.enable_grad():
                _gradient(flat, x[idx[1]], y[idx[1]], loss_fn)
            g = flat.grad.clone()
            if variant == "hf":
                flat.vector.copy_(w).add_(g, alpha=HF_DELTA)
                with torch.enable_grad():
                    _gradient(flat, x[idx[2]], y[idx[2]], loss_fn)
                plus = flat.grad.clone()
                flat.vector.copy_(w).add_(g, alpha=-HF_DELTA)
                with torch.enable_grad():
                    _gradient(flat, x[idx[2]], y[idx[2]], loss_fn)
                g.sub_(plus.sub_(flat.grad).div_(2 * HF_DELTA), alpha=alpha)
            flat.vector.copy_(w)
            shared = g[:prox_center.numel()] if prox_center is not None else g
            if prox_center is not None and plan.prox_mu:
                shared.add_(flat.vector[:prox_center.numel()] - prox_center, alpha=plan.prox_mu)
            if correction is not None:
                g[:correction.numel()].add_(correction)
            flat.vector.sub_(g, alpha=plan.lr)
            steps += 1
            examples += int(idx[0].shape[0])  # the weight: as a plain step's batch
    return LocalStats(steps, examples, float(loss_sum) / max(steps, 1)), {}
