"""The ``[personalization]`` section: which method gives each site its own model, what stays
at the site, and how personal models are evaluated.

Methods (each is parts: a layout of what travels, a node hook, a local loop; see
:mod:`fedtune.personal.methods`):

=============  ==========================================================================
``none``       the shared model only (evaluation may still fine-tune it: ``finetune``)
``finetune``   FedAvg's global model + ``evaluation.personalize_steps`` local steps
``fedper``     personal head (``local = ["head"]``), shared body
``fedrep``     personal head trained first with the body frozen, then the body
``fedbn``      personal normalization layers and statistics (``local = ["norm"]``)
``ditto``      a whole personal model, trained toward the global one with ``lam``
``perfedavg``  MAML-style local loop (``variant = "fo"`` or ``"hf"``), fine-tuned to evaluate
``reptile``    Reptile meta-initialization: FedAvg with server step size ``meta_lr``,
               fine-tuned to evaluate
``apfl``       a personal model mixed with the shared one, the mix learned per site
``fedbabu``    the head frozen at its shared initial values while the body trains, then
               the whole model fine-tuned at each site to evaluate
``fedex``      FedAvg + fine-tuning whose local rate, steps and scope the federation tunes
               while it trains (FedEx, :mod:`fedtune.personal.fedex`)
=============  ==========================================================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

METHODS = ("none", "finetune", "fedper", "fedrep", "fedbn", "ditto", "perfedavg", "reptile",
           "fedbabu", "apfl", "fedex")
DEFAULT_LOCAL = {"fedper": ["head"], "fedrep": ["head"], "fedbn": ["norm"]}
NEEDS_LOCAL = ("fedper", "fedrep", "fedbn")


class PersonalizationSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["none", "finetune", "fedper", "fedrep", "fedbn", "ditto", "perfedavg",
                    "reptile", "fedbabu", "apfl", "fedex"] = "none"
    local: list[str] = Field(default_factory=list)  # glob patterns, "head" or "norm"
    buffers: Literal["travel", "local"] = "travel"  # BatchNorm statistics: averaged or kept
    lam: float = Field(0.1, ge=0)  # Ditto's pull toward the global model
    head_steps: int = Field(10, ge=1)  # FedRep: head steps before the body's
    variant: Literal["fo", "hf"] = "fo"  # Per-FedAvg: first-order or Hessian-free
    alpha: float = Field(0.01, gt=0)  # Per-FedAvg's inner step size
    meta_lr: float = Field(0.5, gt=0)  # Reptile's server step size
    alpha_mix: float = Field(0.5, ge=0, le=1)  # APFL's initial mixing weight
    alpha_lr: float = Field(0.01, ge=0)  # APFL's step size for the mixing weight
    finetune_own: bool = False  # also fine-tune trained personal models to evaluate
    # the site's label prior added to the head's bias before fine-tuning (label shift:
    # Saerens et al. 2002); for personal models that start from the global one
    prior_correction: bool = False
    eval_every: int = Field(0, ge=0)  # personal evaluation every N rounds (0: at the end)
    holdout_sites: int = Field(0, ge=0)  # sites that never train; evaluated after adapting
    adapt_steps: list[int] = Field(default_factory=lambda: [0, 1, 2, 5])
    # FedEx's configuration space (the grid of these lists) and its validation part
    tune_lr: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1])
    tune_steps: list[int] = Field(default_factory=lambda: [5, 20, 50])
    tune_scope: list[Literal["all", "head"]] = ["all", "head"]
    tune_val_fraction: float = Field(0.2, gt=0, lt=1)
    tune_metric: Literal["error", "loss"] = "error"
    # configurations each site tries per round: 1 = FedEx as published (one configuration,
    # a discounted global baseline); k > 1: k - 1 more fine-tuned for validation only, each
    # the others' baseline (the site's own data and round cancel out of the comparison)
    tune_samples: int = Field(2, ge=1, le=4)
    tune_explore: float = Field(0.2, ge=0, lt=1)  # the uniform share sites also sample from


def personalization_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A method's own layout when ``local`` is not given (FedPer's head, FedBN's norms)."""
    section = raw.get("personalization")
    if not isinstance(section, dict) or "local" in section:
        return raw
    local = DEFAULT_LOCAL.get(str(section.get("method", "none")))
    return {**raw, "personalization": {**section, "local": local}} if local else raw


