"""Node hooks of personalization: what a site keeps between rounds and how it trains.

Each is a node hook (:mod:`fedtune.node.hooks`) that declares the node-state key it writes,
so a round asked twice rolls it back like every other hook's state. A site's personal state
is only its personal part (the ``local`` suffix of the flat vector and its kept buffers, or
Ditto's personal vector), held in the node's state: in memory in a simulation, in the Ray
actor, in the site's state file over gRPC (so it survives a site restart).

* :class:`TravelBuffers`: the buffers that travel (BatchNorm statistics) come with the
  instruction and go back with the update, to be averaged by the coordinator
  (:class:`fedtune.personal.round_part.BufferMean`); every runtime does the same.
* :class:`KeepPersonal`: the personal parameters and buffers (FedPer, FedRep, FedBN).
* :class:`FedRepHead`: FedRep's head phase (body frozen) before the body's (head frozen).
* :class:`Ditto`: a personal model trained after the global one with the pull
  ``lam/2 ||v - w||^2`` toward the round's global model.
* :class:`PerFedAvg`: the MAML-style local loop (first-order or Hessian-free).
* :class:`FrozenHead`: FedBABU's body-only federated training.
* :class:`fedtune.personal.apfl.APFL`: the adaptive mixture of a personal and the shared model.

References:
    Arivazhagan et al. 2019 (FedPer); Collins et al. 2021, "Exploiting Shared
    Representations for Personalized Federated Learning" (FedRep, Algorithm 1);
    Li et al. 2021 (FedBN); Li et al. 2021, "Ditto: Fair and Robust Federated Learning
    Through Personalization" (Algorithm 1); Fallah et al. 2020, "Personalized Federated
    Learning with Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach"
    (Per-FedAvg, first-order and Hessian-free updates, eqs. 8-9); Oh, Kim & Yun 2022,
    "FedBABU: Toward Enhanced Representation for Federated Image Classification" (ICLR).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch

from ..node.context import FitContext
from ..params import FlatModel

BUFFERS = "buffers"  # the instruction's and the reply's aux key for travelling buffers


def load_personal(flat: FlatModel, saved: dict[str, torch.Tensor] | None) -> None:
    """Put a site's personal part into the model: what it kept, or the model's initial
    values for a site that has not trained yet."""
    if saved is None:
        flat.local.copy_(flat.initial_local)
        flat.load_buffers_("local", flat.initial_buffers["local"])
    else:
        flat.local.copy_(saved["local"])
        flat.load_buffers_("local", saved["local_buffers"])


def load_global(flat: FlatModel, aux: dict[str, torch.Tensor]) -> None:
    """The coordinator's model around the loaded shared part: the initial personal part and
    the travelling buffers the instruction carries (or their initial values)."""
    load_personal(flat, None)
    buffers = aux.get(BUFFERS)
    flat.load_buffers_("travel", flat.initial_buffers["travel"] if buffers is None
                       else buffers.to(flat.device))


def load_own_model(flat: FlatModel, method: str, state: dict[str, Any]) -> bool:
    """Turn the loaded global model into the site's own (its personal part, or Ditto's
    personal model); False for methods whose personal model is the global one fine-tuned
    (which still starts from the buffers the site keeps, when it keeps some)."""
    if has_personal_part(flat):
        load_personal(flat, state.get("personal"))
    if method in ("fedper", "fedrep", "fedbn"):
        return True
    if method == "ditto":
        saved = state.get("ditto")
        if saved is not None:  # a site that never trained has the global model
            flat.vector.copy_(saved.to(flat.device))
        return True
    if method == "apfl":
        from .apfl import load_apfl

        load_apfl(flat, state)
        return True
    return False


class TravelBuffers:
    mutable: tuple[str, ...] = ()

    def before_fit(self, ctx: FitContext) -> None:
        ctx.model.load_buffers_("travel", ctx.aux[BUFFERS].to(ctx.model.device))

    def after_fit(self, ctx: FitContext) -> None:
        ctx.out_aux[BUFFERS] = ctx.model.buffers("travel")


class KeepPersonal:
    mutable: tuple[str, ...] = ("personal",)

    def before_fit(self, ctx: FitContext) -> None:
        load_personal(ctx.model, ctx.state.get("personal"))

    def after_fit(self, ctx: FitContext) -> None:
        flat = ctx.model
        ctx.state["personal"] = {"local": flat.local.detach().clone(),
                                 "local_buffers": flat.buffers("local")}


class FedRepHead:
    """FedRep: ``head_steps`` steps of the personal head with the shared body frozen, then
    the round's plan on the body with the head frozen (only the body's update travels)."""

    mutable: tuple[str, ...] = ()

    def before_fit(self, ctx: FitContext) -> None:
        n = ctx.model.spec.numel
        plan = replace(ctx.instructions.plan, steps=ctx.instructions.head_steps, momentum=0.0)
        ctx.train(plan, "head", trainable=slice(n, None))
        ctx.trainable = slice(0, n)

    def after_fit(self, ctx: FitContext) -> None:
        return None


class FrozenHead:
    """FedBABU: the shared head stays at its initial values during federated training (only
    the body learns, so every site's features are trained toward one fixed classifier); the
    whole model is fine-tuned to evaluate."""

    mutable: tuple[str, ...] = ()

    def before_fit(self, ctx: FitContext) -> None:
        from .fedex import head_slice

        ctx.trainable = slice(0, head_slice(ctx.model).start)

    def after_fit(self, ctx: FitContext) -> None:
        return None


class Ditto:
    """Ditto: after the global model's local training (whose update travels, as FedAvg's),
    the personal model v continues from where the site left it (the global model the first
    time) and takes the round's plan with the gradient of ``lam/2 ||v - w||^2`` added."""

    mutable: tuple[str, ...] = ("ditto",)

    def before_fit(self, ctx: FitContext) -> None:
        return None

    def after_fit(self, ctx: FitContext) -> None:
        flat = ctx.model
        saved = ctx.state.get("ditto")
        flat.vector.copy_(ctx.params if saved is None else saved.to(flat.device))
        plan = replace(ctx.instructions.plan, prox_mu=ctx.instructions.ditto_lam,
                       momentum=0.0)
        ctx.train(plan, "ditto", prox_center=ctx.params)
        ctx.state["ditto"] = flat.vector.detach().clone()


