"""``fedtune plan``'s engine: a job against hardware and deployment options, ranked, with a
recommendation, its reason, and every assumption listed (the formulas: :mod:`.planner`)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from .plan_data import hardware, hardware_table, model_preset, shape_for
from .planner import (
    ASSUMPTIONS,
    Estimate,
    Job,
    Option,
    estimate,
    fewest_devices,
    memory_bytes,
    training_flops,
)

RANK_KEYS: dict[str, Callable[[Estimate], float]] = {
    "money": lambda e: e.money_usd if e.money_usd is not None else math.inf,
             "co2": lambda e: e.total_co2_kg, "time": lambda e: e.wall_hours,
             "energy": lambda e: e.energy_kwh}


@dataclass
class Plan:
    job: Job
    formula: str
    estimates: list[Estimate]  # ranked: the options that fit first
    recommended: Estimate
    reason: str
    assumptions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        rows = []
        for e in self.estimates:
            row = asdict(e)
            row["total_co2_kg"] = e.total_co2_kg
            rows.append(row)
        return {"model": self.job.model.name, "params": self.job.model.params,
                "method": self.job.method, "tokens": self.job.tokens, "epochs": self.job.epochs,
                "flops": self.estimates[0].flops, "formula": self.formula, "options": rows,
                "recommended": self.recommended.label, "reason": self.reason,
                "assumptions": self.assumptions}


def _error(exc: ValidationError, what: str) -> ConfigError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    value = first.get("input")
    return ConfigError(f"{what} {where} = {value!r}: {first['msg']}")


def make_job(*, model: str = "", params: float = 0.0, tokens: float = 0.0, samples: float = 0.0,
             **rest: Any) -> Job:
    """A :class:`Job` from a preset name or a parameter count, and tokens or samples (each
    ``seq_len`` tokens long)."""
    unknown = set(rest) - set(Job.model_fields) - {"model", "tokens"}
    if unknown:
        raise ConfigError(f"job: unknown key(s) {sorted(unknown)}; the keys are model, params, "
                          "tokens, samples, " + ", ".join(sorted(set(Job.model_fields)
                                                                 - {"model", "tokens"})))
    if model and params:
        raise ConfigError("give the model by --model NAME or by --params N, not both")
    if not model and not params:
        raise ConfigError("say which model: --model NAME (see `fedtune plan --list`) or "
                          "--params N (e.g. 7e9)")
    preset = model_preset(model) if model else shape_for(params)
    for name, value in (("tokens", tokens), ("samples", samples)):
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"{name} = {value!r}: must be a positive number")
    if tokens and samples:
        raise ConfigError("give --tokens or --samples, not both")
    seq_len = int(rest.get("seq_len", 2048))
    if samples:
        tokens = samples * seq_len
    if not tokens and rest.get("flops") is None:
        raise ConfigError("say how much data: --tokens N or --samples N (with --seq-len)")
    try:
        return Job(model=preset, tokens=tokens or 1.0, **rest)
    except ValidationError as exc:
        raise _error(exc, "job") from None


def make_option(spec: str | dict[str, Any]) -> Option:
    """An :class:`Option` from a dict, or from ``"HARDWARE[:key=value,...]"``."""
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        values: dict[str, Any] = {"hardware": name.strip()}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ConfigError(f"--option {spec!r}: {pair!r} is not key=value "
                                  "(e.g. a100-sxm-80gb:acquire=own,devices=8)")
            values[key.strip()] = value.strip()
        spec = values
    try:
        option = Option(**spec)
    except ValidationError as exc:
        raise _error(exc, "option") from None
    hardware(option.hardware)  # an unknown name: the error that lists the known ones
    return option


def default_options(*, sites: int = 10, site_hardware: str = "l4", link_mbps: float = 100.0,
                    rounds: int = 100, country: str = "USA") -> list[Option]:
    """The comparison a newcomer asks for: rented high-end GPUs, an owned A100, a workstation
    GPU, a server CPU, and federated across the sites' own small devices."""
    common = {"country": country}
    return [Option(hardware="h100-sxm-80gb", acquire="rent", **common),
            Option(hardware="a100-sxm-80gb", acquire="rent", **common),
            Option(hardware="a100-sxm-80gb", acquire="own", **common),
            Option(hardware="l40s", acquire="rent", **common),
            Option(hardware="rtx-4090", acquire="own", **common),
            Option(hardware="epyc-9654", acquire="own", **common),
            Option(hardware=site_hardware, acquire="own", sites=sites, link_mbps=link_mbps,
                   rounds=rounds, **common)]


