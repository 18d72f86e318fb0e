"""The hidden-bias audit: is the global model quietly worse for some sites, classes or groups?

For a model and every site's test split, the audit reports per site, per class and (when
``fairness.group_feature`` names an input feature that holds a group attribute, such as a
sex column of a clinical table) per group:

* accuracy, and its gap below the mean over the entries (points);
* the demographic parity difference: how much the rate of predicting a class differs
  between the entries (the largest over classes, one class against the rest);
* the equalized-odds difference: the larger of the true-positive-rate and false-positive-rate
  differences between the entries (the largest over classes);
* flags for the entries whose accuracy is more than ``fairness.margin_pts`` below the mean.

Grouping by site asks whether the federation serves every member; by class, whether it
learned every label; by group, whether it treats a protected attribute alike. The per-group
rates come from fairlearn's ``MetricFrame``, ``demographic_parity_difference`` and
``equalized_odds_difference`` (binary, so a multi-class task is audited one class against
the rest), comparing entries with at least 5 rows (parity) and, for the odds, at least 5
rows of the class and 5 of the rest; a difference no entries can show is NaN. A feature with
more than 10 distinct values is split at its median into ``low`` and ``high``.

References:
    Hardt, Price & Srebro 2016, "Equality of Opportunity in Supervised Learning" (equalized
    odds). Dwork et al. 2012, "Fairness Through Awareness" (demographic parity). Bird et al.
    2020, "Fairlearn: A toolkit for assessing and improving fairness in AI".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MAX_GROUP_VALUES = 10
MIN_ROWS = 5  # rows of a class and of the rest an entry needs for its rates to count


def _rates(y_true: np.ndarray, y_pred: np.ndarray, by: np.ndarray,
           classes: list[int]) -> tuple[float, float]:
    """The largest demographic-parity and equalized-odds differences over classes (one
    against the rest) between the values of ``by``, NaN where no class can be compared. A
    rate of one or two rows is 0 or 1 by chance, so parity compares the entries with at
    least :data:`MIN_ROWS` rows, and the odds, for a class, the entries with at least that
    many rows of it and of the rest."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    values, counts = np.unique(by, return_counts=True)
    big = np.isin(by, values[counts >= MIN_ROWS])
    dpd = eod = math.nan
    for c in classes:
        t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
        if len(np.unique(by[big])) >= 2:
            d = float(demographic_parity_difference(t[big], p[big], sensitive_features=by[big]))
            dpd = d if math.isnan(dpd) else max(dpd, d)
        both = np.zeros(len(t), dtype=bool)
        for g in values:
            rows = by == g
            if t[rows].sum() >= MIN_ROWS and (1 - t[rows]).sum() >= MIN_ROWS:
                both |= rows
        if len(np.unique(by[both])) >= 2:
            e = float(equalized_odds_difference(t[both], p[both], sensitive_features=by[both]))
            eod = e if math.isnan(eod) else max(eod, e)
    return dpd, eod


def grouped(y_true: np.ndarray, y_pred: np.ndarray, by: np.ndarray, classes: list[int], *,
            margin_pts: float, rates: bool = True) -> dict[str, Any]:
    """Accuracy per value of ``by`` with its gap below the mean, the flags, and (``rates``)
    the parity and odds differences between the values."""
    from fairlearn.metrics import MetricFrame

    frame = MetricFrame(metrics=lambda t, p: float(np.mean(t == p)), y_true=y_true,
                        y_pred=y_pred, sensitive_features=by)
    accuracy = {str(k): 100.0 * float(v) for k, v in frame.by_group.items()}
    counts = {str(k): int(v) for k, v in zip(*np.unique(by, return_counts=True), strict=True)}
    mean = sum(accuracy.values()) / len(accuracy)
    entries = {k: {"accuracy_pts": a, "gap_pts": mean - a, "rows": counts[k]}
               for k, a in sorted(accuracy.items())}
    out: dict[str, Any] = {
        "mean_accuracy_pts": mean, "worst": min(accuracy, key=accuracy.__getitem__),
        "accuracy_gap_pts": max(accuracy.values()) - min(accuracy.values()),
        "flagged": [k for k, e in entries.items() if e["gap_pts"] > margin_pts],
        "entries": entries}
    if rates:  # None (JSON null) where no entries can be compared
        for key, value in zip(("demographic_parity_diff", "equalized_odds_diff"),
                              _rates(y_true, y_pred, by, classes), strict=True):
            out[key] = None if math.isnan(value) else value
    return out


