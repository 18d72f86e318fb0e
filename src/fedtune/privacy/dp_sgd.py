"""Sample-level differential privacy inside a site: DP-SGD (Abadi et al. 2016, "Deep
Learning with Differential Privacy").

Each local step samples every training example independently with probability q =
batch_size / n (Poisson sampling, which the accountant's bound assumes), computes one
gradient per example with Opacus' ``GradSampleModule`` (extra ``fedtune[dp]``; frozen
parameters, such as a LoRA model's encoder, get none), clips each to L2 norm C, adds Gaussian
noise of standard deviation sigma C to their sum and divides by the expected batch size q n.
Everything after (momentum, the proximal term, the update's own clipping, compression) is
post-processing. The site's guarantee is its own: epsilon after all its steps so far, at
``privacy.sample_delta``, by the same accountant as client-level DP (PLD of the Poisson
subsampled Gaussian, :mod:`fedtune.privacy.accountant`), reported with every update.

With ``privacy.sample_epsilon`` set, a site calibrates its own sigma once, for its own n and
the steps of ``run.rounds`` rounds (as if it took part in every round, the most it can).
Opacus' ``DPOptimizer`` is not used: it steps torch parameters one by one, while fedtune's
local loop steps one flat vector (:mod:`fedtune.node.trainer`); the clip-and-noise is the
same few tensor operations on the flat per-example gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import FedtuneError
from ..params import FlatModel
from ..task import LossFn
from .accountant import Accountant, Sampling, calibrate
from .noise import gaussian


@dataclass(kw_only=True)
class DPSGD:
    """One site's DP-SGD for one round: Poisson batches and noised per-example gradients."""

    clip: float
    sigma: float
    rate: float
    n: int
    secure: bool
    seed: int

    def batches(self, steps: int, generator: torch.Generator,
                device: torch.device) -> Iterator[torch.Tensor]:
        """``steps`` Poisson samples of the ``n`` examples' indices (possibly empty)."""
        for _ in range(steps):
            keep = torch.rand(self.n, generator=generator) < self.rate
            yield torch.nonzero(keep).flatten().to(device)

    def backward(self, flat: FlatModel, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                 step: int) -> torch.Tensor:
        """Write the noised mean of clipped per-example gradients into ``flat.grad``; the
        batch's loss (0 for an empty batch)."""
        try:
            from opacus import GradSampleModule
        except ImportError:
            raise FedtuneError("privacy.sample_dp needs Opacus: pip install 'fedtune[dp]'"
                               ) from None
        flat.zero_grad()
        total = torch.zeros_like(flat.grad)
        loss = torch.zeros((), device=flat.device)
        if x.shape[0]:
            wrapped = GradSampleModule(flat.module, loss_reduction="mean")
            try:
                loss = loss_fn(wrapped(x), y)
                with warnings.catch_warnings():  # the inputs need no gradient: that is fine
                    warnings.filterwarnings("ignore", "Full backward hook is firing")
                    loss.backward()  # type: ignore[no-untyped-call]
                per_example = torch.cat([p.grad_sample.reshape(x.shape[0], -1)  # type: ignore[attr-defined]
                                         for p in flat.params], dim=1)
            finally:
                wrapped._close()  # removes its hooks and the grad_sample tensors
            norms = per_example.norm(dim=1, keepdim=True)
            factors = torch.clamp(self.clip / (norms + 1e-12), max=1.0)
            total = (per_example * factors).sum(dim=0)
        gen = None if self.secure else torch.Generator().manual_seed(self.seed + step)
        noise = gaussian(total.numel(), self.sigma * self.clip, secure=self.secure,
                         generator=gen).to(total.device)
        flat.grad.copy_((total + noise) / (self.rate * self.n))
        return loss.detach()


def site_epsilon(*, sigma: float, rate: float, n: int, steps: int, delta: float) -> float:
    """This site's epsilon after ``steps`` DP-SGD steps."""
    return Accountant(noise_multiplier=sigma, sampling=Sampling("poisson", n, rate=rate),
                      delta=delta).epsilon(steps)


def site_sigma(*, target_epsilon: float, rate: float, n: int, steps: int,
               delta: float) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps at this site."""
    return calibrate(target_epsilon, delta=delta, rounds=steps,
                     sampling=Sampling("poisson", n, rate=min(rate, 1.0)))


def node_config(settings: Any, rounds: int) -> dict[str, float | bool]:
    """What every site is told when sample-level DP is on (``privacy.sample_dp``)."""
    if not settings.sample_dp:
        return {}
    return {"dp_sample_clip": settings.sample_clip,
            "dp_sample_noise": settings.sample_noise_multiplier,
            "dp_sample_epsilon": settings.sample_epsilon or 0.0,
            "dp_sample_delta": settings.sample_delta, "dp_rounds": rounds,
            "dp_secure": settings.secure_rng}
