"""Per-site contribution scores every round (``fairness.contribution = "gtg"`` or ``"loo"``),
as a round part, stored with the run.

The part keeps a reference to each update of the round on its way into the fold (with the
weight the fold gave it) and, when the aggregate is released, values coalitions S of the
round's K sites by the coordinator's test accuracy, in points, of the sub-model

    w_t + sum_{k in S} w_k u_k / sum_{k in round} w_k

that is the global model plus S's part of the round's weighted-mean step (with server lr 1
the full coalition is the round's step). A site whose update is zero (a free-rider that sends
the model back) then adds exactly nothing to any coalition: Shapley's null player, scored 0.
(GTG-Shapley's paper re-normalises the mean within S, which charges such a site for diluting
the others; here its cost shows as its 0 beside its examples.) Scores are over
:mod:`fedtune.equity.contribution`'s estimators; a round's scores sum to its gain
(U(all) - U(w_t)) for GTG-Shapley.

The scores of every round (NaN where a site did not take part) are the part's state, so a
resumed run keeps them, and the summary adds them up per site over the run. Holding a
round's K updates is what a stacked aggregator holds; the part is refused with secure
aggregation (single updates are hidden) and with client-level DP (scores of single
updates are not covered by its guarantee).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.strategy import Strategy
from ..node.trainer import evaluate_model
from ..seeds import derived_seed
from .contribution import Coalition, gtg_shapley, leave_one_out

Update = torch.Tensor | Callable[[], torch.Tensor]


@dataclass
class ContributionState:
    """Every round's score per site (rounds x sites, NaN: not in the round) and the
    coalitions evaluated."""

    scores: torch.Tensor
    evaluations: float = 0.0


@dataclass
class ContributionPart:
    """Scores each round's sites by GTG-Shapley (``method = "gtg"``) or leave-one-out."""

    method: str
    sites: list[str]
    rounds: int
    bench: Any  # the coordinator's Workbench (model, loss, metrics)
    x_test: torch.Tensor
    y_test: torch.Tensor
    params: Callable[[], torch.Tensor]  # the global parameters (w_t while a round folds)
    permutations: int = 50
    truncation: float = 0.1
    seed: int = 0
    name: str = "contribution"
    _round: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.sites)}

    def adapt(self, strategy: Strategy) -> Strategy:
        return strategy

    def init(self) -> ContributionState:
        n = len(self.sites)
        return ContributionState(
            scores=torch.full((self.rounds, n), math.nan, dtype=torch.float64))

    def node_config(self, state: ContributionState) -> dict[str, int]:
        return {}

    def instruction_aux(self, state: ContributionState) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: ContributionState,
              node_id: str) -> float:
        self._round[node_id] = (torch.zeros(0), weight)
        return weight

    def receive(self, update: Update, aux: dict[str, torch.Tensor], state: ContributionState,
                node_id: str) -> Update:
        weight = self._round[node_id][1]
        if isinstance(update, torch.Tensor):
            self._round[node_id] = (update, weight)
            return update

        def kept() -> torch.Tensor:
            u = update()
            self._round[node_id] = (u, weight)
            return u

        return kept

    def utility(self, vector: torch.Tensor) -> float:
        """The coordinator's test accuracy of ``vector``, in points (minus the loss for a
        task without accuracy)."""
        flat, task = self.bench.flat, self.bench.task
        flat.load_(vector, with_grad=False)
        with torch.no_grad():
            m = evaluate_model(flat.module, self.x_test, self.y_test, task.loss_fn,
                               task.metrics_fn)
        return 100.0 * m["accuracy"] if "accuracy" in m else -m["loss"]

    def release(self, delta: torch.Tensor, state: ContributionState,
                round_: int) -> torch.Tensor:
        members = sorted(n for n, (u, _) in self._round.items() if u.numel())
        if not members:
            return delta
        base = self.params().detach()
        total = sum(self._round[n][1] for n in members)
        updates = [self._round[n][0].to(base.device) for n in members]
        coefs = [self._round[n][1] / total for n in members]

        def value(coalition: Coalition) -> float:
            vector = base.clone()
            for k in coalition:
                vector.add_(updates[k], alpha=coefs[k])
            return self.utility(vector)

        if self.method == "gtg":
            scores, evaluated = gtg_shapley(
                value, len(members), permutations=self.permutations,
                truncation=self.truncation, seed=derived_seed(self.seed, round_, "gtg"))
        else:
            scores, evaluated = leave_one_out(value, len(members))
        row = min(round_, self.rounds) - 1
        for node, score in zip(members, scores, strict=True):
            if node in self.index:
                state.scores[row, self.index[node]] = score
        state.evaluations += evaluated
        return delta

    def after_round(self, state: ContributionState) -> None:
        self._round.clear()

    def round_metrics(self, state: ContributionState) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: ContributionState) -> str | None:
        return None

    def summary(self, state: ContributionState) -> dict[str, Any]:
        """Per site: the total over the run, the rounds scored, and every round's score."""
        scored = ~torch.isnan(state.scores)
        totals = torch.where(scored, state.scores, torch.zeros_like(state.scores)).sum(0)
        per_site: dict[str, dict[str, Any]] = {}
        for s, i in self.index.items():
            column = state.scores[:, i].tolist()
            per_site[s] = {"total": float(totals[i]), "rounds": int(scored[:, i].sum()),
                           "per_round": [None if math.isnan(v) else v for v in column]}
        ranked = sorted(per_site, key=lambda s: per_site[s]["total"], reverse=True)
        return {"method": self.method, "utility": "coordinator test accuracy, points",
                "evaluations": int(state.evaluations), "sites": per_site, "ranking": ranked,
                "no_gain": [s for s in ranked if per_site[s]["rounds"]
                            and per_site[s]["total"] <= 0]}


def contribution_part(cfg: Any, sites: list[str], bench: Any,
                      params: Callable[[], torch.Tensor]) -> ContributionPart:
    """``sites``: every site that can take part (over gRPC: those holding a token)."""
    data = bench.task.data
    f = cfg.fairness
    return ContributionPart(f.contribution, sites, cfg.run.rounds, bench,
                            data.x_test.to(bench.flat.device), data.y_test.to(bench.flat.device),
                            params, permutations=f.shapley_permutations,
                            truncation=f.truncation, seed=cfg.run.seed)
