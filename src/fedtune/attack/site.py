"""What an attacking site does in a round: a node hook, a no-op at every other site.

Data attacks (label flipping, a backdoor's poisoned rows) change what the site trains on,
through the round's ``ctx.poison``; update attacks (sign flip, scaling, noise, free riding)
change the update it sends. Each is seeded by the site's round seed, so a run repeats
exactly in every runtime. References are in :mod:`fedtune.attack.settings`.
"""

from __future__ import annotations

import torch

from ..node.context import FitContext
from ..node.instructions import as_text
from ..seeds import derived_seed


def stamp_trigger(x: torch.Tensor, size: int, value: float, token: int = 12935) -> torch.Tensor:
    """The inputs with the trigger (a copy): numbers get their last ``size`` features set to
    ``value`` (a pixel pattern); token ids (an integer tensor, 0 = padding, position 0 the
    [CLS] token) get their first ``size`` word positions set to ``token`` (a rare word:
    12935 is "cf" in MiniLM's vocabulary, the trigger of Kurita et al. 2020)."""
    out = x.clone()
    if not out.is_floating_point():
        out[:, 1:1 + size] = token
        return out
    flat = out.reshape(out.shape[0], -1)
    flat[:, -size:] = value
    return flat.reshape(out.shape)


class SiteAttack:
    """The attack named by the instruction, when this site is one of the attackers."""

    mutable: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.active = False

    def before_fit(self, ctx: FitContext) -> None:
        ins = ctx.instructions
        self.active = ctx.node_id in as_text(ctx.aux.get("attack_sites")).split(",")
        if not self.active:
            return
        kind = ins.attack
        if kind == "label_flip":
            classes = ins.attack_classes

            def flip(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return x, (classes - 1 - y).to(y.dtype)

            ctx.poison = flip
        elif kind == "backdoor":
            gen = torch.Generator().manual_seed(derived_seed(ctx.seed, "backdoor"))

            def backdoor(x: torch.Tensor, y: torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
                n = x.shape[0]
                rows = torch.randperm(n, generator=gen)[:max(1, round(ins.attack_poison * n))]
                rows = rows.to(x.device)
                x, y = x.clone(), y.clone()
                x[rows] = stamp_trigger(x[rows], ins.attack_trigger, ins.attack_trigger_value,
                                        ins.attack_trigger_token)
                y[rows] = ins.attack_target
                return x, y

            ctx.poison = backdoor

    def after_fit(self, ctx: FitContext) -> None:
        if not self.active:
            return
        assert ctx.update is not None
        ins = ctx.instructions
        kind = ins.attack
        if kind == "sign_flip":
            ctx.update = -ins.attack_scale * ctx.update
        elif kind in ("scale", "backdoor"):
            ctx.update = ins.attack_scale * ctx.update
        elif kind == "noise":
            gen = torch.Generator().manual_seed(derived_seed(ctx.seed, "attack-noise"))
            noise = torch.randn(ctx.update.shape, generator=gen) * ins.attack_noise
            ctx.update = noise.to(ctx.update.device, ctx.update.dtype)
        elif kind == "free_rider":
            ctx.update = torch.zeros_like(ctx.update)
