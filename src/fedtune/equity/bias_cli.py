"""``fedtune audit RUN --bias``: the hidden-bias audit of a stored run, kept in its store and
printed as a table (or one JSON line)."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from ..errors import FedtuneError


def bias_audit(run_id: str, workspace: str, margin: float | None, output: str) -> None:
    from ..store import existing_store
    from .bias_part import audit_stored_run
    from .summary import save_bias_audit

    try:
        store = existing_store(workspace)
        try:
            with Console(stderr=True).status(f"auditing {run_id} for hidden bias"):
                report = audit_stored_run(store.load_run(run_id), margin_pts=margin)
            save_bias_audit(store, report)
        finally:
            store.close()
    except FedtuneError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(2) from None
    if output == "json":
        sys.stdout.write(json.dumps(report) + "\n")
        return
    table = Table(title=f"hidden-bias audit of run {report['run_id']} ({report['rows']} test "
                        f"rows, accuracy {report['accuracy_pts']:.2f} %)")
    for col in ("by", "entries", "worst", "accuracy gap (pts)", "parity diff", "odds diff",
                f"flagged (> {report['margin_pts']:g} pts below the mean)"):
        table.add_column(col)
    for key in ("by_site", "by_class", "by_group"):
        g = report.get(key)
        if g is None:
            continue
        worst = g["entries"][g["worst"]]["accuracy_pts"]

        table.add_row(key.removeprefix("by_"), str(len(g["entries"])),
                      f"{g['worst']} ({worst:.1f} %)", f"{g['accuracy_gap_pts']:.1f}",
                      *(f"{g[k]:.3f}" if g.get(k) is not None else "-" for k in ("demographic_parity_diff",
                                                                   "equalized_odds_diff")),
                      ", ".join(g["flagged"]) or "none")
    Console().print(table)