def group_labels(values: np.ndarray) -> np.ndarray:
    """A feature's values as group names: each value when it has at most 10, else ``low``
    and ``high`` around its median."""
    distinct = np.unique(values)
    if len(distinct) <= MAX_GROUP_VALUES:
        return np.array([f"{v:.4g}" for v in values])
    return np.where(values > np.median(values), "high", "low")


def bias_report(y_true: np.ndarray, y_pred: np.ndarray, sites: np.ndarray,
                groups: np.ndarray | None, *, margin_pts: float) -> dict[str, Any]:
    """The audit of predictions on the sites' pooled test rows."""
    classes = sorted(int(c) for c in np.unique(np.concatenate([y_true, y_pred])))
    report: dict[str, Any] = {
        "rows": len(y_true), "accuracy_pts": 100.0 * float(np.mean(y_true == y_pred)),
        "margin_pts": margin_pts,
        "by_site": grouped(y_true, y_pred, sites, classes, margin_pts=margin_pts),
        # a class's accuracy is its recall; parity between classes is not a question
        "by_class": grouped(y_true, y_pred, y_true.astype(str), classes,
                            margin_pts=margin_pts, rates=False)}
    if groups is not None:
        report["by_group"] = grouped(y_true, y_pred, groups, classes, margin_pts=margin_pts)
    report["flags"] = [f"{kind} {name}" for kind, key in
                       (("site", "by_site"), ("class", "by_class"), ("group", "by_group"))
                       if key in report for name in report[key]["flagged"]]
    return report


def audit_model(module: torch.nn.Module, sites: Any, ids: list[str], *, margin_pts: float,
                group_feature: int = -1) -> dict[str, Any]:
    """Predict every listed site's test split with ``module`` and audit the predictions."""
    y_true, y_pred, site, values = [], [], [], []
    module.eval()
    with torch.no_grad():
        for node_id in ids:
            d = sites.require(node_id)
            if d.x_test.shape[0] == 0:
                continue
            y_pred.append(module(d.x_test).argmax(-1).cpu().numpy())
            y_true.append(d.y_test.cpu().numpy())
            site.append(np.full(d.x_test.shape[0], node_id))
            if group_feature >= 0:
                x = d.x_test.reshape(d.x_test.shape[0], -1)
                if group_feature >= x.shape[1]:
                    from ..errors import ConfigError

                    raise ConfigError(f"fairness.group_feature = {group_feature}, but the "
                                      f"inputs have {x.shape[1]} features (0 .. "
                                      f"{x.shape[1] - 1})")
                values.append(x[:, group_feature].cpu().numpy())
    if not y_true:
        return {"rows": 0, "flags": [], "note": "no site has test rows"}
    groups = group_labels(np.concatenate(values)) if values else None
    return bias_report(np.concatenate(y_true), np.concatenate(y_pred), np.concatenate(site),
                       groups, margin_pts=margin_pts)


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The figures of one audit a round keeps: the sites' accuracy gap, their parity and
    odds differences, the classes' gap, and how many entries are flagged."""
    s, c = report.get("by_site", {}), report.get("by_class", {})

    def figure(group: dict[str, Any], key: str) -> float:
        value = group.get(key)
        return math.nan if value is None else float(value)

    return {"site_gap_pts": figure(s, "accuracy_gap_pts"),
            "site_parity_diff": figure(s, "demographic_parity_diff"),
            "site_odds_diff": figure(s, "equalized_odds_diff"),
            "class_gap_pts": figure(c, "accuracy_gap_pts"),
            "flags": float(len(report.get("flags", [])))}
