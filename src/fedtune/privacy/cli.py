"""``fedtune privacy``: the epsilon a config would spend, or the noise a target needs,
without running anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, FedtuneError


def privacy(
    config: Annotated[Path | None, typer.Argument(help="TOML config; none = default")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key")] = None,
    target_epsilon: Annotated[float | None, typer.Option(
        help="calibrate: the noise multiplier that spends this epsilon in run.rounds")] = None,
    sites: Annotated[int, typer.Option(
        help="sites that may take part (default: data.num_nodes)")] = 0,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
) -> None:
    """The (epsilon, delta) of a config's client-level DP after its rounds, or (with
    --target-epsilon) the noise multiplier that meets a target. Nothing is trained."""
    from ..config import load_config

    try:
        cfg = load_config(config, set_ or [])
        report = privacy_report(cfg, sites=sites or cfg.data.num_nodes,
                                target_epsilon=target_epsilon)
    except FedtuneError as exc:
        _fail(exc)
    if _as_json(report, output):
        return
    table = Table(title="fedtune privacy (client-level DP)", show_header=False)
    for key, value in report.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def privacy_report(cfg: Any, *, sites: int, target_epsilon: float | None) -> dict[str, Any]:
    """What :func:`privacy` prints, as a dict."""
    from .accountant import Accountant, calibrate, sampling_for
    from .settings import check_delta

    p, s, rounds = cfg.privacy, cfg.strategy, cfg.run.rounds
    try:
        check_delta(p.delta, sites)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sampling = sampling_for(s.selection, population=sites, fraction=s.fraction, count=s.count,
                            min_nodes=s.min_nodes)
    z = p.noise_multiplier
    out: dict[str, Any] = {"sites": sites, "rounds": rounds, "delta": p.delta,
                           "expected_sites_per_round": sampling.expected_sites}
    if target_epsilon is not None:
        z = calibrate(target_epsilon, delta=p.delta, rounds=rounds, sampling=sampling,
                      method=p.accountant)
        out["target_epsilon"] = target_epsilon
        out["set"] = f"--set privacy.noise_multiplier={z:.4f}"
    acc = Accountant(noise_multiplier=z, sampling=sampling, delta=p.delta, method=p.accountant)
    out.update({"noise_multiplier": z, "epsilon": acc.epsilon(rounds),
                "epsilon_rdp": acc.epsilon_rdp(rounds), "bound": acc.bound})
    if p.max_epsilon is not None:
        out["rounds_within_max_epsilon"] = acc.rounds_within(p.max_epsilon, rounds)
    if p.mode == "off" and target_epsilon is None:
        out["note"] = ("privacy.mode = \"off\": this config adds no noise; the figures are "
                       "what privacy.mode = \"central\" would give")
    return out


def audit(
    run_id: Annotated[str, typer.Argument(help="run id, unique prefix, or 'last'")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="folder of the run store")
                         ] = ".fedtune",
    max_sites: Annotated[int, typer.Option(help="attack at most this many sites (sampled)")
                         ] = 100,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    bias: Annotated[bool, typer.Option("--bias", help="the hidden-bias audit instead: "
                                       "accuracy gaps, parity and odds differences per site, "
                                       "class and group")] = False,
    margin: Annotated[float | None, typer.Option(help="--bias: flag what falls this many "
                                                 "points below the mean (default: the run's "
                                                 "fairness.margin_pts)")] = None,
) -> None:
    """Membership-inference audit of a finished run's global model: per site, how well a
    loss-threshold and a calibrated attack tell its training examples from held-out ones
    (with --bias: the hidden-bias audit)."""
    from ..store import existing_store

    if bias:
        from ..equity.bias_cli import bias_audit

        bias_audit(run_id, workspace, margin, output)
        return
    from .audit import audit_run
    from .audit_store import save_audit

    try:
        store = existing_store(workspace)
        try:  # a spinner on a terminal only: JSON and piped output stay clean
            with Console(stderr=True).status(f"auditing {run_id} (at most {max_sites} sites)"):
                report = audit_run(store.load_run(run_id), max_sites=max_sites)
            save_audit(store, report)
        finally:
            store.close()
    except FedtuneError as exc:
        _fail(exc)
    if _as_json(report, output):
        return
    table = Table(title=f"membership-inference audit of run {report['run_id']} "
                        f"({report['sites']} sites)")
    for col in ("attack", "AUC (0.5 = no leak)", "TPR at 1 % FPR", "members / non-members"):
        table.add_column(col)
    for attack, o in report["overall"].items():
        table.add_row(attack, f"{o['auc']:.4f}", f"{o['tpr_at_1pct_fpr']:.4f}",
                      f"{o['members']} / {o['nonmembers']}")
    Console().print(table)
    dp = [d for d in (report["client_dp"], report["sample_dp"]) if d]
    Console().print("the run had " + (", ".join(f"{d['level']}-level DP" for d in dp)
                                      if dp else "no differential privacy"))


def _fail(exc: FedtuneError) -> NoReturn:
    sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(2) from None


def _as_json(report: dict[str, Any], output: str) -> bool:
    """Print ``report`` as one JSON line when asked; whether it was."""
    if output == "json":
        sys.stdout.write(json.dumps(report) + "\n")
    return output == "json"
