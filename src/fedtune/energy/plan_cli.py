"""``fedtune plan``: what a fine-tuning job costs on each hardware and deployment option,
before anything is bought or run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import FedtuneError


def plan_command(
    plan_file: Annotated[Path | None, typer.Argument(
        help="TOML with a [job] table and [[option]] tables; flags override [job]")] = None,
    model: Annotated[str, typer.Option(help="a preset (see --list), e.g. llama-2-7b")] = "",
    params: Annotated[float, typer.Option(help="or the parameter count, e.g. 7e9")] = 0.0,
    tokens: Annotated[float, typer.Option(help="tokens per epoch")] = 0.0,
    samples: Annotated[float, typer.Option(help="or samples per epoch (x --seq-len)")] = 0.0,
    seq_len: Annotated[int, typer.Option(help="tokens per sample")] = 0,
    epochs: Annotated[float, typer.Option()] = 0.0,
    method: Annotated[str, typer.Option(help="full, lora or pretrain")] = "",
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 0,
    base_bits: Annotated[int, typer.Option(help="LoRA's frozen base: 16, 8 or 4")] = 0,
    dtype: Annotated[str, typer.Option(help="bf16, fp16, fp32, tf32 or fp8")] = "",
    recompute: Annotated[bool | None, typer.Option(
        "--recompute/--no-recompute", help="activation checkpointing")] = None,
    deadline_hours: Annotated[float, typer.Option(help="wall-time limit")] = 0.0,
    option: Annotated[list[str] | None, typer.Option(
        help="HARDWARE[:key=value,...], repeatable; none = the default comparison")] = None,
    sites: Annotated[int, typer.Option(help="sites of the default federated option")] = 10,
    site_hardware: Annotated[str, typer.Option(help="their device")] = "l4",
    link_mbps: Annotated[float, typer.Option(help="their links")] = 100.0,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 100,
    country: Annotated[str, typer.Option(help="grid (ISO alpha-3) of the defaults")] = "USA",
    rank_by: Annotated[str, typer.Option(help="money, co2, time or energy")] = "money",
    list_: Annotated[bool, typer.Option("--list", help="the hardware and models known")] = False,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
) -> None:
    """Compare the cost of fine-tuning a model across hardware and deployments: GPU-hours, wall
    time, memory fit, energy, CO2 (with embodied), money and bytes. Nothing is trained."""
    from .plan import default_options, load_plan_file, make_job, make_option, plan

    try:
        if list_:
            _print_tables(output)
            return
        job_values, option_specs = load_plan_file(plan_file) if plan_file else ({}, [])
        flags = {"model": model, "params": params, "tokens": tokens, "samples": samples,
                 "seq_len": seq_len, "epochs": epochs, "method": method, "lora_rank": rank,
                 "base_bits": base_bits, "dtype": dtype, "recompute": recompute,
                 "deadline_hours": deadline_hours}
        job_values.update({k: v for k, v in flags.items()
                           if v is not None and (isinstance(v, bool) or v not in (0, ""))})
        job = make_job(**job_values)
        specs: list[Any] = [*option_specs, *(option or [])]
        options = ([make_option(s) for s in specs] if specs else default_options(
            sites=sites, site_hardware=site_hardware, link_mbps=link_mbps, rounds=rounds,
            country=country))
        result = plan(job, options, rank_by=rank_by)
    except FedtuneError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if output == "json":
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
        return
    _print_plan(result)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:,.2f}"


def _print_plan(result: Any) -> None:
    job = result.job
    console = Console()
    table = Table(title=f"fedtune plan: {job.model.name}, {job.method}, "
                        f"{job.tokens * job.epochs:.3g} tokens, {result.estimates[0].flops:.3g} "
                        f"FLOPs ({result.formula})")
    for col in ("option", "devices", "GB/device", "GPU-h", "wall h", "kWh",
                "kg CO2e (embodied)", "USD", "bytes/round"):
        table.add_column(col, overflow="fold")
    notes: list[str] = []
    for e in result.estimates:
        devices = f"{e.sites}x{e.devices}" if e.sites else str(e.devices)
        label = e.label
        if e.notes:
            notes.append(f"[{len(notes) + 1}] {e.label}: " + "; ".join(e.notes))
            label += f" [{len(notes)}]"
        fit = f"{e.memory_gb_per_device:,.1f}/{e.memory_gb_available:g}"
        table.add_row(label, devices, fit if e.fits else f"[red]{fit}[/red]",
                      f"{e.device_hours:,.3g}", f"{e.wall_hours:,.3g}", f"{e.energy_kwh:,.3g}",
                      f"{e.total_co2_kg:,.3g} ({e.embodied_co2_kg:,.2g})", _money(e.money_usd),
                      f"{e.bytes_per_round:,.3g}" if e.sites else "-")
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    console.print(f"[bold]recommended:[/bold] {result.reason}", highlight=False)
    console.print("assumptions:", highlight=False)
    for a in result.assumptions:
        console.print(f"  - {a}", highlight=False)


def _print_tables(output: str) -> None:
    from .plan_data import hardware_table, model_presets

    hw = {k: v.model_dump() for k, v in hardware_table().items()}
    models = {k: v.model_dump() for k, v in model_presets().items()}
    if output == "json":
        sys.stdout.write(json.dumps({"hardware": hw, "models": models}) + "\n")
        return
    console = Console()
    t = Table(title="hardware (energy/hardware.toml)")
    for col in ("name", "dense TFLOP/s", "GB", "W", "USD/h", "embodied kg", "source"):
        t.add_column(col, overflow="fold")
    for name, h in hw.items():
        t.add_row(name, ", ".join(f"{k} {v:g}" for k, v in h["tflops"].items()),
                  f"{h['memory_gb']:g}", str(h["tdp_w"] or "-"), str(h["price_per_hour"] or "-"),
                  str(h["embodied_kg"] or "-"), h["spec_source"])
    console.print(t)
    m = Table(title="models (energy/models.toml)")
    for col in ("name", "parameters", "layers", "hidden", "source"):
        m.add_column(col, overflow="fold")
    for name, p in models.items():
        m.add_row(name, f"{p['params']:.3g}", str(p["layers"]), str(p["hidden"]), p["source"])
    console.print(m)
