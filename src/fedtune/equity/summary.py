"""What a run's summary says about equity (fair aggregation, contribution scores, the bias
audit), and the bias audits kept in the run store's ``bias_audits`` table. No torch: ``fedtune
show`` reads these."""

from __future__ import annotations

import json
import time
from typing import Any

BIAS_TABLE = """CREATE TABLE IF NOT EXISTS bias_audits (
  run_id TEXT NOT NULL, created REAL NOT NULL, report_json TEXT NOT NULL)"""


def bias_headline(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures of a bias audit a summary shows: accuracy, the sites' and classes' gaps,
    the sites' (and groups') parity and odds differences, the flags."""
    if not report or "by_site" not in report:
        return None
    out: dict[str, Any] = {"accuracy_pts": report["accuracy_pts"],
                           "margin_pts": report["margin_pts"], "flags": report["flags"]}
    for key in ("by_site", "by_class", "by_group"):
        if key in report:
            g = report[key]
            out[key.removeprefix("by_")] = {k: g[k] for k in (
                "worst", "accuracy_gap_pts", "demographic_parity_diff",
                "equalized_odds_diff") if k in g}
    return out


def equity_summary(extra: dict[str, Any], bias: dict[str, Any] | None = None
                   ) -> dict[str, Any] | None:
    """The equity part of a run's summary (``extra``: the result's extra; ``bias``: a stored
    audit newer than the run's own), or None when the run had none of it."""
    out: dict[str, Any] = {}
    if extra.get("fairness"):
        out["fair_aggregation"] = extra["fairness"]
    c = extra.get("contribution")
    if c:
        out["contribution"] = {"method": c["method"], "utility": c["utility"],
                               "ranking": c["ranking"], "no_gain": c["no_gain"],
                               "total": {s: v["total"] for s, v in c["sites"].items()}}
    headline = bias_headline(bias or extra.get("bias"))
    if headline:
        out["bias"] = headline
    return out or None


def equity_lines(equity: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows of the summary table on fair aggregation, contributions and the bias audit."""
    if not equity:
        return []
    rows: list[tuple[str, str]] = []
    fair = equity.get("fair_aggregation")
    if fair:
        knobs = f"q = {fair['q']:g}" if fair["method"] == "qffl" else \
            f"most weight on {fair['lambda_max_site']}"
        rows.append(("fair aggregation", f"{fair['method']} ({knobs})"))
    c = equity.get("contribution")
    if c:
        top = ", ".join(f"{s} {c['total'][s]:+.2f}" for s in c["ranking"][:3])
        rows.append((f"contribution ({c['method']}, accuracy points)",
                     f"top: {top}" + (f"; no gain: {', '.join(c['no_gain'])}"
                                      if c["no_gain"] else "")))
    b = equity.get("bias")
    if b:
        site = b.get("site", {})

        def rate(key: str) -> str:
            return "n/a" if site.get(key) is None else f"{site[key]:.3f}"

        rows.append(("bias audit", f"site accuracy gap {site.get('accuracy_gap_pts', 0):.1f} "
                     f"pts, parity diff {rate('demographic_parity_diff')}, odds "
                     f"diff {rate('equalized_odds_diff')}; flagged (> "
                     f"{b['margin_pts']:g} pts below the mean): "
                     f"{', '.join(b['flags']) or 'none'}"))
    return rows


def save_bias_audit(store: Any, report: dict[str, Any]) -> None:
    """Keep a bias audit (``fedtune audit RUN --bias``); a newer one is added, not replaced."""
    with store.db:
        store.db.execute(BIAS_TABLE)
        store.db.execute("INSERT INTO bias_audits VALUES (?, ?, ?)",
                         (report["run_id"], time.time(), json.dumps(report)))


def latest_bias_audit(store: Any, run_id: str) -> dict[str, Any] | None:
    """The newest bias audit kept for a run, or None."""
    with store.db:
        store.db.execute(BIAS_TABLE)
    row = store.db.execute("SELECT report_json FROM bias_audits WHERE run_id=? "
                           "ORDER BY created DESC LIMIT 1", (run_id,)).fetchone()
    return json.loads(row[0]) if row else None
