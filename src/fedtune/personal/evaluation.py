"""Evaluating personal models: each site's own model on its own held-out data.

* :func:`eval_instruction`: what a site is asked to evaluate: the global model (with the
  travelling buffers) and its personal model: its kept part (FedPer, FedRep, FedBN), Ditto's
  personal model, or the global model after ``evaluation.personalize_steps`` local steps
  (FedAvg + fine-tuning, Per-FedAvg with its step size ``alpha``, Reptile).
* :func:`personal_summary`: mean, worst site, bottom 10 % of the personal accuracies, and
  per site the gain over the global model and (with the ``local`` baseline) over training
  alone.
* Held-out sites (``personalization.holdout_sites``): a seeded sample of sites that never
  train; after the run each is evaluated after 0, 1, 2, 5 (``adapt_steps``) local steps from
  the final model: how fast a site that joins later adapts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from ..algorithms.fairness import fairness_summary
from ..algorithms.selection import FixedSize
from ..runtime.base import Reply
from ..seeds import derived_seed
from ..types import EvalIns, EvalRes, NodeFailure, NodeRoundRecord, Scalar
from ..wire import sendable
from .node_parts import BUFFERS

log = logging.getLogger("fedtune")

# ``coord`` is the run's fedtune.coordinator.Coordinator (not imported: it imports this module)
Coordinator = Any
OWN_MODEL = ("fedper", "fedrep", "fedbn", "ditto", "apfl")  # trained personal models: no fine-tuning


def held_out(coord: Coordinator) -> frozenset[str]:
    """The sites that never train (a seeded sample, the same in every runtime)."""
    k = coord.cfg.personalization.holdout_sites
    ids = sorted(coord.runtime.node_ids)
    if not k or len(ids) <= k:
        return frozenset()
    seed = derived_seed(coord.cfg.run.seed, "holdout")
    return frozenset(FixedSize(count=k).select(ids, 0, seed))


def training_sites(coord: Coordinator) -> list[str]:
    """The sites a round may select: every site but the held-out ones."""
    out = held_out(coord)
    return [n for n in coord.runtime.node_ids if n not in out]


def eval_config(coord: Coordinator, steps: int | None = None) -> dict[str, Scalar]:
    """The evaluate instruction's config: the method, and its fine-tuning steps and rate."""
    cfg = coord.cfg
    p, ev = cfg.personalization, cfg.evaluation
    own = p.method in OWN_MODEL
    asked = steps
    if steps is None:
        steps = 0 if own and not p.finetune_own else ev.personalize_steps
    lr = ev.personalize_lr or (p.alpha if p.method == "perfedavg" else cfg.local.lr)
    config: dict[str, Scalar] = {"personalize_steps": steps, "lr": lr,
                                 "batch_size": cfg.local.batch_size}
    tuner = next((part for part in coord.round_parts if part.name == "fedex"), None)
    if tuner is not None:  # FedEx: the tuned configuration with the optimizer it was tuned
        best = tuner.best(coord.state.parts["fedex"])  # with (the local plan's), every site
        config.update(personalize_steps=best["steps"] if asked is None else steps,
                      lr=best["lr"], personalize_scope=best["scope"],
                      optimizer=cfg.local.optimizer, momentum=cfg.local.momentum,
                      weight_decay=cfg.local.weight_decay)
    if own:
        config["personal"] = p.method
    if p.prior_correction:
        config["prior_correction"] = True
    if cfg.fairness.audit and coord.runtime.capabilities.nodes_join:  # sites count their rows
        config.update(bias_audit=True, bias_group_feature=cfg.fairness.group_feature)
    return config


def eval_instruction(coord: Coordinator, round_: int, steps: int | None = None) -> EvalIns:
    """The evaluate message: the global model and its travelling buffers (nothing else of
    what fit instructions carry)."""
    aux = {k: v for k, v in coord.parts_aux().items() if k == BUFFERS}
    return sendable(EvalIns(round_, coord.state.params, eval_config(coord, steps), aux))


