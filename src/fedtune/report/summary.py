"""Final summary of a run as a plain dict (for JSON) and as a rich table (for people)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from rich.table import Table

from ..equity.summary import equity_lines, equity_summary
from ..types import RunResult


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def result_summary(result: RunResult) -> dict[str, Any]:
    """The headline figures of a run, JSON-safe (NaN becomes null)."""
    summary: dict[str, Any] = _clean({
        "run_id": result.run_id,
        "status": result.status,
        "status_reason": result.extra.get("status_reason", ""),
        "rounds": len(result.rounds),
        "test_accuracy": result.final_test_accuracy,
        "test_loss": result.final_test_loss,
        "node_accuracy_global": asdict(result.fairness_global),
        "node_accuracy_personalized": asdict(result.fairness_personalized),
        "bytes_down": result.total_bytes_down,
        "bytes_up": result.total_bytes_up,
        "energy_j": result.total_energy_j,
        "co2_g": result.total_co2_g,
        "energy_method": result.energy_method,
        "energy_source": result.extra.get("energy_source", result.energy_method),
        "wall_s": result.wall_s,
        "baselines": result.extra.get("baselines", {}),
        "privacy": result.extra.get("privacy"),
        "sample_privacy": result.extra.get("sample_privacy"),
        "stopped": result.extra.get("stopped", ""),
        "plan": result.extra.get("plan"), "energy_split": result.extra.get("energy_split"),
        "personal": result.extra.get("personal"),
        "equity": equity_summary(result.extra),
    })
    return summary


def stored_summary(data: dict[str, Any], audit: dict[str, dict[str, Any]] | None = None,
                   bias: dict[str, Any] | None = None) -> dict[str, Any]:
    """A :func:`result_summary` of a stored run (``RunStore.load_run``), with its latest
    privacy audit and bias audit when there are."""
    result = data["result"]
    extra = result.get("extra", {})
    summary: dict[str, Any] = _clean({
        **{k: result[k] for k in ("run_id", "status", "energy_method", "wall_s")},
        "rounds": len(data["rounds"]), "test_accuracy": result["final_test_accuracy"],
        "node_accuracy_global": result["fairness_global"],
        "node_accuracy_personalized": result["fairness_personalized"],
        "bytes_down": result["total_bytes_down"], "bytes_up": result["total_bytes_up"],
        "energy_j": result["total_energy_j"], "co2_g": result["total_co2_g"],
        "baselines": extra.get("baselines", {}), "privacy": extra.get("privacy"),
        "sample_privacy": extra.get("sample_privacy"), "stopped": extra.get("stopped", ""),
        "plan": extra.get("plan"), "energy_split": extra.get("energy_split"),
        "personal": extra.get("personal"), "audit": audit or {},
        "equity": equity_summary(extra, bias)})
    return summary


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def summary_table(summary: dict[str, Any], title: str = "fedtune run") -> Table:
    """A two-column table of a :func:`result_summary` (or a stored run's result)."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    g, p = summary["node_accuracy_global"], summary["node_accuracy_personalized"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    table.add_row("run", f"{summary['run_id']} ({summary['status']}, {summary['rounds']} rounds)")
    table.add_row("central test accuracy", pct(summary["test_accuracy"]))
    table.add_row("node accuracy, global model",
                  f"mean {pct(g['mean'])}, worst {pct(g['worst'])}, "
                  f"bottom 10 % {pct(g['bottom10_mean'])}")
    personal = summary.get("personal") or {}
    method = personal.get("method", "")
    table.add_row(f"node accuracy, personal model ({method})" if personal
                  else "node accuracy, fine-tuned locally",
                  f"mean {pct(p['mean'])}, worst {pct(p['worst'])}, "
                  f"bottom 10 % {pct(p['bottom10_mean'])}")
    for what, line in personal_lines(personal):
        table.add_row(what, line)
    jain_g = "n/a" if g["jain_index"] is None else f"{g['jain_index']:.4f}"
    jain_p = "n/a" if p["jain_index"] is None else f"{p['jain_index']:.4f}"
    table.add_row("fairness (Jain's index)", f"global {jain_g}, fine-tuned {jain_p}")
    base = summary.get("baselines") or {}
    if "pooled" in base:
        table.add_row("baseline: pooled data", f"central test accuracy "
                      f"{pct(base['pooled']['test_accuracy'])} (federated "
                      f"{pct(summary['test_accuracy'])})")
    if "probe" in base:
        table.add_row("baseline: linear probe", f"central test accuracy "
                      f"{pct(base['probe']['test_accuracy'])} (the initial model's features)")
    if "local" in base:
        table.add_row("baseline: each site alone",
                      f"central test accuracy mean {pct(base['local']['test_accuracy_mean'])}, "
                      f"worst site {pct(base['local']['test_accuracy_worst'])}")
    privacy = summary.get("privacy")
    if privacy:
        table.add_row("privacy", privacy_line(privacy))
    sample = summary.get("sample_privacy")
    if sample:
        table.add_row("privacy, inside sites", sample_privacy_line(sample))
    for attack, row in (summary.get("audit") or {}).items():
        table.add_row(f"membership audit ({attack})",
                      f"AUC {row['auc']:.4f}, TPR at 1 % FPR {row['tpr_at_1pct_fpr']:.4f} "
                      f"({row['members']} members, {row['nonmembers']} held out)")
    for what, line in equity_lines(summary.get("equity")):
        table.add_row(what, line)
    if summary.get("stopped"):
        table.add_row("stopped early", summary["stopped"])
    table.add_row("bytes", f"down {_mb(summary['bytes_down'])}, up {_mb(summary['bytes_up'])}")
    source = summary.get("energy_source", summary["energy_method"])
    split = summary.get("energy_split")
    by_whom = (f"; coordinator {split['coordinator_j']:,.3g} J, sites {split['sites_j']:,.3g} J"
               if split else "")
    table.add_row("energy", f"{summary['energy_j']:,.1f} J ({source}{by_whom})")
    table.add_row("CO2", f"{summary['co2_g']:.4f} g CO2e")
    plan = summary.get("plan") or {}
    if plan.get("energy_j"):
        table.add_row("planned vs measured", plan_line(plan, summary))
    table.add_row("time", f"{summary['wall_s']:.2f} s")
    return table


def plan_line(plan: dict[str, Any], summary: dict[str, Any]) -> str:
    """The planner's estimate for the run beside the meters' figures."""
    measured_bytes = summary["bytes_down"] + summary["bytes_up"]
    return (f"energy {plan['energy_j']:,.1f} J planned, {summary['energy_j']:,.1f} J measured "
            f"(x{summary['energy_j'] / plan['energy_j']:.2g}); bytes {_mb(plan['bytes'])} "
            f"planned, {_mb(measured_bytes)} measured; {plan['flops']:.3g} FLOPs")


def privacy_line(p: dict[str, Any]) -> str:
    """One line on what a run's differential privacy guarantees, and when it does not."""
    line = (f"{p['level']}-level DP ({p['mode']}): ε = {p['epsilon']:.3g} at δ = {p['delta']:g} "
            f"after {p['rounds']} rounds ({p['bound']}; RDP {p['epsilon_rdp']:.3g}), noise "
            f"multiplier {p['noise_multiplier']:g}, clip {p['clip']:.3g}")
    if not p.get("private", True):
        line += " — NOT PRIVATE: the noise was seeded (privacy.secure_rng = false)"
    return line


def sample_privacy_line(p: dict[str, Any]) -> str:
    """One line on the sites' own DP-SGD guarantees."""
    if p.get("epsilon_max") is None:
        return "sample-level DP-SGD: no site reported an epsilon"
    line = (f"sample-level DP-SGD: each site's ε at δ = {p['delta']:g}: max "
            f"{p['epsilon_max']:.3g}, median {p['epsilon_median']:.3g} over "
            f"{len(p['sites'])} sites")
    if not p.get("private", True):
        line += " — NOT PRIVATE: the noise was seeded (privacy.secure_rng = false)"
    return line


def personal_lines(personal: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows on personal models: gains per site, held-out sites' adaptation, tuned choices."""
    rows: list[tuple[str, str]] = []
    for key, what in (("gain_over_global_pts", "the global model"),
                      ("gain_over_local_pts", "training alone")):
        gains = [v for v in (personal.get(key) or {}).values() if v is not None]
        if gains:
            rows.append((f"personal gain over {what}",
                         f"mean {sum(gains) / len(gains):+.2f} pts, worst site "
                         f"{min(gains):+.2f} pts, {sum(g > 0 for g in gains)} of {len(gains)} "
                         "sites better"))
    curve = (personal.get("new_sites") or {}).get("mean_acc_after_steps")
    if curve:
        rows.append(("held-out sites, after k local steps", ", ".join(
            f"k={k}: {100 * v:.2f} %" for k, v in curve.items() if v is not None)))
    tuned = personal.get("tuned")
    if tuned:
        rows.append(("tuned configuration", ", ".join(f"{k}={v}" for k, v in
                                                      tuned["best"].items())
                     + f" (weight {tuned['theta_max']:.2f} of {tuned['configs']} configurations)"))
        by_config: dict[str, list[str]] = {}
        for site, config in (tuned.get("site_best") or {}).items():
            by_config.setdefault("/".join(str(v) for v in config.values()), []).append(site)
        if by_config:
            rows.append(("best configuration per site (lr/steps/scope)", "; ".join(
                f"{k}: {', '.join(v)}" for k, v in sorted(by_config.items()))))
    return rows
