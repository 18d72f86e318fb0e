"""The report's robustness and equity panels: each site's contribution beside what it cost
(local steps, upload time on its declared link), the hidden-bias audit over the rounds, each
site's reputation and the rounds its updates were left out, and AFL's mixture weights."""

from __future__ import annotations

import itertools
from typing import Any

import plotly.graph_objects as go

from .figures import COLORS, Run, _layout, label


def _extra(run: Run, key: str) -> dict[str, Any]:
    extra = (run.get("result") or {}).get("extra") or {}
    value = extra.get(key)
    return value if isinstance(value, dict) else {}


def _costs(run: Run) -> tuple[dict[str, int], dict[str, float]]:
    """Per site: local steps over the run, and upload seconds on its declared link (bytes
    up x 8 / Mbps) or, for sites without one, megabytes up."""
    steps: dict[str, int] = {}
    up: dict[str, float] = {}
    for row in run.get("node_metrics") or []:
        if row.get("phase") == "fit":
            steps[row["node_id"]] = steps.get(row["node_id"], 0) + int(row.get("steps") or 0)
            up[row["node_id"]] = up.get(row["node_id"], 0.0) + float(row.get("bytes_up") or 0)
    links = {s: v.get("link_mbps") for s, v in _extra(run, "resources").get("sites", {}).items()}
    return steps, {s: (b * 8 / (links[s] * 1e6) if links.get(s) else b / 1e6)
                   for s, b in up.items()}


def contribution_cost(runs: list[Run]) -> go.Figure | None:
    """Per site: its contribution over the run (bars) beside its local steps (markers)."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        c = _extra(run, "contribution")
        if not c.get("sites"):
            continue
        sites = list(c["ranking"])
        steps, upload = _costs(run)
        fig.add_bar(x=sites, y=[c["sites"][s]["total"] for s in sites], marker_color=color,
                    name=f"contribution ({c['method']}): {label(run)}",
                    customdata=[upload.get(s, 0.0) for s in sites],
                    hovertemplate="%{x}: %{y:.2f} pts; upload %{customdata:.3g} s or MB")
        fig.add_scatter(x=sites, y=[steps.get(s, 0) for s in sites], yaxis="y2",
                        mode="markers", marker={"color": color, "symbol": "diamond",
                                                "size": 10},
                        name=f"local steps over the run: {label(run)}")
    if not fig.data:
        return None
    fig.update_layout(yaxis2={"title": "local steps", "overlaying": "y", "side": "right"},
                      barmode="group")
    return _layout(fig, "Each site's contribution beside its cost",
                   "site (largest contribution first)", "accuracy points over the run")


def bias_rounds(runs: list[Run]) -> go.Figure | None:
    """The bias audit after each audited round: the sites' and the classes' accuracy gaps."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        every = _extra(run, "bias").get("per_round") or []
        # rows carry their round (older runs: one row per round); unaudited rounds are null
        rows = [{"round": i + 1, **r} for i, r in enumerate(every)
                if r.get("site_gap_pts") is not None or r.get("class_gap_pts") is not None]
        if not rows:
            continue
        x = [r["round"] for r in rows]
        fig.add_scatter(x=x, y=[r.get("site_gap_pts") for r in rows], mode="lines+markers",
                        name=f"sites' gap: {label(run)}", line={"color": color})
        fig.add_scatter(x=x, y=[r.get("class_gap_pts") for r in rows], mode="lines+markers",
                        name=f"classes' gap: {label(run)}",
                        line={"color": color, "dash": "dot"})
    return _layout(fig, "Hidden-bias audit: best minus worst accuracy after each audited round",
                   "round", "accuracy gap (points)") if fig.data else None


def reputation(runs: list[Run]) -> go.Figure | None:
    """Screening: each site's reputation at the end and the rounds it was left out."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        s = _extra(run, "screening")
        if not s.get("reputation"):
            continue
        sites = sorted(s["reputation"], key=s["reputation"].__getitem__)
        left = s.get("left_out_rounds") or {}
        fig.add_bar(x=sites, y=[s["reputation"][k] for k in sites], marker_color=color,
                    name=f"reputation: {label(run)}",
                    customdata=[left.get(k, 0) for k in sites],
                    hovertemplate="%{x}: reputation %{y:.2f}, left out %{customdata} rounds")
    return _layout(fig, "Screening: each site's reputation (least trusted first)", "site",
                   "beta reputation") if fig.data else None


def mixture(runs: list[Run]) -> go.Figure | None:
    """Agnostic FL: the final weight of each site in the mixture."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        lam = _extra(run, "fairness").get("lambda")
        if not lam:
            continue
        sites = sorted(lam, key=lam.__getitem__, reverse=True)
        fig.add_bar(x=sites, y=[lam[s] for s in sites], marker_color=color, name=label(run))
    return _layout(fig, "Agnostic FL: each site's weight in the worst-case mixture", "site",
                   "lambda") if fig.data else None


FIGURES = {"contribution_cost": contribution_cost, "bias_rounds": bias_rounds,
           "reputation": reputation, "mixture": mixture}
MISSING = {"contribution_cost": "no run scored contributions (fairness.contribution)",
           "bias_rounds": "no run audited bias every round (fairness.audit)",
           "reputation": "no run screened updates (screening.enabled)",
           "mixture": "no run used agnostic FL (strategy.name = \"afl\")"}
