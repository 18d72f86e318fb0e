"""The ``fedtune`` command line: run experiments, list and inspect stored runs.

Every user error is a :class:`FedtuneError`, printed as one line on stderr with exit code 2.
Progress and tables go to stderr/stdout for people; ``--output json`` prints one JSON object
on stdout for scripts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import catalog
from .catalog import LazyRegistry
from .energy.plan_cli import plan_command
from .errors import FedtuneError
from .privacy.cli import audit, privacy
from .report.cli import report_command
from .report.progress import RoundStatus

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fedtune: hybrid centralized-decentralized (federated) fine-tuning.")
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="folder of the run store")]


def _fail(exc: FedtuneError) -> None:
    sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(2)


def _torch_threads(threads: int, *, idles: bool = False) -> None:
    """--threads: torch's thread count (0 leaves torch's default). A coordinator or a site
    (``idles``) waits between rounds: its OpenMP threads then sleep instead of spinning, which
    on a shared machine takes the cores other processes need (bench/grpc_rounds.py measures
    the CPU by thread). Set before torch is imported."""
    if idles:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _print_result(result: Any, output: str, title: str) -> None:
    """The final summary: one JSON object on stdout, or a table for people. A run that
    learned nothing, or too little (status degraded or failed), then exits with code 3."""
    from .report.summary import result_summary, summary_table

    summary = result_summary(result)
    if output == "json":
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        out.print(summary_table(summary, title=title))
    if result.status != "complete":
        sys.stderr.write(f"error: run {result.run_id} ended {result.status}: "
                         f"{result.extra.get('status_reason', '')}\n")
        raise typer.Exit(3)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="TOML config; none = default")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a key, e.g. --set strategy.name=fedprox")] = None,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    resume: Annotated[bool, typer.Option(
        help="continue the newest interrupted or crashed run in the workspace")] = False,
    run_id: Annotated[str | None, typer.Option("--run", help="with --resume: which run")] = None,
    baselines: Annotated[str, typer.Option(
        help="also: pooled (same model, pooled data), local (each site alone), probe "
             "(linear probe of the initial model), comma-separated")] = "",
    threads: Annotated[int, typer.Option(min=0, help="torch threads; 0 = torch's default (the "
                                         "same count as the sites' gives their numbers)")] = 0,
) -> None:
    """Run a federated fine-tuning experiment (the embedded default if no CONFIG)."""
    from .config import load_config

    _torch_threads(threads)
    if output not in ("table", "json"):
        _fail(FedtuneError(f"--output {output!r}: use table or json"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # a bar on a terminal; elsewhere (a log file, CI) a plain line every tenth of the run
    lines = not quiet and not err.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[acc]}"),
                        TimeElapsedColumn(), console=err, disable=quiet or lines)
    bars: list[Any] = []
    every = [1]

    started: list[str] = []
    last_round, total = [0], [0]

    def on_start(rid: str, rounds: int) -> None:
        started.append(rid)
        total[0] = rounds
        progress.start()  # only once set-up succeeded, so errors stay on one line
        bars.append(progress.add_task(f"run {rid}", total=rounds, acc=""))
        every[0] = max(1, rounds // 10)
        if lines:
            err.print(f"run {rid}: {rounds} rounds", highlight=False)

    status = RoundStatus()

    def on_round(rec: Any) -> None:
        last_round[0] = rec.round
        acc = status(rec)
        progress.update(bars[0], advance=1, acc=acc)
        if lines and (rec.round % every[0] == 0 or rec.round == total[0]):
            err.print(f"round {rec.round}/{total[0]} {acc}".rstrip(), highlight=False)

    try:
        kinds = [k.strip() for k in baselines.split(",") if k.strip()]
        extra = [f"run.baselines={json.dumps(kinds)}"] if kinds else []
        cfg = load_config(config, [*(set_ or []), *extra])  # typos fail before torch loads
        from .experiment import run as run_experiment

        result = run_experiment(cfg, on_round=on_round, on_start=on_start, resume=resume,
                                resume_run=run_id)
    except FedtuneError as exc:
        progress.stop()
        _fail(exc)
        return
    except KeyboardInterrupt:
        progress.stop()
        rid = started[0] if started else "?"
        sys.stderr.write(f"interrupted after round {last_round[0]}: run {rid} is stored; "
                         f"continue it with `fedtune run --resume --run {rid}`\n")
        raise typer.Exit(130) from None
    finally:
        progress.stop()
    _print_result(result, output, f"fedtune run: {cfg.run.name}")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Argument(help="TOML config; none = default")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key")] = None,
    resume: Annotated[bool, typer.Option(help="continue the newest incomplete run")] = False,
    run_id: Annotated[str | None, typer.Option("--run", help="with --resume: which run")] = None,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    threads: Annotated[int, typer.Option(min=0, help="torch threads; 0 = torch's default")] = 0,
    task: Annotated[str, typer.Option(
        help="module:function building a custom Task (sites join with the same)")] = "",
) -> None:
    """Coordinate real sites over gRPC (they connect with 'fedtune join')."""
    _torch_threads(threads, idles=True)
    from .config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("fedtune")

    def on_start(rid: str, rounds: int) -> None:
        log.info("run %s: %d rounds, serving on %s", rid, rounds, cfg.server.address)

    status = RoundStatus()

    def on_round(rec: Any) -> None:
        log.info("round %d: %d sites, %d failed; %s", rec.round, len(rec.nodes),
                 len(rec.failed), status(rec))

    code = 0
    try:
        cfg = load_config(config, set_ or [])
        from .experiment import serve as serve_experiment
        from .task import load_task_factory

        result = serve_experiment(cfg, resume=resume, resume_run=run_id, on_round=on_round,
                                  on_start=on_start,
                                  task_factory=load_task_factory(task) if task else None)
        _print_result(result, output, f"fedtune serve: {cfg.run.name}")
    except FedtuneError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = 2
    except typer.Exit as exc:
        code = exc.exit_code
    # The store is closed and the server stopped. Leave without interpreter teardown: gRPC's
    # C++ threads can abort the process while Python finalizes ("terminate called without
    # an active exception"), which would turn a clean stop into exit code -6.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


@app.command()
def join(
    server: Annotated[str, typer.Option(help="coordinator HOST:PORT")],
    site: Annotated[str, typer.Option(help="this site's name")],
    data: Annotated[str, typer.Option(help="partition:NODE or a .npz file")] = "partition:",
    token: Annotated[str, typer.Option(envvar="FEDTUNE_TOKEN", help="site token")] = "",
    token_file: Annotated[str, typer.Option(help="tokens TOML; this site's line is used")] = "",
    ca: Annotated[str, typer.Option(help="CA certificate (PEM): use TLS")] = "",
    cert: Annotated[str, typer.Option(help="client certificate (PEM): mutual TLS")] = "",
    key: Annotated[str, typer.Option(help="client key (PEM)")] = "",
    state_dir: Annotated[str, typer.Option(help="where the node keeps its state")] = "",
    task: Annotated[str, typer.Option(help="module:function building a custom Task")] = "",
    max_attempts: Annotated[int, typer.Option(help="give up after N failed connects; 0 never")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="torch threads; 0 = torch's default")] = 0,
    grid: Annotated[str, typer.Option(help="this site's grid: country, g/kWh or hourly CSV")] = "",
    red_team: Annotated[bool, typer.Option(help="carry out attacks the run names it for")] = False,
) -> None:
    """Join a federation as a site: connect out, train on local data, send updates."""
    _torch_threads(threads, idles=True)
    from .runtime.grpc.security import token_for
    from .runtime.grpc.site import Site, SiteOptions, read_site_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if token_file and not token:
            token = token_for(token_file, site)
        if not data.startswith("partition:"):
            read_site_file(data, site)  # a broken file is refused before connecting
        Site(SiteOptions(server=server, site=site, data=data, token=token, ca=ca, cert=cert,
                         key=key, state_dir=state_dir, task=task, max_attempts=max_attempts,
                         device=device, grid=grid, red_team=red_team)).run()
    except FedtuneError as exc:
        _fail(exc)
    # The run is over. Leave without interpreter teardown: gRPC's C++ threads can abort the
    # process while Python finalizes, which would turn a clean stop into exit code -6.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


@app.command()
def certs(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write into")],
    site: Annotated[list[str], typer.Option("--site", help="a site name (repeat)")],
    host: Annotated[list[str] | None, typer.Option(help="coordinator host name or IP")] = None,
    days: Annotated[float, typer.Option(help="validity in days")] = 365.0,
) -> None:
    """Make a development CA, coordinator and site certificates, and site tokens."""
    from .runtime.grpc.security import make_certificates

    files = make_certificates(out_dir, sites=site, hosts=host or ["localhost", "127.0.0.1"],
                              days=days)
    for name, path in files.items():
        out.print(f"{name}: {path}")
    out.print(f"site certificates and keys: {out_dir}/<site>.pem, {out_dir}/<site>.key")


@app.command()
def runs(workspace: WorkspaceOpt = ".fedtune") -> None:
    """List the runs stored in a workspace."""
    store = _open_store(workspace)
    table = Table(title=f"runs in {store.path}")
    try:
        listed = store.list_runs()
    except FedtuneError as exc:
        _fail(exc)
        return
    # a run id is never cut (it is what `show` and `export` take); other columns fold
    table.add_column("run", no_wrap=True,
                     min_width=max((len(r["run_id"]) for r in listed), default=3))
    for col in ("name", "status", "rounds", "last accuracy"):
        table.add_column(col, overflow="fold")
    for r in listed:
        acc = "" if r["last_accuracy"] is None else f"{r['last_accuracy']:.4f}"
        table.add_row(r["run_id"], r["name"], r["status"],
                      f"{r['rounds_done']}/{r['rounds_planned']}", acc)
    out.print(table)


def _open_store(workspace: str) -> Any:
    from .store import existing_store

    try:
        return existing_store(workspace)
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
        from .equity.summary import latest_bias_audit
        from .privacy.audit_store import latest_overall, stored_audits
        from .report.summary import stored_summary

        summary = stored_summary(data, latest_overall(stored_audits(store, data["run_id"])),
                                 latest_bias_audit(store, data["run_id"]))
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
           out_path: Annotated[str, typer.Option(
               "--out", help="json: a file, a folder or - (standard output); csv: a folder")] = "-",
           fmt: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
           workspace: WorkspaceOpt = ".fedtune") -> None:
    """Export a stored run to JSON or CSV."""
    store = _open_store(workspace)
    try:
        if out_path == "-":  # standard output: JSON only
            if fmt != "json":
                raise FedtuneError("CSV export writes three files; give a folder with --out"
                                   if fmt == "csv" else
                                   f"export format {fmt!r} is unknown; use json or csv")
            sys.stdout.write(json.dumps(store.load_run(run_id), indent=2) + "\n")
            return
        for path in store.export(run_id, fmt, out_path):
            out.print(f"wrote {path}")
    except FedtuneError as exc:
        _fail(exc)


def _listing(title: str, what: str, registry: LazyRegistry) -> Table:
    table = Table(title=title)
    table.add_column("name", style="bold")
    table.add_column(what)
    for name in registry:
        table.add_row(name, registry.description(name))
    return table


@app.command()
def strategies() -> None:
    """List the federated strategies."""
    out.print(_listing("strategies (strategy.name)", "what it does", catalog.STRATEGIES))
    out.print(_listing("aggregators (strategy.aggregator)", "what it does",
                       catalog.AGGREGATORS))


@app.command()
def datasets() -> None:
    """List the bundled datasets and partitioners."""
    out.print(_listing("datasets (data.dataset); nothing is downloaded", "what it is",
                       catalog.DATASETS))
    out.print(_listing("partitions (data.partition)", "what it does", catalog.PARTITIONERS))


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


app.command("privacy")(privacy)
app.command("audit")(audit)
app.command("plan")(plan_command)
app.command("report")(report_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
