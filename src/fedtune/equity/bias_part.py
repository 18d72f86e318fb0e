"""The hidden-bias audit (:mod:`fedtune.equity.bias_audit`) every ``fairness.audit_every``
rounds (``fairness.audit = true``), as a round part, and on a stored run (``fedtune audit RUN
--bias``).

After an audited round's step the part audits the new global model on every site's test
split and keeps the round's headline figures (the sites' accuracy gap, parity and odds
differences, the classes' gap, the flags) in its state, so a resumed run keeps the trend; the
run's summary holds the full audit of the final model. The sites' test data is read where the
coordinator holds it (simulation and Ray: the same data the final per-site evaluation uses).
Over gRPC the coordinator holds no site's data: an audited round asks every training site,
in one evaluation exchange (:func:`fedtune.personal.evaluation.round_evaluation`), for its
counts of (label, prediction, group value) (:mod:`fedtune.equity.bias_counts`), and the
final evaluation does the same for the summary. The same rounds are audited in every
runtime, with the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..algorithms.strategy import Strategy
from .bias_audit import audit_model, headline

HEADLINE = ("site_gap_pts", "site_parity_diff", "site_odds_diff", "class_gap_pts", "flags")


@dataclass
class BiasState:
    """Each round's headline figures (rounds x :data:`HEADLINE`, NaN: not audited) and how
    many rounds have closed."""

    history: torch.Tensor
    audited: int = 0  # rounds closed (the rows of ``history`` written so far)


@dataclass
class BiasAuditPart:
    """Audits the global model every ``every`` rounds (0: the final model only)."""

    sites: list[str]
    rounds: int
    bench: Any
    params: Callable[[], torch.Tensor]
    margin_pts: float
    group_feature: int = -1
    remote: bool = False  # sites over gRPC: audited from their counts (:meth:`reported`)
    classes: int = 0
    every: int = 1
    name: str = "bias"

    def __post_init__(self) -> None:
        self.counts: dict[str, tuple[torch.Tensor, int]] = {}
        self.fresh = False  # counts of the current model, not audited yet

    def due(self, round_: int) -> bool:
        """Whether round ``round_``'s model is audited."""
        return bool(self.every) and round_ % self.every == 0

    def reported(self, evals: dict[str, Any]) -> None:
        """An evaluation's replies (site -> EvalRes): their counts of the current model."""
        self.counts = {k: (v.aux["bias_counts"], v.num_examples) for k, v in evals.items()
                       if "bias_counts" in v.aux}
        self.fresh = True

    def adapt(self, strategy: Strategy) -> Strategy:
        return strategy

    def init(self) -> BiasState:
        return BiasState(torch.full((self.rounds, len(HEADLINE)), math.nan,
                                    dtype=torch.float64))

    def node_config(self, state: BiasState) -> dict[str, int]:
        return {}

    def instruction_aux(self, state: BiasState) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: BiasState,
              node_id: str) -> float:
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: BiasState,
                node_id: str) -> Any:
        return update

    def release(self, delta: torch.Tensor, state: BiasState, round_: int) -> torch.Tensor:
        return delta

    def audit(self) -> dict[str, Any]:
        """The audit of the current global model."""
        if self.remote:
            from .bias_counts import audit_counts

            report = audit_counts(self.counts, classes=self.classes, margin_pts=self.margin_pts,
                                  group_feature=self.group_feature)
            report["sites_reporting"] = len(self.counts)
            return report
        flat = self.bench.flat
        flat.load_(self.params(), with_grad=False)
        return audit_model(flat.module, self.bench.task.data.nodes, self.sites,
                           margin_pts=self.margin_pts, group_feature=self.group_feature)

    def _keep(self, state: BiasState, round_: int) -> None:
        figures = headline(self.audit())
        if 0 < round_ <= self.rounds:
            state.history[round_ - 1] = torch.tensor([figures[k] for k in HEADLINE],
                                                     dtype=torch.float64)

    def after_round(self, state: BiasState) -> None:
        state.audited += 1
        if not self.due(state.audited) or (self.remote and not self.fresh):
            return  # not due, or a served run's last round (the final evaluation's counts)
        self._keep(state, state.audited)
        self.fresh = False

    def round_metrics(self, state: BiasState) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: BiasState) -> str | None:
        return None

    def summary(self, state: BiasState) -> dict[str, Any]:
        last = state.audited
        if self.remote and self.fresh and self.due(last):  # not audited by after_round:
            self._keep(state, last)  # the final evaluation's counts are the last round's
        report = self.audit()
        report["audit_every"] = self.every
        report["per_round"] = [
            {"round": i + 1, **{k: (None if math.isnan(v) else v)
                                for k, v in zip(HEADLINE, row, strict=True)}}
            for i, row in enumerate(state.history[:last].tolist())]
        return report


def bias_part(cfg: Any, runtime: Any, bench: Any,
              params: Callable[[], torch.Tensor]) -> BiasAuditPart:
    from ..errors import ConfigError
    from ..personal.label_prior import head_bias

    f = cfg.fairness
    features = math.prod(bench.task.data.input_shape)
    if f.group_feature >= features:
        raise ConfigError(f"fairness.group_feature = {f.group_feature}, but the inputs have "
                          f"{features} features (0 .. {features - 1})")
    remote = runtime.capabilities.nodes_join
    return BiasAuditPart([] if remote else sorted(runtime.node_ids), cfg.run.rounds, bench,
                         params, f.margin_pts, f.group_feature, remote=remote,
                         classes=head_bias(bench.flat.module).numel(), every=f.audit_every)


def audit_stored_run(data: dict[str, Any], *, margin_pts: float | None = None,
                     group_feature: int | None = None) -> dict[str, Any]:
    """The bias audit of a stored run's last checkpoint (``RunStore.load_run``), on the test
    splits of the sites its config makes."""
    from safetensors.torch import load_file

    from ..config import config_from_dict
    from ..errors import StoreError
    from ..params import FlatModel
    from ..tasks import build_task

    result = data.get("result") or {}
    if ((result.get("extra") or {}).get("provenance") or {}).get("runtime") == "grpc":
        raise StoreError(f"run {data['run_id']} was served to real sites, whose test data the "
                         "coordinator does not hold; run it with fairness.audit = true and "
                         "its sites count their own rows (fedtune show prints that audit)")
    if not data["checkpoints"]:
        raise StoreError(f"run {data['run_id']} has no checkpoint of its model to audit; run "
                         "it with run.checkpoint_every > 0")
    cfg = config_from_dict(data["config"])
    f = cfg.fairness
    task = build_task(cfg)
    model = FlatModel(task.model_factory(), torch.device("cpu"))
    saved = load_file(data["checkpoints"][-1]["path"])
    model.load_(torch.cat([saved[name].flatten() for name in model.spec.names]))
    report = audit_model(model.module, task.data.nodes, list(task.data.nodes.ids),
                         margin_pts=f.margin_pts if margin_pts is None else margin_pts,
                         group_feature=f.group_feature if group_feature is None
                         else group_feature)
    report["run_id"] = data["run_id"]
    report["checkpoint_round"] = data["checkpoints"][-1].get("round")
    return report
