"""Typed node instructions: what a fit or evaluate message's ``config`` may say.

The coordinator sends a flat JSON object (the message schema checks its value types); the
node reads it into these records, and a key that no record knows is an error naming the key
and the keys allowed, so a coordinator and a site of different versions never train with an
instruction silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import MessageError
from .trainer import LocalPlan

PLAN_KEYS = frozenset(f.name for f in fields(LocalPlan))


@dataclass(frozen=True)
class NodeInstructions:
    """A fit instruction: the local plan and the uplink's transforms."""

    plan: LocalPlan
    uplink: str = ""  # compression.uplink, e.g. "topk:0.1+q8"; "" sends the update dense
    error_feedback: bool = False
    block: int = 256
    # distributed client-level DP (fedtune.privacy.site): 0 = off
    dp_clip: float = 0.0
    dp_noise_std: float = 0.0
    dp_bit_noise_std: float = 0.0
    dp_secure: bool = True
    # sample-level DP-SGD (fedtune.privacy.dp_sgd): 0 = off
    dp_sample_clip: float = 0.0
    dp_sample_noise: float = 0.0
    dp_sample_epsilon: float = 0.0
    dp_sample_delta: float = 1e-5
    dp_rounds: int = 0
    # secure aggregation (fedtune.secagg): 0 = off
    secagg_bits: int = 0
    secagg_clip: float = 1.0
    secagg_summands: int = 0
    # personalization (fedtune.personal): the method and its knobs
    personal: str = ""
    head_steps: int = 10
    ditto_lam: float = 0.0
    pfa_alpha: float = 0.01
    pfa_variant: str = "fo"
    apfl_alpha: float = 0.5
    apfl_alpha_lr: float = 0.01
    fedex_grid: str = ""  # FedEx's configurations, lr:steps:scope;... ("" = off)
    fedex_val_fraction: float = 0.2
    fedex_metric: str = "error"  # or "loss"
    fedex_samples: int = 2  # configurations a site tries per round (the first one trains)
    # a simulated attack (fedtune.attack): its kind, the attacking sites, its knobs
    attack: str = ""  # the attacking sites travel in aux.attack_sites (as_bytes)
    attack_scale: float = 1.0
    attack_noise: float = 1.0
    attack_target: int = 0
    attack_trigger: int = 4
    attack_trigger_value: float = 3.0
    attack_trigger_token: int = 12935
    attack_poison: float = 0.5
    attack_classes: int = 0
    # fair aggregation (fedtune.equity): rows the global model's loss is measured on, 0 = off
    fair_loss_rows: int = 0

    @staticmethod
    def from_config(config: dict[str, Any]) -> NodeInstructions:
        other = {f.name for f in fields(NodeInstructions)} - {"plan"}
        unknown = sorted(set(config) - PLAN_KEYS - other)
        if unknown:
            raise MessageError(f"unknown instruction key {unknown[0]!r} in a fit message; "
                               f"known: {', '.join(sorted(PLAN_KEYS | other))} (are the "
                               "coordinator and this site the same fedtune version?)")
        plan = LocalPlan(**{k: v for k, v in config.items() if k in PLAN_KEYS})
        typed = {f.name: f.type for f in fields(NodeInstructions) if f.name != "plan"}
        cast = {"str": str, "bool": bool, "int": int, "float": float}
        return NodeInstructions(plan, **{k: cast[str(typed[k])](v) for k, v in config.items()
                                         if k in typed})


@dataclass(frozen=True)
class EvalInstructions:
    """An evaluate instruction: fine-tune this many SGD steps first (0: none)."""

    personalize_steps: int = 0
    lr: float = 0.05
    batch_size: int = 32
    personal: str = ""  # the personalization method whose personal model is evaluated
    personalize_scope: str = "all"  # or "head": fine-tune the last layer only
    prior_correction: bool = False  # the site's label prior into the head's bias first
    # the fine-tuning's optimizer (plain SGD unless FedEx tuned the local plan's)
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    # the bias audit of a served run: count the test rows (equity/bias_counts.py)
    bias_audit: bool = False
    bias_group_feature: int = -1

    @staticmethod
    def from_config(config: dict[str, Any]) -> EvalInstructions:
        known = {f.name for f in fields(EvalInstructions)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise MessageError(f"unknown instruction key {unknown[0]!r} in an evaluate "
                               f"message; known: {', '.join(sorted(known))}")
        return EvalInstructions(**config)

    @property
    def plan(self) -> LocalPlan:
        return LocalPlan(steps=self.personalize_steps, batch_size=self.batch_size, lr=self.lr,
                         optimizer=self.optimizer, momentum=self.momentum,
                         weight_decay=self.weight_decay)


def as_bytes(text: str) -> torch.Tensor:
    """Text as the uint8 tensor an instruction's aux carries it in (a config value is capped
    at 512 characters; lists of sites are not)."""
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if text else \
        torch.zeros(0, dtype=torch.uint8)


def as_text(data: torch.Tensor | None) -> str:
    """The text :func:`as_bytes` made ("" for None); bytes that are not UTF-8 are refused."""
    if data is None:
        return ""
    try:
        return bytes(data.to(torch.uint8).tolist()).decode()
    except UnicodeDecodeError:
        raise MessageError("text in the instruction's aux is not UTF-8") from None
