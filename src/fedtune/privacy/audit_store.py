"""Audits in the run store: the ``audits`` table, written by ``fedtune audit`` and read by
``fedtune show`` (no torch needed to read them)."""

from __future__ import annotations

from typing import Any

AUDIT_TABLE = """CREATE TABLE IF NOT EXISTS audits (
  run_id TEXT NOT NULL, created REAL NOT NULL, site TEXT NOT NULL, attack TEXT NOT NULL,
  auc REAL, tpr_at_1pct_fpr REAL, members INTEGER, nonmembers INTEGER)"""


def save_audit(store: Any, report: dict[str, Any]) -> None:
    """Keep an audit in the run store's ``audits`` table (one row per site and attack, and
    the pooled ``*`` rows); an audit run again adds rows with a newer time."""
    import time

    now = time.time()
    rows = [(report["run_id"], now, r["site"], r["attack"], r["auc"], r["tpr_at_1pct_fpr"],
             r["members"], r["nonmembers"]) for r in report["per_site"]]
    rows += [(report["run_id"], now, "*", attack, o["auc"], o["tpr_at_1pct_fpr"],
              o["members"], o["nonmembers"]) for attack, o in report["overall"].items()]
    with store.db:
        store.db.execute(AUDIT_TABLE)
        store.db.executemany("INSERT INTO audits VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def stored_audits(store: Any, run_id: str) -> list[dict[str, Any]]:
    """The audit rows kept for a run, newest audit first."""
    with store.db:
        store.db.execute(AUDIT_TABLE)
    return [dict(r) for r in store.db.execute(
        "SELECT * FROM audits WHERE run_id=? ORDER BY created DESC, site, attack", (run_id,))]


def latest_overall(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pooled rows (site ``*``) of the newest audit, by attack."""
    if not rows:
        return {}
    newest = rows[0]["created"]
    return {r["attack"]: r for r in rows if r["created"] == newest and r["site"] == "*"}
