"""The report's personalization panels (runs with ``personalization.method``): each site's
personal model against the global model, the personal models' accuracy over the rounds, and
how fast held-out sites adapt."""

from __future__ import annotations

import itertools
from typing import Any

import plotly.graph_objects as go

from .figures import COLORS, Run, _layout, label


def _personal(run: Run) -> dict[str, Any]:
    extra = (run.get("result") or {}).get("extra") or {}
    return extra.get("personal") or {}


def personal_sites(runs: list[Run]) -> go.Figure | None:
    """Per site: the global model's accuracy and the personal model's (final evaluation)."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        personal = _personal(run)
        if "per_site_acc" not in personal:
            continue
        evals = {e["node_id"]: e for e in run.get("node_evals") or []}
        sites = sorted(personal["per_site_acc"], key=lambda s: personal["per_site_acc"][s])
        fig.add_bar(x=sites, y=[(evals.get(s) or {}).get("accuracy_global") for s in sites],
                    name=f"global model: {label(run)}", marker_color=color, opacity=0.45)
        fig.add_bar(x=sites, y=[personal["per_site_acc"][s] for s in sites],
                    name=f"personal ({personal.get('method')}): {label(run)}",
                    marker_color=color)
    if not fig.data:
        return None
    fig.update_layout(barmode="group")
    return _layout(fig, "Each site's personal model against the global model",
                   "site (worst personal model first)", "accuracy on the site's own test set")


def personal_rounds(runs: list[Run]) -> go.Figure | None:
    """Mean and bottom-10 % personal accuracy at each ``personalization.eval_every`` round."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        rows = [r for r in _personal(run).get("rounds") or [] if r.get("mean_acc") is not None]
        if not rows:
            continue
        x = [r["round"] for r in rows]
        fig.add_scatter(x=x, y=[r["mean_acc"] for r in rows], mode="lines+markers",
                        name=f"mean: {label(run)}", line={"color": color})
        fig.add_scatter(x=x, y=[r["bottom10_acc"] for r in rows], mode="lines+markers",
                        name=f"bottom 10 %: {label(run)}", line={"color": color, "dash": "dot"})
    return _layout(fig, "Personal models' accuracy during training", "round",
                   "accuracy on the sites' own test sets") if fig.data else None


def new_sites(runs: list[Run]) -> go.Figure | None:
    """Held-out sites' accuracy after k local steps from the final model."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        curve = (_personal(run).get("new_sites") or {}).get("mean_acc_after_steps")
        if not curve:
            continue
        fig.add_scatter(x=[int(k) for k in curve], y=list(curve.values()),
                        mode="lines+markers", name=label(run), line={"color": color})
        trained = _personal(run).get("mean_acc")
        if trained is not None:
            fig.add_hline(y=trained, line_dash="dot", line_color=color,
                          annotation_text="trained sites")
    return _layout(fig, "Sites that joined after training: accuracy after k local steps",
                   "local steps", "mean accuracy") if fig.data else None


FIGURES = {"personal_sites": personal_sites, "personal_rounds": personal_rounds,
           "new_sites": new_sites}
MISSING = {"personal_sites": "no run personalized its sites' models",
           "personal_rounds": "no run evaluated personal models during training "
                              "(personalization.eval_every)",
           "new_sites": "no run held sites out (personalization.holdout_sites)"}
