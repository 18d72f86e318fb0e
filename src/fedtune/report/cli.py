"""``fedtune report``: the HTML report of stored runs."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import FedtuneError


def report_command(
    runs: Annotated[list[str], typer.Argument(help="run ids, unique prefixes, or 'last'")],
    out: Annotated[Path, typer.Option("--out", help="the HTML file to write")] = Path(
        "report.html"),
    workspace: Annotated[str, typer.Option(help="the run store's folder")] = ".fedtune",
    open_: Annotated[bool, typer.Option("--open", help="open it in a browser")] = False,
) -> None:
    """Write one self-contained HTML page (plots, summary, config, provenance) of one run, or
    of several overlaid for comparison. It opens offline."""
    from ..store import existing_store
    from .html import write_report

    err = Console(stderr=True)
    try:
        store = existing_store(workspace)
        loaded = [store.load_run(r) for r in runs]
        path = write_report(loaded, out)
    except FedtuneError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except ValueError as exc:  # a stored JSON record that does not parse
        err.print(f"[red]error:[/red] a stored record of {', '.join(runs)} is damaged ({exc}); "
                  "'fedtune runs' lists the runs", highlight=False)
        raise typer.Exit(2) from None
    Console().print(f"report: {path.resolve()}", highlight=False)
    if open_ and not webbrowser.open(path.resolve().as_uri()):
        err.print("no browser found here: open the file above", highlight=False)
