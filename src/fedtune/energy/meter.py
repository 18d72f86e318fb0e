"""Energy of a piece of work, measured or estimated, with the method recorded.

* ``rapl``: Intel/AMD RAPL package counters under ``/sys/class/powercap`` when readable
  (joules of the whole package over the work's wall time, wrap-around handled).
* ``nvml``: added when the work runs on NVIDIA GPUs, from the driver's energy counters
  (:mod:`.nvml`); the CPU's share is measured as below, and the method names both
  (``rapl+nvml`` or ``tdp:...+nvml``).
* ``tdp-estimate``: the CPU seconds the work used times the TDP share of one hardware thread.
  The TDP comes from CodeCarbon's maintained ``cpu_power.csv``, matched on the CPU's model
  name; an unmatched CPU gets CodeCarbon's own default of 4 W per thread.

Reading two counters per task costs microseconds, far under the 2 % metering budget
(``bench/overhead.py`` measures it).
"""

from __future__ import annotations

import csv
import os
import re
from functools import cache
from pathlib import Path

from .codecarbon_data import codecarbon_file

MeterToken = tuple[list[int], list[int]]  # RAPL and NVML counters at start
RAPL_ROOT = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_THREAD = 4.0  # CodeCarbon's fallback when the CPU is not in its table


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _norm(name: str) -> str:
    name = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$|\d+-core", " ", name.lower())
    return " ".join(name.split())


@cache
def _tdp_rows() -> list[tuple[str, str]]:
    """(name, TDP text) rows of CodeCarbon's table, read once per process."""
    path = codecarbon_file("data/hardware/cpu_power.csv")
    return [(row["Name"], row.get("TDP") or "")
            for row in csv.DictReader(path.read_text().splitlines())]


@cache
def lookup_tdp(model: str) -> float | None:
    """TDP in watts of the CPU named ``model``, or None if CodeCarbon's table lacks it.

    An exact match of the normalized names wins; else the longest table name contained in
    the model string (e.g. "xeon gold 6248"). Rows whose last word is absent from the model
    string are skipped before any normalization, which keeps the lookup at a few ms.
    """
    key, low = _norm(model), model.lower()
    best: tuple[int, float] | None = None
    for name, tdp_text in _tdp_rows():
        words = name.lower().split()
        if not words or words[-1] not in low:
            continue
        match = re.match(r"\d+(\.\d+)?", tdp_text)  # a few rows hold malformed numbers
        norm = _norm(name)
        if match is None or (len(norm) <= 6 and norm != key):
            continue
        if norm == key:
            return float(match.group(0))
        if norm in key and (best is None or len(norm) > best[0]):
            best = (len(norm), float(match.group(0)))
    return best[1] if best else None


def _rapl_files() -> list[Path]:
    if not RAPL_ROOT.exists():
        return []
    out = []
    for p in sorted(RAPL_ROOT.glob("*-rapl:*/energy_uj")):
        if p.parent.name.count(":") == 1 and os.access(p, os.R_OK):  # packages only
            out.append(p)
    return out


class EnergyMeter:
    """Measures joules between :meth:`start` and :meth:`stop`."""

    def __init__(self, *, tdp_watts: float | None = None, use_rapl: bool = True,
                 gpus: list[int] | None = None) -> None:
        from .nvml import NvmlEnergy

        self.rapl = _rapl_files() if use_rapl else []
        self.nvml, self.nvml_reason = NvmlEnergy.open(gpus) if gpus else (None, "")
        threads = os.cpu_count() or 1
        model = _cpu_model()
        tdp = tdp_watts if tdp_watts else lookup_tdp(model)
        if tdp is None:
            self.watts_per_thread = DEFAULT_WATTS_PER_THREAD
            source = f"default {DEFAULT_WATTS_PER_THREAD:g} W/thread, '{model}' not in table"
        else:
            self.watts_per_thread = tdp / threads
            source = f"{tdp:g} W TDP / {threads} threads, {model}"
        self.method = "rapl" if self.rapl else f"tdp-estimate ({source})"
        # what travels with every result: short, the full description stays in the run
        self.code = "rapl" if self.rapl else f"tdp:{self.watts_per_thread:.3g}W/thread"
        if self.nvml is not None:
            self.method += f" + nvml ({', '.join(self.nvml.names)})"
            self.code += "+nvml"
        elif gpus:
            self.method += f" (GPU not metered: {self.nvml_reason})"

    def _read(self) -> list[int]:
        return [int(p.read_text()) for p in self.rapl]

    def start(self) -> MeterToken:
        gpu = self.nvml.read() if self.nvml is not None else []
        return (self._read() if self.rapl else []), gpu

    def stop(self, token: MeterToken, cpu_s: float) -> float:
        """Joules used since ``start``: the CPU's (RAPL, or ``cpu_s`` CPU seconds times the
        TDP share) plus the GPUs' (NVML) when metered."""
        cpu_token, gpu_token = token
        gpu = 0.0
        if self.nvml is not None:
            gpu = self.nvml.joules(gpu_token, self.nvml.read())
        if not self.rapl:
            return cpu_s * self.watts_per_thread + gpu
        return self._rapl_joules(cpu_token) + gpu

    def _rapl_joules(self, token: list[int]) -> float:
        total = 0
        for p, before, after in zip(self.rapl, token, self._read(), strict=True):
            delta = after - before
            if delta < 0:  # counter wrapped
                try:
                    delta += int((p.parent / "max_energy_range_uj").read_text())
                except OSError:
                    delta = 0
            total += delta
        return total / 1e6
