"""``fedtune report``: one self-contained HTML file of one or more stored runs: the plots of
:mod:`.figures`, a summary table per run, the planner's estimate beside the measurement, the
resolved config and the provenance. Plotly's JavaScript is inlined once, so the file opens
with no network."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..equity.summary import equity_lines, equity_summary
from ..errors import StoreError
from .equity_figures import FIGURES as EQUITY_FIGURES
from .equity_figures import MISSING as EQUITY_MISSING
from .figures import FIGURES, MISSING, Run
from .personal_figures import FIGURES as PERSONAL_FIGURES
from .personal_figures import MISSING as PERSONAL_MISSING

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
.note { color: #666; font-size: 0.9em; } pre { background: #f6f6f6; padding: 0.6em;
       overflow-x: auto; font-size: 0.8em; } .plot { min-height: 380px; }
"""


def checked_run(run: Run) -> Run:
    """``run`` if it can be reported; a clear error when it cannot."""
    result = run.get("result")
    if not run.get("rounds") and not result:
        raise StoreError(f"run {run['run_id']} ({run['status']}) has no stored round and no "
                         "result: nothing to report; 'fedtune runs' lists the others")
    if result is not None and not isinstance(result, dict):
        raise StoreError(f"run {run['run_id']}: its stored result is not a JSON object "
                         "(the store was edited or damaged)")
    for r in run.get("rounds") or []:
        if not isinstance(r.get("round"), int):
            raise StoreError(f"run {run['run_id']}: a stored round has no round number "
                             "(the store was edited or damaged)")
    return run


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(x: Any, pattern: str = "{:.4g}") -> str:
    return "n/a" if x is None else pattern.format(x)


def _summary(run: Run) -> str:
    result = run.get("result") or {}
    extra = result.get("extra") or {}
    rows: list[tuple[str, Any]] = [("status", run["status"]), ("rounds", len(run["rounds"]))]
    if "final_test_accuracy" in result:
        rows.append(("final central test accuracy", _fmt(result["final_test_accuracy"])))
    for key, what in (("fairness_global", "site accuracy, global model"),
                      ("fairness_personalized", "site accuracy, fine-tuned")):
        f = result.get(key) or {}
        if f.get("mean") is not None:
            rows.append((what, f"mean {_fmt(f['mean'])}, worst {_fmt(f['worst'])}, "
                               f"Jain {_fmt(f.get('jain_index'))}"))
    personal = extra.get("personal") or {}
    if personal.get("mean_acc") is not None:
        tuned = (personal.get("tuned") or {}).get("best")
        rows.append((f"personal models ({personal['method']})",
                     f"mean {_fmt(personal['mean_acc'])}, worst {_fmt(personal['worst_acc'])}, "
                     f"bottom 10 % {_fmt(personal['bottom10_acc'])}"
                     + (f"; tuned: {tuned}" if tuned else "")))
    if "total_bytes_up" in result:
        rows.append(("bytes", f"up {result['total_bytes_up'] / 1e6:,.2f} MB, down "
                              f"{result['total_bytes_down'] / 1e6:,.2f} MB"))
        rows.append(("energy, CO2", f"{result['total_energy_j']:,.2f} J, "
                                    f"{result['total_co2_g']:.4g} g CO2e"))
    split = extra.get("energy_split")
    if split:
        rows.append(("energy by whom", f"coordinator {split['coordinator_j']:,.3g} J, sites "
                                       f"{split['sites_j']:,.3g} J"))
    privacy = extra.get("privacy")
    if privacy:
        rows.append(("privacy", f"epsilon {_fmt(privacy.get('epsilon'))} at delta "
                                f"{privacy.get('delta')} ({privacy.get('level')}-level)"))
    attack = extra.get("attack")
    if attack:
        asr = attack.get("backdoor_asr")
        rows.append(("simulated attack", f"{attack['kind']} by {', '.join(attack['sites'])}"
                     + (f"; backdoor success {asr:.3f}" if asr is not None else "")))
    rows += equity_lines(equity_summary(extra))
    plan = extra.get("plan") or {}
    if plan.get("energy_j"):
        rows.append(("planned vs measured",
                     f"energy {plan['energy_j']:,.3g} J planned, x"
                     f"{plan.get('energy_measured_over_planned', float('nan')):.2g} measured; "
                     f"bytes x{plan.get('bytes_measured_over_planned', float('nan')):.3g}"))
    clock = extra.get("clock")
    if clock:
        rows.append(("carbon clock", f"{clock['rounds_deferred']} rounds waited "
                                     f"{clock['deferred_hours']:g} h for cleaner power"))
    if extra.get("status_reason"):
        rows.append(("why", extra["status_reason"]))
    return _table(rows)


def _provenance(run: Run) -> str:
    prov = ((run.get("result") or {}).get("extra") or {}).get("provenance") or {}
    cfg = run.get("config") or {}
    rows = [("run", run["run_id"]), ("name", run["name"]), ("host", run.get("host") or "n/a"),
            ("seed", prov.get("seed", (cfg.get("run") or {}).get("seed", "n/a")))]
    rows += [(k, v) for k, v in prov.items() if k not in ("seed", "host")]
    return _table(rows)


def _safe(js: str) -> str:
    """JSON inside a <script> element: no "</" may close it early."""
    return js.replace("</", "<\\/")


def render(runs: list[Run]) -> str:
    """The report's HTML."""
    from plotly.offline import get_plotlyjs

    runs = [checked_run(r) for r in runs]
    parts, left_out = [], []
    missing = {**MISSING, **PERSONAL_MISSING, **EQUITY_MISSING}
    for name, make in {**FIGURES, **PERSONAL_FIGURES, **EQUITY_FIGURES}.items():
        fig = make(runs)
        if fig is None:
            left_out.append(f"{name}: {missing.get(name, 'no data')}")
            continue
        parts.append(f'<div class="plot" id="plot-{name}" data-figure="{name}"></div>'
                     f'<script>Plotly.newPlot("plot-{name}", {_safe(fig.to_json())}, '
                     '{"responsive": true, "displaylogo": false});</script>')
    title = "fedtune report: " + ", ".join(r["run_id"] for r in runs)
    body = [f"<h1>{html.escape(title)}</h1>"]
    if len(runs) > 1:
        body.append('<p class="note">The runs are overlaid: one colour per run.</p>')
    body += ["<h2>Summary</h2>"] + [f"<h3>{html.escape(r['run_id'])}</h3>{_summary(r)}"
                                    for r in runs]
    body += ["<h2>Plots</h2>", *parts]
    if left_out:
        body.append('<p class="note">Not shown: ' + html.escape("; ".join(left_out)) + "</p>")
    body.append("<h2>Provenance</h2>")
    body += [_provenance(r) for r in runs]
    body.append("<h2>Resolved config</h2>")
    body += [f"<details><summary>{html.escape(r['run_id'])}</summary><pre>"
             f"{html.escape(json.dumps(r.get('config'), indent=2))}</pre></details>"
             for r in runs]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")


def write_report(runs: list[Run], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs), encoding="utf-8")
    return out
