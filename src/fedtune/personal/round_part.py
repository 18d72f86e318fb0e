"""The coordinator's part of personalization (a round part, :mod:`fedtune.round_parts`).

* Tells every site the method and its knobs (``node_config``).
* Averages the buffers that travel (BatchNorm running statistics): each site's come back in
  its reply's ``aux["buffers"]``, the round's mean (every site equally, summed in site-id
  order so every runtime gets the same bits) is sent with the next instruction and with
  evaluations, and it is the state this part keeps, so a resumed run continues with it.
* Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms"; Jiang et al. 2019,
  "Improving Federated Learning Personalization via Model Agnostic Meta Learning"): the
  meta-update ``w <- w + eps mean_i (phi_i - w)`` over the sites' K-step local models is
  FedAvg's aggregate with server step size ``eps``, so the part swaps in a plain SGD server
  optimizer of rate ``personalization.meta_lr``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..algorithms.server_opt import SGD
from ..algorithms.strategy import Strategy
from ..errors import ConfigError
from .node_parts import BUFFERS
from .settings import PersonalizationSection


class Personalization:
    name = "personal"

    def __init__(self, settings: PersonalizationSection, travel_buffers: torch.Tensor) -> None:
        self.s = settings
        self.initial = travel_buffers
        self.pending: dict[str, torch.Tensor] = {}

    def adapt(self, strategy: Strategy) -> Strategy:
        if self.s.method == "reptile":
            return replace(strategy, server_opt=SGD(lr=self.s.meta_lr))
        return strategy

    def init(self) -> torch.Tensor | None:
        return self.initial.clone() if self.initial.numel() else None

    def node_config(self, state: Any) -> dict[str, float | bool | str | int]:
        s = self.s
        if s.method in ("none", "finetune", "reptile"):
            return {}
        out: dict[str, float | bool | str | int] = {"personal": s.method}
        if s.method == "fedrep":
            out["head_steps"] = s.head_steps
        elif s.method == "ditto":
            out["ditto_lam"] = s.lam
        elif s.method == "perfedavg":
            out.update(pfa_alpha=s.alpha, pfa_variant=s.variant)
        elif s.method == "apfl":
            out.update(apfl_alpha=s.alpha_mix, apfl_alpha_lr=s.alpha_lr)
        return out

    def instruction_aux(self, state: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {BUFFERS: state} if state is not None else {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: Any,
              node_id: str) -> float:
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: Any,
                node_id: str) -> Any:
        buffers = aux.get(BUFFERS)
        if state is not None and buffers is not None and buffers.shape == state.shape \
                and bool(torch.isfinite(buffers).all()):
            self.pending[node_id] = buffers
        return update

    def release(self, delta: torch.Tensor, state: torch.Tensor | None,
                round_: int) -> torch.Tensor:
        if state is not None and self.pending:
            total = torch.zeros_like(state)
            for node_id in sorted(self.pending):
                total.add_(self.pending[node_id].to(state.device))
            state.copy_(total.div_(len(self.pending)))
        self.pending.clear()
        return delta

    def after_round(self, state: Any) -> None:
        self.pending.clear()

    def round_metrics(self, state: Any) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: Any) -> str | None:
        return None

    def summary(self, state: Any) -> dict[str, Any]:
        return {"method": self.s.method, "local": list(self.s.local),
                "buffers": self.s.buffers}


def personalization_part(cfg: Any, bench: Any) -> Personalization | None:
    """The part, when the run personalizes or its model has buffers that travel."""
    travel = bench.flat.buffers("travel")
    if cfg.personalization.method == "none" and not travel.numel():
        return None
    if travel.numel() and cfg.strategy.mode == "secagg":
        raise ConfigError("the model has BatchNorm statistics, which would travel in the "
                          "clear beside securely aggregated updates; set "
                          "personalization.buffers = \"local\" (each site keeps its own)")
    return Personalization(cfg.personalization, travel.detach().clone())
