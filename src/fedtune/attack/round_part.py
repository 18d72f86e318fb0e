"""The coordinator's side of a simulated attack: it names the attackers in every
instruction, records them, and measures a backdoor's success on its own test set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..algorithms.strategy import Strategy
from ..node.instructions import as_bytes
from ..node.trainer import evaluate_model
from ..types import NodeRoundRecord
from .settings import attacker_sites
from .site import stamp_trigger


class AttackPart:
    """A round part (:mod:`fedtune.round_parts`): instructions out, a summary at the end."""

    name = "attack"

    def __init__(self, cfg: Any, node_ids: list[str], classes: int) -> None:
        self.a = cfg.attack
        self.sites = attacker_sites(cfg, node_ids)
        self.classes = classes

    def adapt(self, strategy: Strategy) -> Strategy:
        return strategy

    def init(self) -> None:
        return None  # nothing to keep: the attackers follow from the config and the seed

    def node_config(self, state: Any) -> dict[str, float | str | int]:
        a = self.a
        return {"attack": a.kind, "attack_scale": a.scale, "attack_noise": a.noise_std,
                "attack_target": a.target, "attack_trigger": a.trigger_size,
                "attack_trigger_value": a.trigger_value, "attack_trigger_token": a.trigger_token,
                "attack_poison": a.poison_fraction,
                "attack_classes": self.classes}

    def instruction_aux(self, state: Any) -> dict[str, torch.Tensor]:
        return {"attack_sites": as_bytes(",".join(self.sites))}  # any number of sites

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: Any,
              node_id: str) -> float:
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: Any,
                node_id: str) -> Any:
        return update

    def release(self, delta: torch.Tensor, state: Any, round_: int) -> torch.Tensor:
        return delta

    def after_round(self, state: Any) -> None:
        return None

    def round_metrics(self, state: Any) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: Any) -> str | None:
        return None

    def summary(self, state: Any) -> dict[str, Any]:
        return {"kind": self.a.kind, "sites": self.sites}


def backdoor_success(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, a: Any,
                     task: Any) -> float:
    """The share of test inputs not of the target class that the model, shown the trigger,
    puts in the target class (the attack success rate)."""
    keep = y != a.target
    if not bool(keep.any()):
        return float("nan")
    stamped = stamp_trigger(x[keep], a.trigger_size, a.trigger_value, a.trigger_token)
    target = torch.full_like(y[keep], a.target)
    out = evaluate_model(module, stamped, target, task.loss_fn, task.metrics_fn)
    return float(out.get("accuracy", float("nan")))


def mark_attackers(parts: Sequence[Any], ledger: list[NodeRoundRecord]) -> list[NodeRoundRecord]:
    """The round's ledger with each attacker's fit rows marked with the attack it made (the
    node ledger says who attacked, and how, in every round; no attack part: unchanged)."""
    part = next((p for p in parts if isinstance(p, AttackPart)), None)
    if part is None:
        return ledger
    attackers = set(part.sites)
    return [replace(n, attack=part.a.kind) if n.node_id in attackers and n.phase in
            ("fit", "late") else n for n in ledger]
