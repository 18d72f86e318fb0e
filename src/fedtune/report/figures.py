"""The report's plots, one function per figure, from stored runs (``RunStore.load_run``).

Plotly draws them (``plotly.graph_objects``): it is maintained, interactive (hover, zoom, a
legend that hides a run) without a server, and ships its JavaScript in the wheel, so a report
embeds it and opens with no network. Each function returns None when no run has the figure's
data (a run without DP has no epsilon), and the report says what it left out.
"""

from __future__ import annotations

import itertools
from typing import Any

import plotly.graph_objects as go

SERVER = "coordinator"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]
Run = dict[str, Any]


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      height=380, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def label(run: Run) -> str:
    return f"{run['run_id']} ({run['name']})"


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in run["rounds"] if r.get(key) is not None]
    return [r["round"] for r in rows], [r[key] for r in rows]


def _per_round(runs: list[Run], key: str, title: str, y: str) -> go.Figure | None:
    """One line per run of a round record's ``key``; None when no run has it."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        xs, ys = _series(run, key)
        if xs:
            fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=label(run),
                            line={"color": color})
    return _layout(fig, title, "round", y) if fig.data else None


def accuracy(runs: list[Run]) -> go.Figure | None:
    return _per_round(runs, "test_accuracy", "Central test accuracy per round", "accuracy")


def loss(runs: list[Run]) -> go.Figure | None:
    """Central test loss, and the sites' train loss: their weighted mean and the worst site.
    (Sites report a train loss each round; their accuracy is measured once, at the end.)"""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        for key, dash, what in (("test_loss", "solid", "test"),
                                ("train_loss", "dot", "train, sites' mean")):
            x, y = _series(run, key)
            if x:
                fig.add_scatter(x=x, y=y, mode="lines", name=f"{what}: {label(run)}",
                                line={"color": color, "dash": dash})
        worst: dict[int, float] = {}
        for m in run.get("node_metrics") or []:
            if m["phase"] == "fit" and m.get("train_loss") is not None:
                worst[m["round"]] = max(worst.get(m["round"], m["train_loss"]), m["train_loss"])
        if worst:
            fig.add_scatter(x=sorted(worst), y=[worst[r] for r in sorted(worst)], mode="lines",
                            name=f"train, worst site: {label(run)}",
                            line={"color": color, "dash": "dashdot"})
    return _layout(fig, "Loss per round (central test; the sites' train loss)",
                   "round", "loss") if fig.data else None


def site_accuracy(runs: list[Run]) -> go.Figure | None:
    """Each site's final accuracy: the global model, and after local fine-tuning."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        evals = run.get("node_evals") or []
        for key, what in (("accuracy_global", "global model"),
                          ("accuracy_personalized", "fine-tuned at the site")):
            values = [e[key] for e in evals if e.get(key) is not None]
            if values:
                fig.add_box(y=values, name=f"{what}: {run['run_id']}", marker_color=color,
                            boxpoints="all", jitter=0.4,
                            text=[e["node_id"] for e in evals if e.get(key) is not None])
    return _layout(fig, "Accuracy of each site (final evaluation)", "", "accuracy") \
        if fig.data else None


def bytes_per_round(runs: list[Run]) -> go.Figure | None:
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        rounds = run["rounds"]
        if not rounds:
            continue
        x = [r["round"] for r in rounds]
        fig.add_bar(x=x, y=[r["bytes_up"] / 1e6 for r in rounds], name=f"up: {label(run)}",
                    marker_color=color, opacity=0.8)
        fig.add_bar(x=x, y=[r["bytes_down"] / 1e6 for r in rounds],
                    name=f"down: {label(run)}", marker_color=color, opacity=0.4)
        total = list(itertools.accumulate((r["bytes_up"] + r["bytes_down"]) / 1e6
                                          for r in rounds))
        fig.add_scatter(x=x, y=total, name=f"cumulative: {label(run)}", yaxis="y2",
                        line={"color": color})
    if not fig.data:
        return None
    fig.update_layout(barmode="group", yaxis2={"overlaying": "y", "side": "right",
                                               "title": "cumulative MB"})
    return _layout(fig, "Bytes per round (bars) and in all (lines)", "round", "MB")


def energy_per_round(runs: list[Run]) -> go.Figure | None:
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        rounds = [r for r in run["rounds"] if r.get("energy_j") is not None]
        if not rounds:
            continue
        x = [r["round"] for r in rounds]
        own = [r.get("coordinator_energy_j") or 0.0 for r in rounds]
        fig.add_scatter(x=x, y=[r["energy_j"] - c for r, c in zip(rounds, own, strict=True)],
                        name=f"sites, J: {label(run)}", line={"color": color})
        fig.add_scatter(x=x, y=own, name=f"coordinator, J: {label(run)}",
                        line={"color": color, "dash": "dot"})
        fig.add_scatter(x=x, y=[r["co2_g"] for r in rounds], name=f"CO2 g: {label(run)}",
                        yaxis="y2", line={"color": color, "dash": "dash"})
    if not fig.data:
        return None
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "g CO2e"})
    return _layout(fig, "Energy and CO2 per round", "round", "joules")


def energy_per_site(runs: list[Run]) -> go.Figure | None:
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        joules: dict[str, float] = {}
        grams: dict[str, float] = {}
        for m in run.get("node_metrics") or []:
            if m["node_id"] != SERVER and m.get("energy_j") is not None:
                joules[m["node_id"]] = joules.get(m["node_id"], 0.0) + m["energy_j"]
                grams[m["node_id"]] = grams.get(m["node_id"], 0.0) + (m.get("co2_g") or 0.0)
        if joules:
            sites = sorted(joules)
            fig.add_bar(x=sites, y=[joules[s] for s in sites], name=f"J: {label(run)}",
                        marker_color=color, customdata=[grams[s] for s in sites],
                        hovertemplate="%{x}: %{y:.3g} J, %{customdata:.3g} g CO2e")
    return _layout(fig, "Energy of each site over the run (hover: CO2)", "site", "joules") \
        if fig.data else None


def epsilon(runs: list[Run]) -> go.Figure | None:
    return _per_round(runs, "epsilon", "Privacy spent: client-level epsilon after each round",
                      "epsilon")


def durations(runs: list[Run]) -> go.Figure | None:
    return _per_round(runs, "wall_s", "Duration of each round", "seconds")


def participation(runs: list[Run]) -> go.Figure | None:
    """Carbon-aware runs: each site's share of the rounds, against the floor it was promised."""
    fig = go.Figure()
    for run, color in zip(runs, itertools.cycle(COLORS)):
        extra = (run.get("result") or {}).get("extra") or {}
        share = (extra.get("participation") or {}).get("sites")
        if share:
            fig.add_bar(x=list(share), y=list(share.values()), name=label(run),
                        marker_color=color)
            fig.add_hline(y=extra["participation"]["floor"], line_dash="dot", line_color=color,
                          annotation_text="floor")
    return _layout(fig, "Carbon-aware selection: each site's share of the rounds", "site",
                   "share of rounds") if fig.data else None


FIGURES = {"accuracy": accuracy, "loss": loss, "site_accuracy": site_accuracy,
           "bytes": bytes_per_round, "energy": energy_per_round,
           "energy_per_site": energy_per_site, "epsilon": epsilon,
           "participation": participation, "durations": durations}
MISSING = {"accuracy": "no round was evaluated on a central test set",
           "site_accuracy": "no site was evaluated at the end",
           "epsilon": "no run used differential privacy",
           "participation": "no run used carbon-aware selection",
           "energy_per_site": "no site energy was recorded"}
