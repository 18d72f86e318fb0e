"""Screening and reputation (``[screening]``) as a round part: outlier updates are dropped
before the aggregate, with the reason logged, and every site carries a reputation across
rounds that weighs its updates and, below ``screening.reputation_min``, leaves them out.

The part keeps a reference to each update of the round on its way into the fold; when the
fold is finished it screens the round's ``[K, D]`` block (:func:`fedtune.algorithms.screening.screen`),
in the order of the sites' names (the same in every runtime), and replaces the aggregate by
the strategy's own aggregator over the kept updates, each weighed by its fold weight times
its site's reputation. A round that keeps no update leaves the model unchanged. Each site's
decayed counts of accepted and screened rounds are the part's state (in every snapshot);
the summary reports each site's reputation, its screened rounds and the latest reasons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.screening import reputation, screen
from ..algorithms.strategy import Strategy, aggregate_updates
from ..errors import ConfigError
from .settings import ScreeningSection

log = logging.getLogger("fedtune")


@dataclass
class ScreenState:
    """Per site: decayed accepted and screened counts, and the rounds its update was left
    out (screened, or its reputation too low)."""

    accepted: torch.Tensor
    screened: torch.Tensor
    left_out: torch.Tensor


@dataclass
class ScreeningPart:
    settings: ScreeningSection
    sites: list[str]
    name: str = "screening"
    strategy: Strategy | None = None
    reasons: dict[str, str] = field(default_factory=dict)  # each site's latest, this process
    _round: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.sites)}

    def adapt(self, strategy: Strategy) -> Strategy:
        if strategy.normalize_by_steps:
            raise ConfigError("screening.enabled re-aggregates without step counts; use a "
                              "strategy other than fednova")
        self.strategy = strategy
        return strategy

    def init(self) -> ScreenState:
        n = len(self.sites)
        zeros = torch.zeros(n, dtype=torch.float64)
        return ScreenState(zeros.clone(), zeros.clone(), zeros.clone())

    def node_config(self, state: ScreenState) -> dict[str, int]:
        return {}

    def instruction_aux(self, state: ScreenState) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: ScreenState,
              node_id: str) -> float:
        self._round[node_id] = (torch.zeros(0), weight)
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: ScreenState,
                node_id: str) -> Any:
        weight = self._round[node_id][1]
        if isinstance(update, torch.Tensor):
            self._round[node_id] = (update, weight)
            return update

        def kept() -> torch.Tensor:
            u: torch.Tensor = update()
            self._round[node_id] = (u, weight)
            return u

        return kept

    def release(self, delta: torch.Tensor, state: ScreenState, round_: int) -> torch.Tensor:
        members = sorted(n for n, (u, _) in self._round.items() if u.numel())
        if not members or self.strategy is None:
            return delta
        block = torch.stack([self._round[n][0].to(delta.device) for n in members])
        s = self.settings
        reasons = screen(block, norm_mads=s.norm_mads, cosine_min=s.cosine_min,
                         min_norm_share=s.min_norm_share)
        rep = reputation(state.accepted, state.screened)
        state.accepted.mul_(s.decay)
        state.screened.mul_(s.decay)
        keep, weights = [], []
        for k, (node, reason) in enumerate(zip(members, reasons, strict=True)):
            i = self.index.get(node)
            r = float(rep[i]) if i is not None else 0.5
            if reason is None and r < s.reputation_min:
                reason = (f"reputation {r:.2f} is below screening.reputation_min = "
                          f"{s.reputation_min:g} (screened in earlier rounds)")
                if i is not None:
                    state.accepted[i] += 1  # its update passed: it earns its way back
                    state.left_out[i] += 1
            elif reason is None:
                keep.append(k)
                weights.append(self._round[node][1] * (r if s.weigh_by_reputation else 1.0))
                if i is not None:
                    state.accepted[i] += 1
                continue
            elif i is not None:
                state.screened[i] += 1
                state.left_out[i] += 1
            self.reasons[node] = f"round {round_}: {reason}"
            log.warning("round %d: screened out %s: %s", round_, node, reason)
        if not keep:
            log.warning("round %d: screening kept none of %d updates; the global model is "
                        "unchanged", round_, len(members))
            return torch.zeros_like(delta)
        rows = torch.tensor(keep)
        return aggregate_updates(self.strategy, block[rows],
                                 torch.tensor(weights, dtype=torch.float64),
                                 torch.ones(len(keep))).to(delta.dtype)

    def after_round(self, state: ScreenState) -> None:
        self._round.clear()

    def round_metrics(self, state: ScreenState) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: ScreenState) -> str | None:
        return None

    def summary(self, state: ScreenState) -> dict[str, Any]:
        rep = reputation(state.accepted, state.screened)
        return {"reputation": {s: float(rep[i]) for s, i in self.index.items()},
                "left_out_rounds": {s: int(state.left_out[i]) for s, i in self.index.items()
                                    if state.left_out[i] > 0},
                "latest_reasons": dict(sorted(self.reasons.items()))}
