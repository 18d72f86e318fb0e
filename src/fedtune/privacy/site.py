"""A site's parts of differential privacy, as node hooks.

:class:`SiteDP`, distributed client-level DP: a node hook that clips the site's own update
to the clip it is told, adds its share of the Gaussian noise, and (adaptive clipping) sends
whether its update was within the clip as a noised bit, ``aux["dp_clip_bit"]``.

Shares: each of at least ``strategy.min_nodes`` sites adds noise of variance
(z C)^2 / min_nodes, so the sum of any round the coordinator applies carries at least the
variance (z C)^2 that the accountant assumes (McMahan et al. 2018, with the noise split across
sites as in distributed DP, Kairouz et al. 2021, "The Distributed Discrete Gaussian
Mechanism"). Runs after training and before the uplink's compression, which is
post-processing of the noised update.

:class:`SampleDP`, sample-level DP-SGD inside the site (:mod:`fedtune.privacy.dp_sgd`).
"""

from __future__ import annotations

import torch

from ..errors import MessageError
from ..node.context import FitContext
from ..node.instructions import NodeInstructions
from .noise import gaussian


class SiteDP:
    """Clip, noise and the clip bit, on the node."""

    mutable: tuple[str, ...] = ()

    def __init__(self, *, clip: float, noise_std: float, bit_noise_std: float,
                 secure: bool) -> None:
        if not clip > 0 or noise_std < 0 or bit_noise_std < 0:
            raise ValueError(f"dp_clip must be > 0 and the noise >= 0, got clip {clip}, "
                             f"noise {noise_std}, bit noise {bit_noise_std}")
        self.clip, self.noise_std, self.bit_noise_std = clip, noise_std, bit_noise_std
        self.secure = secure

    def before_fit(self, ctx: FitContext) -> None:
        return None

    def after_fit(self, ctx: FitContext) -> None:
        assert ctx.update is not None
        norm = float(ctx.update.norm())
        within = norm <= self.clip
        update = ctx.update if within else ctx.update * (self.clip / norm)
        gen = None if self.secure else torch.Generator().manual_seed(ctx.seed ^ 0x5D9)
        noise = gaussian(update.numel() + 1, 1.0, secure=self.secure, generator=gen)
        ctx.update = update + (noise[:-1] * self.noise_std).to(update.device)
        if self.bit_noise_std > 0:
            bit = float(within) + float(noise[-1]) * self.bit_noise_std
            ctx.out_aux["dp_clip_bit"] = torch.tensor([bit], dtype=torch.float32)


class SampleDP:
    """Sample-level DP-SGD at this site (:mod:`fedtune.privacy.dp_sgd`): sets up the round's
    DP-SGD and reports the site's epsilon after all its steps so far as
    ``aux["dp_sample_epsilon"]``. The steps taken and a calibrated sigma are the node's own
    state (rolled back if a round is asked twice)."""

    mutable: tuple[str, ...] = ("dp_sample_steps", "dp_sample_sigma")

    def __init__(self, instructions: NodeInstructions) -> None:
        self.ins = instructions

    def before_fit(self, ctx: FitContext) -> None:
        from .dp_sgd import DPSGD, site_sigma

        ins, n = self.ins, ctx.num_train
        if ins.dp_sample_delta >= 1 / n:
            raise MessageError(f"privacy.sample_delta = {ins.dp_sample_delta:g} is not below "
                               f"1 / {n} examples at this site; lower privacy.sample_delta")
        rate = min(1.0, ins.plan.batch_size / n)
        sigma = ins.dp_sample_noise
        if ins.dp_sample_epsilon > 0:
            sigma = ctx.state.get("dp_sample_sigma") or site_sigma(
                target_epsilon=ins.dp_sample_epsilon, rate=rate, n=n,
                steps=max(1, ins.dp_rounds) * ins.plan.num_steps(n), delta=ins.dp_sample_delta)
            ctx.state["dp_sample_sigma"] = sigma
        ctx.dp = DPSGD(clip=ins.dp_sample_clip, sigma=sigma, rate=rate, n=n,
                       secure=ins.dp_secure, seed=ctx.seed ^ 0x5A3)

    def after_fit(self, ctx: FitContext) -> None:
        from .dp_sgd import site_epsilon

        steps = int(ctx.state.get("dp_sample_steps", 0)) + ctx.steps
        ctx.state["dp_sample_steps"] = steps
        dp = ctx.dp
        eps = site_epsilon(sigma=dp.sigma, rate=dp.rate, n=dp.n, steps=steps,
                           delta=self.ins.dp_sample_delta)
        ctx.out_aux["dp_sample_epsilon"] = torch.tensor([eps], dtype=torch.float64)
