"""The hidden-bias audit of real sites: each site counts its test rows by (label, prediction,
group value), and the coordinator audits the counts.

The coordinator of a served run (``fedtune serve``) does not hold the sites' test data, so
with ``fairness.audit = true`` the final evaluation asks each site for a table of counts
(:func:`site_counts`, in the evaluation's ``aux.bias_counts``): one row per distinct
(label, prediction, value of ``fairness.group_feature``) on the site's test split, with how
many rows have it. That is an aggregate of the site's data (its confusion matrix, split by
group), not its rows. Every figure of :mod:`fedtune.equity.bias_audit` (accuracies, parity
and odds differences, the median split of a many-valued feature) depends only on how many
rows each (site, label, prediction, value) has, so the rows rebuilt from the counts
(:func:`audit_counts`) give the report the same run gets where the coordinator holds the data
(a test compares them over gRPC).

A site whose group feature takes more than :data:`MAX_SITE_VALUES` values on its test split
sends NaN for the value (it would otherwise send the feature's histogram at full precision),
and the report is made without the group then, saying so. Counts that cannot be a site's
(labels or predictions outside the task's classes, counts that do not add up to the rows it
reported) leave that site out of the audit, with the reason in the report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .bias_audit import bias_report, group_labels

MAX_SITE_VALUES = 64
COLUMNS = 4  # label, prediction, group value (NaN: none), rows


def site_counts(module: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor,
                group_feature: int) -> torch.Tensor:
    """The site's table of counts for the global ``module`` (float64, rows x 4, sorted)."""
    n = int(x_test.shape[0])
    if n == 0:
        return torch.zeros(0, COLUMNS, dtype=torch.float64)
    module.eval()
    with torch.no_grad():
        pred = module(x_test).argmax(-1).cpu().to(torch.float64)
    values = torch.full((n,), math.nan, dtype=torch.float64)
    if group_feature >= 0:
        x = x_test.reshape(n, -1)
        if group_feature < x.shape[1]:
            column = x[:, group_feature].cpu().to(torch.float64)
            if torch.unique(column).numel() <= MAX_SITE_VALUES:
                values = column
    keys = torch.stack([y_test.cpu().to(torch.float64), pred, values], dim=1)
    # NaN never equals NaN: unique over a stand-in, then NaN put back
    stand_in = torch.nan_to_num(keys, nan=math.inf)
    rows, counts = torch.unique(stand_in, dim=0, return_counts=True)
    rows[torch.isinf(rows)] = math.nan
    return torch.cat([rows, counts.to(torch.float64)[:, None]], dim=1)


def _problem(table: torch.Tensor, examples: int, classes: int) -> str | None:
    if table.dim() != 2 or table.shape[1] != COLUMNS:
        return f"a table of shape {list(table.shape)}, not rows x {COLUMNS}"
    labels, counts = table[:, :2], table[:, 3]
    if not torch.isfinite(labels).all() or (labels != labels.round()).any() \
            or (labels < 0).any() or (labels >= classes).any():
        return f"labels or predictions outside the task's {classes} classes"
    if not torch.isfinite(counts).all() or (counts < 1).any() or (counts != counts.round()).any():
        return "counts that are not whole numbers of rows"
    if int(counts.sum()) != examples:
        return f"{int(counts.sum())} rows counted, {examples} reported"
    return None


def audit_counts(tables: dict[str, tuple[torch.Tensor, int]], *, classes: int,
                 margin_pts: float, group_feature: int) -> dict[str, Any]:
    """The audit of the sites' counts (site -> (table, test rows it reported))."""
    y_true, y_pred, sites, values = [], [], [], []
    notes = []
    for site, (table, examples) in sorted(tables.items()):
        why = _problem(table, examples, classes)
        if why is not None:
            notes.append(f"site {site} left out: {why}")
            continue
        reps = table[:, 3].to(torch.int64).numpy()
        y_true.append(np.repeat(table[:, 0].to(torch.int64).numpy(), reps))
        y_pred.append(np.repeat(table[:, 1].to(torch.int64).numpy(), reps))
        sites.append(np.full(int(reps.sum()), site))
        values.append(np.repeat(table[:, 2].numpy().astype(np.float32), reps))
    if not y_true:
        return {"rows": 0, "flags": [], "note": "; ".join(notes) or "no site has test rows"}
    pooled = np.concatenate(values)
    groups = None
    if group_feature >= 0:
        if np.isnan(pooled).any():
            notes.append(f"fairness.group_feature = {group_feature} has more than "
                         f"{MAX_SITE_VALUES} values (or none) at some site: not audited by group")
        else:
            groups = group_labels(pooled)
    report = bias_report(np.concatenate(y_true), np.concatenate(y_pred), np.concatenate(sites),
                         groups, margin_pts=margin_pts)
    if notes:
        report["note"] = "; ".join(notes)
    return report