def plan(job: Job, options: list[Option], *, rank_by: str = "money") -> Plan:
    """Estimate ``job`` on every option, rank them, and recommend one."""
    if rank_by not in RANK_KEYS:
        raise ConfigError(f"rank by {rank_by!r}: choose one of {', '.join(RANK_KEYS)}")
    if not options:
        raise ConfigError("no options to compare: give --option, or none for the defaults")
    estimates = [estimate(job, o) for o in options]
    key = RANK_KEYS[rank_by]

    def usable(e: Estimate) -> bool:
        on_time = job.deadline_hours is None or e.wall_hours <= job.deadline_hours
        return e.fits and on_time and key(e) < math.inf

    ranked = sorted(estimates, key=lambda e: (not usable(e), key(e)))
    if not usable(ranked[0]):
        raise ConfigError(_nothing_fits(job, options, ranked))
    best = ranked[0]
    reason = _reason(best, ranked, rank_by)
    notes = list(ASSUMPTIONS)
    if job.model.vocab == 0:
        notes.insert(0, job.model.source)
    return Plan(job=job, formula=training_flops(job)[1], estimates=ranked, recommended=best,
                reason=reason, assumptions=notes)


def _reason(best: Estimate, ranked: list[Estimate], rank_by: str) -> str:
    what = {"money": "the cheapest", "co2": "the lowest CO2 (operational + embodied)",
            "time": "the fastest", "energy": "the least energy"}[rank_by]
    text = f"{best.label}: {what} of the options that fit"
    others = [e for e in ranked[1:] if e.fits]
    if others:
        nxt = others[0]
        text += (f"; next is {nxt.label} ({_fmt_money(nxt.money_usd)}, "
                 f"{nxt.total_co2_kg:,.1f} kg CO2e, {nxt.wall_hours:,.1f} h)")
    return text


def _fmt_money(value: float | None) -> str:
    return "no price" if value is None else f"USD {value:,.0f}"


def _nothing_fits(job: Job, options: list[Option], ranked: list[Estimate]) -> str:
    """The error when no option works, saying what would."""
    m = job.model
    lines = [f"no option fits {m.name} ({m.params:.3g} parameters, {job.method})"
             + (f" within {job.deadline_hours:g} h" if job.deadline_hours else "") + ":"]
    lines += [f"  {e.label}: {'; '.join(e.notes) or 'not usable'}" for e in ranked]
    would = []
    for name, hw in hardware_table().items():
        need = fewest_devices(job, hw)
        if need is not None:
            would.append(f"{need} x {name}")
    if any(o.sites for o in options):
        lines.append("  a site's devices are not pooled with other sites'; give each site "
                     "more devices (devices=N) or train fewer parameters (--method lora)")
    if would:
        lines.append("  it would fit on: " + ", ".join(would[:6]))
    if job.method != "lora":
        lora = job.model_copy(update={"method": "lora", "base_bits": 4})
        again = lora.model_copy(update={"recompute": True})
        lines.append("  with LoRA on a 4-bit base it needs "
                     f"{_gb(lora)} GB per device (--method lora --base-bits 4), "
                     f"{_gb(again)} GB with --recompute")
    return "\n".join(lines)


def _gb(job: Job) -> str:
    return f"{memory_bytes(job, 1)['total'] / 1e9:,.1f}"


def load_plan_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``[job]`` and ``[[option]]`` tables of a plan TOML file."""
    if not path.is_file():
        raise ConfigError(f"plan file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"plan file {path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"job", "option"}
    if unknown:
        raise ConfigError(f"plan file {path}: unknown table(s) {sorted(unknown)}; it has "
                          "[job] and [[option]] tables")
    return dict(raw.get("job", {})), list(raw.get("option", []))