class PerFedAvg:
    """Per-FedAvg's local loop in place of plain SGD (see :func:`perfedavg_loop`)."""

    mutable: tuple[str, ...] = ()

    def before_fit(self, ctx: FitContext) -> None:
        from .meta_loop import perfedavg_loop

        ctx.loop = partial(perfedavg_loop, alpha=ctx.instructions.pfa_alpha,
                           variant=ctx.instructions.pfa_variant)

    def after_fit(self, ctx: FitContext) -> None:
        return None


def has_personal_part(flat: FlatModel | None) -> bool:
    """Whether the model's layout keeps parameters or buffers at each site."""
    return flat is not None and bool(flat.local.numel() or flat.initial_buffers["local"].numel())


def node_hooks(instructions: Any, aux: dict[str, torch.Tensor],
               flat: FlatModel | None) -> list[Any]:
    """The personalization hooks one round runs, in order (before compression or privacy:
    they shape the model the update is taken from)."""
    hooks: list[Any] = []
    if BUFFERS in aux:
        hooks.append(TravelBuffers())
    method = instructions.personal
    if has_personal_part(flat):  # the layout decides, the same at every site
        hooks.append(KeepPersonal())
    if method == "fedrep":
        hooks.append(FedRepHead())
    if method == "perfedavg":
        hooks.append(PerFedAvg())
    if method == "fedbabu":
        hooks.append(FrozenHead())
    if method == "apfl":
        from .apfl import APFL

        hooks.append(APFL())
    if method == "ditto":
        hooks.append(Ditto())
    if instructions.fedex_grid:
        from .fedex import FedExChoice

        hooks.append(FedExChoice())
    return hooks
