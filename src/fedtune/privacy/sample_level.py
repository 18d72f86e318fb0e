"""The coordinator's side of sample-level DP-SGD: it tells every site the DP-SGD settings
and collects each site's own epsilon (sent with every update) for the summary; the node
ledger of the store keeps every report (:mod:`fedtune.privacy.dp_sgd`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ..algorithms.strategy import Strategy
from .settings import PrivacySection

Update = Any


class SampleLevelReport:
    """Round part: DP-SGD instructions out, each site's latest epsilon in."""

    name = "sample_privacy"

    def __init__(self, settings: PrivacySection, rounds: int) -> None:
        self.s, self.rounds = settings, rounds
        self.site_epsilon: dict[str, float] = {}

    def adapt(self, strategy: Strategy) -> Strategy:
        return strategy

    def init(self) -> None:
        return None

    def node_config(self, state: None) -> dict[str, float | bool]:
        from .dp_sgd import node_config

        return node_config(self.s, self.rounds)

    def instruction_aux(self, state: Any) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: None,
              node_id: str) -> float:
        return weight

    def receive(self, update: Update, aux: dict[str, torch.Tensor], state: None,
                node_id: str) -> Update:
        eps = reported_epsilon(aux)
        if eps is not None:
            self.site_epsilon[node_id] = eps
        return update

    def release(self, delta: torch.Tensor, state: None, round_: int) -> torch.Tensor:
        return delta

    def after_round(self, state: None) -> None:
        return None

    def round_metrics(self, state: None) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: None) -> str | None:
        return None

    def summary(self, state: None) -> dict[str, Any]:
        values = list(self.site_epsilon.values())
        return {"level": "sample", "delta": self.s.sample_delta, "clip": self.s.sample_clip,
                "noise_multiplier": None if self.s.sample_epsilon else
                self.s.sample_noise_multiplier, "target_epsilon": self.s.sample_epsilon,
                "sites": dict(sorted(self.site_epsilon.items())),
                "epsilon_max": max(values) if values else None,
                "epsilon_median": statistics.median(values) if values else None,
                "secure_rng": self.s.secure_rng, "private": self.s.secure_rng}


def reported_epsilon(aux: dict[str, torch.Tensor]) -> float | None:
    """A site's reported DP-SGD epsilon, when it sent a sane one."""
    value = aux.get("dp_sample_epsilon")
    if value is None or value.numel() != 1:
        return None
    eps = float(value)
    return eps if math.isfinite(eps) and eps >= 0 else None
