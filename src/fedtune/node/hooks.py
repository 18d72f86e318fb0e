"""Node-side parts around local training: each hook prepares the round before the node
trains and finishes the result after, like Flower's client mods.

A hook declares the keys of the node's own state it writes (``mutable``): a node asked the
same round twice (a coordinator that restarted mid-round) rolls back exactly those keys, so
nothing is applied twice. The hooks a round runs follow from its typed instructions
(:func:`hooks_for`): SCAFFOLD's node part when the coordinator sends its control variate,
DiLoCo's kept inner optimizer, uplink compression with error feedback. A custom
``Task.train_fn`` runs between the same hooks; only gradient terms (``ctx.correction``) need
the default loop.

References:
    Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning" (option II control variates); Douillard et al. 2023, "DiLoCo" (the inner
    optimizer's state kept across rounds); Karimireddy et al. 2019 (error feedback).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..algorithms.transforms import uplink_chain
from .context import FitContext
from .instructions import NodeInstructions
from .uplink import UplinkTransforms


class NodeHook(Protocol):
    mutable: tuple[str, ...]  # node-state keys this hook writes

    def before_fit(self, ctx: FitContext) -> None: ...

    def after_fit(self, ctx: FitContext) -> None: ...


class ScaffoldNode:
    """SCAFFOLD's node part: corrects every gradient by c - c_i, then (option II)
    c_i+ = c_i - c + (x - y) / (K lr) and sends delta c_i = c_i+ - c_i."""

    mutable: tuple[str, ...] = ("scaffold_ci",)

    def before_fit(self, ctx: FitContext) -> None:
        control = ctx.aux["scaffold_c"]
        ci = ctx.state.get("scaffold_ci")
        ctx.correction = control - ci if ci is not None else control

    def after_fit(self, ctx: FitContext) -> None:
        assert ctx.update is not None
        control = ctx.aux["scaffold_c"]
        ci = ctx.state.get("scaffold_ci", torch.zeros_like(control))
        new_ci = ci - control - ctx.update / (ctx.steps * ctx.instructions.plan.lr)
        ctx.out_aux["scaffold_dc"] = new_ci - ci
        ctx.state["scaffold_ci"] = new_ci


class KeepOptimizerState:
    """The local optimizer continues from its state of the node's last round (DiLoCo)."""

    mutable: tuple[str, ...] = ("optimizer",)

    def before_fit(self, ctx: FitContext) -> None:
        ctx.optimizer_state = ctx.state.get("optimizer")

    def after_fit(self, ctx: FitContext) -> None:
        ctx.state["optimizer"] = ctx.optimizer_state or {}


def hooks_for(instructions: NodeInstructions, aux: dict[str, torch.Tensor],
              model: Any = None, node_id: str = "") -> list[NodeHook]:
    """The hooks one round runs, in order, from its instructions (and, for what a site
    keeps of its own, the layout of its ``model``; for what a site was told by name, its
    ``node_id``)."""
    from ..personal.node_parts import node_hooks

    hooks: list[NodeHook] = node_hooks(instructions, aux, model)
    if instructions.fair_loss_rows:  # first: the loss of the global model as it came
        from ..equity.fair_aggregation import StartLoss

        hooks.insert(0, StartLoss(instructions.fair_loss_rows))
    if instructions.dp_sample_clip > 0:
        from ..privacy.site import SampleDP

        hooks.append(SampleDP(instructions))
    if "scaffold_c" in aux:
        hooks.append(ScaffoldNode())
    if instructions.plan.keep_optimizer_state:
        hooks.append(KeepOptimizerState())
    if instructions.dp_clip > 0:  # distributed DP: before compression
        from ..privacy.site import SiteDP

        hooks.append(SiteDP(clip=instructions.dp_clip, noise_std=instructions.dp_noise_std,
                            bit_noise_std=instructions.dp_bit_noise_std,
                            secure=instructions.dp_secure))
    if instructions.attack not in ("", "none"):  # a simulated attacker's, before masking
        from ..attack.site import SiteAttack

        hooks.append(SiteAttack())
    if instructions.secagg_bits:  # after any DP noise; the update then leaves masked
        from ..secagg.masking import Ring
        from ..secagg.protocol import SecAggInput

        hooks.append(SecAggInput(Ring(instructions.secagg_bits, instructions.secagg_clip,
                                      instructions.secagg_summands)))
    budget = None
    if "site_steps" in aux or "site_uplink" in aux:  # a low-resource site's own
        from ..equity.low_resource import SiteBudget
        from .instructions import as_text

        budget = SiteBudget(node_id, as_text(aux.get("site_steps")),
                            as_text(aux.get("site_uplink")),
                            error_feedback=instructions.error_feedback, block=instructions.block)
    if instructions.uplink and not (budget is not None and budget.compresses):
        hooks.append(UplinkTransforms(uplink_chain(
            instructions.uplink, error_feedback=instructions.error_feedback,
            block=instructions.block)))
    if budget is not None:  # last: caps the plan others set, compresses what others made
        hooks.append(budget)
    return hooks
