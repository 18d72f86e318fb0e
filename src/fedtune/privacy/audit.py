"""The empirical privacy audit: how well can an attacker tell a site's training examples
from its held-out ones by looking at the finished global model?

Two membership-inference attacks, each scored by the ROC AUC and the true-positive rate at a
1 % false-positive rate (Carlini et al. 2022, "Membership Inference Attacks From First
Principles": report the low-FPR regime, not only the AUC):

* ``loss``: the loss-threshold attack of Yeom et al. 2018, "Privacy Risk in Machine
  Learning": an example is called a member when the final model's loss on it is low.
* ``calibrated``: a shadow-free likelihood-ratio attack. Each example's loss under the final
  model is compared with its loss under the run's initial model, the reference that saw no
  data (difficulty calibration, Watson et al. 2022, "On the Importance of Difficulty
  Calibration in Membership Inference Attacks"); with Gaussian losses of one shared variance
  the likelihood ratio is monotone in this difference, so it needs no shadow models.

Members are a site's training examples, non-members its own held-out test examples (the same
distribution, never trained on). An AUC near 0.5 and a TPR at 1 % FPR near 0.01 mean the
attack learns nothing. Results go to the run store's ``audits`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from ..algorithms.selection import FixedSize
from ..config import config_from_dict
from ..errors import StoreError
from ..params import FlatModel
from ..seeds import derived_seed
from ..task import LossFn

ATTACKS = ("loss", "calibrated")


@dataclass(frozen=True)
class AttackResult:
    site: str
    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    members: int
    nonmembers: int


def example_losses(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn, batch_size: int = 1024) -> np.ndarray:
    """One loss per example (the task's loss applied to each example alone)."""
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = module(x[i:i + batch_size])
            target = y[i:i + batch_size]
            out.append(torch.stack([loss_fn(logits[j:j + 1], target[j:j + 1])
                                    for j in range(logits.shape[0])]))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def attack_scores(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[float, float]:
    """(AUC, TPR at FPR <= 1 %) of "member" = a high score."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    if len(set(labels)) < 2:
        return float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(roc_auc_score(labels, scores)), float(tpr[fpr <= 0.01].max())


def audit_run(data: dict[str, Any], *, max_sites: int = 100) -> dict[str, Any]:
    """Attack a stored run (``RunStore.load_run``) with both attacks, per site and pooled."""
    from safetensors.torch import load_file

    from ..node.node import Workbench
    from ..tasks import build_task

    if not data["checkpoints"]:
        raise StoreError(f"run {data['run_id']} has no checkpoint of its model to audit; run "
                         "it with run.checkpoint_every > 0")
    cfg = config_from_dict(data["config"])
    task = build_task(cfg)
    device = torch.device("cpu")
    final = FlatModel(task.model_factory(), device)
    saved = load_file(data["checkpoints"][-1]["path"])
    final.load_(torch.cat([saved[name].flatten() for name in final.spec.names]))
    reference = Workbench.create(task, device, cfg.run.seed).flat  # the run's initial model
    ids = task.data.nodes.ids
    if len(ids) > max_sites:
        ids = FixedSize(count=max_sites).select(ids, 0, derived_seed(cfg.run.seed, "audit"))
    rows: list[AttackResult] = []
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {a: ([], []) for a in ATTACKS}
    for node_id in ids:
        site = task.data.nodes.require(node_id)
        lm = example_losses(final.module, site.x_train, site.y_train, task.loss_fn)
        ln = example_losses(final.module, site.x_test, site.y_test, task.loss_fn)
        rm = example_losses(reference.module, site.x_train, site.y_train, task.loss_fn)
        rn = example_losses(reference.module, site.x_test, site.y_test, task.loss_fn)
        for attack, (sm, sn) in {"loss": (-lm, -ln), "calibrated": (rm - lm, rn - ln)}.items():
            auc, tpr = attack_scores(sm, sn)
            rows.append(AttackResult(node_id, attack, auc, tpr, len(sm), len(sn)))
            pooled[attack][0].append(sm)
            pooled[attack][1].append(sn)
    overall = {}
    for attack, (members, nonmembers) in pooled.items():
        auc, tpr = attack_scores(np.concatenate(members), np.concatenate(nonmembers))
        overall[attack] = {"auc": auc, "tpr_at_1pct_fpr": tpr,
                           "members": int(sum(map(len, members))),
                           "nonmembers": int(sum(map(len, nonmembers)))}
    result = data.get("result") or {}
    extra = result.get("extra", {})
    return {"run_id": data["run_id"], "sites": len(ids), "overall": overall,
            "per_site": [r.__dict__ for r in rows],
            "client_dp": extra.get("privacy"), "sample_dp": extra.get("sample_privacy")}