def personal_summary(evals: dict[str, EvalRes]) -> dict[str, Any]:
    """The personal models' accuracy over sites and each site's gains (in points)."""
    personal = {k: v.metrics.get("accuracy_personalized", math.nan)
                for k, v in sorted(evals.items())}
    shared = {k: v.metrics.get("accuracy", math.nan) for k, v in sorted(evals.items())}
    fs = fairness_summary(list(personal.values()))
    out: dict[str, Any] = {
        "sites": len(personal), "mean_acc": fs.mean, "worst_acc": fs.worst,
        "bottom10_acc": fs.bottom10_mean, "min_test_examples": min(
            (v.num_examples for v in evals.values()), default=0),
        "per_site_acc": personal,
        "gain_over_global_pts": {k: 100 * (personal[k] - shared[k]) for k in personal},
    }
    return out


def collect_evals(replies: Iterable[Reply], round_: int, steps: int,
                  ) -> tuple[dict[str, EvalRes], list[NodeRoundRecord]]:
    """Each site's evaluation and its ledger row; a site that failed is logged and left out."""
    out: dict[str, EvalRes] = {}
    ledger = []
    for reply in replies:
        res = reply.result
        if isinstance(res, EvalRes):
            out[res.node_id] = res
            m = res.meter
            ledger.append(NodeRoundRecord(round_, res.node_id, "evaluate", res.num_examples,
                                          steps, float("nan"), m.wall_s, m.cpu_s,
                                          reply.bytes_down, reply.bytes_up, m.energy_j,
                                          m.co2_g, m.energy_method))
        else:
            reason = res.reason if isinstance(res, NodeFailure) else "answered with the wrong kind"
            log.warning("evaluation: node %s failed: %s", res.node_id, reason)
    return out, ledger


def round_evaluation(coord: Coordinator, round_: int,
                     ) -> tuple[dict[str, Any] | None, list[NodeRoundRecord]]:
    """A round's evaluation exchange with the training sites, when one is due: every
    ``personalization.eval_every`` rounds for the personal models (summarized), and every
    ``fairness.audit_every`` rounds of a served run with the bias audit for the sites' counts
    (handed to the audit); one exchange serves both. Returns the summary (None when the
    personal models were not due) and the exchange's ledger rows. The last round has none:
    the final evaluation follows it."""
    from ..equity.bias_part import BiasAuditPart

    if round_ == coord.cfg.run.rounds:
        return None, []
    every = coord.cfg.personalization.eval_every
    personal = bool(every) and round_ % every == 0
    audit = next((part for part in coord.round_parts if isinstance(part, BiasAuditPart)
                  and part.remote and part.due(round_)), None)
    if not personal and audit is None:
        return None, []
    ins = eval_instruction(coord, round_, None if personal else 0)
    evals, ledger = collect_evals(coord.runtime.evaluate(training_sites(coord), ins), round_,
                                  int(ins.config["personalize_steps"]))
    if audit is not None:
        audit.reported(evals)
    if not personal:
        return None, ledger
    summary = personal_summary(evals)
    summary.pop("gain_over_global_pts")
    summary.pop("per_site_acc")
    return {"round": round_, **summary}, ledger


def adaptation(coord: Coordinator) -> dict[str, Any]:
    """Held-out sites: accuracy after each of ``adapt_steps`` local steps from the final
    model (their personal part, when the method has one, starts from its initial values)."""
    sites = sorted(held_out(coord))
    if not sites:
        return {}
    curve: dict[str, float] = {}
    per_site: dict[str, dict[str, float]] = {}
    for steps in coord.cfg.personalization.adapt_steps:
        ins = eval_instruction(coord, coord.cfg.run.rounds, steps)
        config = ins.config
        personal = steps or "personal" in config or "prior_correction" in config
        values = {r.result.node_id: r.result.metrics.get(
            "accuracy_personalized" if personal else "accuracy", math.nan)
            for r in coord.runtime.evaluate(sites, ins) if isinstance(r.result, EvalRes)}
        curve[str(steps)] = fairness_summary(list(values.values())).mean
        per_site[str(steps)] = dict(sorted(values.items()))
    return {"sites": sites, "mean_acc_after_steps": curve, "per_site_acc_after_steps": per_site}