def check_personalization(cfg: Any) -> None:
    # cfg: the RunConfig (not imported: config.py imports this module)
    """Rules across sections: a method with a config it cannot use is refused by name."""
    p = cfg.personalization
    if p.method in NEEDS_LOCAL and not p.local:
        raise ValueError(f"personalization.method = \"{p.method}\" keeps parameters at each "
                         "site: set personalization.local (e.g. [\"head\"] or [\"norm\"])")
    if p.local and p.method in ("none", "finetune", "perfedavg", "reptile", "ditto", "fedex",
                                 "fedbabu", "apfl"):
        raise ValueError(f"personalization.local is set but personalization.method = "
                         f"\"{p.method}\" shares the whole model; use method = \"fedper\", "
                         "\"fedrep\" or \"fedbn\", or drop personalization.local")
    if p.method == "reptile" and cfg.strategy.name != "fedavg":
        raise ValueError("personalization.method = \"reptile\" is FedAvg with a server step "
                         f"size; strategy.name = \"{cfg.strategy.name}\" cannot carry it: set "
                         "strategy.name = \"fedavg\"")
    if p.holdout_sites and p.holdout_sites >= cfg.data.num_nodes and not cfg.data.files:
        raise ValueError(f"personalization.holdout_sites = {p.holdout_sites} leaves no site "
                         f"to train (data.num_nodes = {cfg.data.num_nodes})")
    if p.method in ("fedrep", "ditto", "perfedavg", "apfl") and cfg.local.optimizer != "sgd":
        raise ValueError(f"personalization.method = \"{p.method}\" runs its own SGD loop; "
                         "set local.optimizer = \"sgd\"")
    if p.method == "fedex" and (not p.tune_lr or not p.tune_steps or not p.tune_scope
                                or min(p.tune_lr) <= 0 or min(p.tune_steps) < 1):
        raise ValueError("personalization.method = \"fedex\" needs non-empty tune_lr (> 0), "
                         "tune_steps (>= 1) and tune_scope lists")
    if p.method == "fedex":
        from .fedex import grid, grid_text

        text = grid_text(grid(p.tune_lr, p.tune_steps, p.tune_scope))
        if len(text) > 512:
            raise ValueError(f"personalization: FedEx's grid of {len(p.tune_lr)} x "
                             f"{len(p.tune_steps)} x {len(p.tune_scope)} configurations is "
                             f"{len(text)} characters; an instruction carries at most 512: "
                             "use fewer values")
    if p.method != "none" and cfg.strategy.name == "diloco":
        raise ValueError("personalization with strategy.name = \"diloco\" is not supported "
                         "(its inner AdamW state is kept per site); use fedavg or fedprox")


def layout(cfg: Any) -> dict[str, Any]:
    """What :meth:`fedtune.node.node.Workbench.create` needs to lay out the model."""
    return {"local": tuple(cfg.personalization.local), "buffers": cfg.personalization.buffers}


def add_local_gains(extra: dict[str, Any]) -> None:
    """With the ``local`` baseline: each site's personal accuracy minus its accuracy when it
    trains alone, in points, into ``extra["personal"]``."""
    personal = extra.get("personal", {})
    own = extra.get("baselines", {}).get("local", {}).get("per_site_own_accuracy")
    gains = personal.get("gain_over_global_pts")
    if not own or gains is None or "per_site_acc" not in personal:
        return
    personal["gain_over_local_pts"] = {k: 100 * (v - own[k])
                                       for k, v in personal["per_site_acc"].items() if k in own}
