"""The ``fedtune`` command line: run experiments, list and inspect stored runs.

Every user error is a :class:`FedtuneError`, printed as one line on stderr with exit code 2.
Progress and tables go to stderr/stdout for people; ``--output json`` prints one JSON object
on stdout for scripts.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import FedtuneError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedtune: hybrid centralized-decentralized (federated) fine-tuning.")
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="folder of the run store")]


def _fail(exc: FedtuneError) -> None:
    sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="TOML config; none = default")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a key, e.g. --set strategy.name=fedprox")] = None,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run a federated fine-tuning experiment (the embedded default if no CONFIG)."""
    from .config import load_config
    from .experiment import run as run_experiment
    from .report.summary import result_summary, summary_table

    if output not in ("table", "json"):
        _fail(FedtuneError(f"--output {output!r}: use table or json"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[acc]}"),
                        TimeElapsedColumn(), console=err, disable=quiet)
    bars: list[Any] = []

    def on_start(run_id: str, rounds: int) -> None:
        progress.start()  # only once set-up succeeded, so errors stay on one line
        bars.append(progress.add_task(f"run {run_id}", total=rounds, acc=""))

    def on_round(rec: Any) -> None:
        acc = "" if rec.test_accuracy is None else f"acc {rec.test_accuracy:.4f}"
        progress.update(bars[0], advance=1, acc=acc)

    try:
        cfg = load_config(config, set_ or [])
        result = run_experiment(cfg, on_round=on_round, on_start=on_start)
    except FedtuneError as exc:
        progress.stop()
        _fail(exc)
        return
    finally:
        progress.stop()
    summary = result_summary(result)
    if output == "json":
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        out.print(summary_table(summary, title=f"fedtune run: {cfg.run.name}"))


@app.command()
def runs(workspace: WorkspaceOpt = ".fedtune") -> None:
    """List the runs stored in a workspace."""
    store = _open_store(workspace)
    table = Table(title=f"runs in {store.path}")
    for col in ("run", "name", "status", "rounds", "last accuracy"):
        table.add_column(col)
    for r in store.list_runs():
        acc = "" if r["last_accuracy"] is None else f"{r['last_accuracy']:.4f}"
        table.add_row(r["run_id"], r["name"], r["status"],
                      f"{r['rounds_done']}/{r['rounds_planned']}", acc)
    out.print(table)


def _open_store(workspace: str) -> Any:
    from .store import RunStore

    if not (Path(workspace) / "runs.sqlite").is_file():
        _fail(FedtuneError(f"no run store in {workspace!r}; run 'fedtune run' first or pass "
                           "--workspace"))
    try:
        return RunStore(workspace)
    except FedtuneError as exc:
        _fail(exc)


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="run id, unique prefix, or 'last'")],
         workspace: WorkspaceOpt = ".fedtune",
         output: Annotated[str, typer.Option(help="table or json")] = "table") -> None:
    """Summarize one stored run (also an incomplete one)."""
    from .report.summary import summary_table

    store = _open_store(workspace)
    try:
        data = store.load_run(run_id)
    except FedtuneError as exc:
        _fail(exc)
        return
    rounds = data["rounds"]
    if output == "json":
        sys.stdout.write(json.dumps({k: data[k] for k in
                                     ("run_id", "name", "status", "result", "rounds")}) + "\n")
        return
    result = data["result"]
    if result and "error" not in result:
        from .report.summary import _clean

        summary = _clean({**{k: result[k] for k in ("run_id", "status", "energy_method",
                                                    "wall_s")},
                          "rounds": len(rounds), "test_accuracy": result["final_test_accuracy"],
                          "node_accuracy_global": result["fairness_global"],
                          "node_accuracy_personalized": result["fairness_personalized"],
                          "bytes_down": result["total_bytes_down"],
                          "bytes_up": result["total_bytes_up"],
                          "energy_j": result["total_energy_j"], "co2_g": result["total_co2_g"]})
        out.print(summary_table(summary, title=f"run {data['run_id']} ({data['name']})"))
        return
    table = Table(title=f"run {data['run_id']} ({data['name']}): {data['status']}")
    for col in ("round", "nodes", "failed", "test accuracy", "bytes up", "energy J"):
        table.add_column(col)
    for r in rounds:
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        table.add_row(str(r["round"]), str(r["nodes"]), str(r["failed"]), acc,
                      f"{r['bytes_up']:,}", f"{r['energy_j']:.2f}")
    out.print(table)
    if result and "error" in result:
        err.print(f"run failed: {result['error']}", highlight=False)


@app.command()
def export(run_id: Annotated[str, typer.Argument(help="run id, unique prefix, or 'last'")],
           out_path: Annotated[Path, typer.Option("--out", help="file (json) or folder (csv)")],
           fmt: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
           workspace: WorkspaceOpt = ".fedtune") -> None:
    """Export a stored run to JSON or CSV."""
    store = _open_store(workspace)
    try:
        for path in store.export(run_id, fmt, out_path):
            out.print(f"wrote {path}")
    except FedtuneError as exc:
        _fail(exc)


@app.command()
def strategies() -> None:
    """List the federated strategies."""
    from .algorithms.strategy import STRATEGIES

    table = Table(title="strategies (strategy.name)")
    table.add_column("name", style="bold")
    table.add_column("what it does")
    for name, (desc, _) in STRATEGIES.items():
        table.add_row(name, desc)
    out.print(table)


@app.command()
def datasets() -> None:
    """List the bundled datasets and partitioners."""
    from .data import DATASETS, PARTITIONERS

    table = Table(title="datasets (data.dataset); nothing is downloaded")
    table.add_column("name", style="bold")
    table.add_column("what it is")
    for name, (desc, _) in DATASETS.items():
        table.add_row(name, desc)
    out.print(table)
    out.print("partitions (data.partition): " + ", ".join(PARTITIONERS))


@app.command("config")
def show_config(config: Annotated[Path | None, typer.Argument()] = None,
                set_: Annotated[list[str] | None, typer.Option("--set")] = None) -> None:
    """Print the fully resolved config (defaults, file and overrides) as JSON."""
    from .config import load_config

    try:
        cfg = load_config(config, set_ or [])
    except FedtuneError as exc:
        _fail(exc)
        return
    sys.stdout.write(json.dumps(cfg.model_dump(), indent=2) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
