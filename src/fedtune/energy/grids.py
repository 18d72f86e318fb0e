"""Each site's grid carbon intensity over time (gCO2e/kWh): fixed (a country's, from
CodeCarbon's data, or a number) or hourly (a CSV), from the config (simulated sites, dealt in
the order of site ids) or declared by a real site when it joins (``fedtune join --grid``).

An hourly CSV has an ``hour`` column counting from 0 in steps of one and one column of
intensities per grid; the hours repeat when the run outlasts the file (24 rows are a daily
profile). Hour h of the run reads row floor(h) mod rows.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .carbon import carbon_intensity

MAX_HOURS = 24 * 366  # a year of hourly figures
log = logging.getLogger("fedtune")


def read_hourly_csv(path: str | Path) -> dict[str, list[float]]:
    """The columns of an hourly CSV after its ``hour`` column, by name."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid CSV {p} does not exist")
    try:
        rows = list(csv.DictReader(p.read_text().splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"grid CSV {p} cannot be read: {exc}") from None
    if not rows or "hour" not in rows[0] or len(rows[0]) < 2:
        raise ConfigError(f"grid CSV {p} needs an 'hour' column and one column of gCO2e/kWh "
                          "per grid, e.g. 'hour,FRA,POL' then '0,56,750'")
    if len(rows) > MAX_HOURS:
        raise ConfigError(f"grid CSV {p} has {len(rows)} rows; at most {MAX_HOURS} (a year)")
    names = [k for k in rows[0] if k != "hour"]
    out: dict[str, list[float]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        if row.get("hour", "").strip() != str(i):
            raise ConfigError(f"grid CSV {p} row {i + 2}: hour = {row.get('hour')!r}, expected "
                              f"{i} (hours count from 0 in steps of one)")
        for n in names:
            out[n].append(_intensity(row.get(n), f"grid CSV {p} row {i + 2}, column {n!r}"))
    return out


def _intensity(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0 or x > 5000:
        raise ConfigError(f"{where}: {value!r} is not an intensity in gCO2e/kWh (0 to 5000)")
    return x


Grid = float | list[float]  # fixed, or hourly (cyclic)


def at_hour(grid: Grid, hour: float) -> float:
    if isinstance(grid, list):
        return grid[math.floor(hour) % len(grid)]
    return grid


@dataclass
class SiteGrids:
    """The grids of the sites that have one; a site without one has the run's country's."""

    grids: dict[str, Grid] = field(default_factory=dict)

    @property
    def hourly(self) -> bool:
        return any(isinstance(g, list) for g in self.grids.values())

    def at(self, node_ids: Sequence[str], hour: float) -> dict[str, float]:
        return {n: at_hour(self.grids[n], hour) for n in node_ids if n in self.grids}


def configured_grids(energy: Any, node_ids: Sequence[str]) -> SiteGrids:
    """The ``[energy]`` section's site grids, dealt in the order of site ids, cycling."""
    grids: list[Grid]
    if energy.site_grid_csv:
        grids = list(read_hourly_csv(energy.site_grid_csv).values())
    else:
        grids = [carbon_intensity(c) for c in energy.site_countries] or list(energy.site_g_per_kwh)
    if not grids:
        return SiteGrids()
    return SiteGrids({n: grids[i % len(grids)] for i, n in enumerate(sorted(node_ids))})


def parse_grid(text: str) -> Grid:
    """``fedtune join --grid``: an ISO alpha-3 country, a number of g/kWh, or an hourly CSV
    with ``hour`` and one column."""
    text = text.strip()
    if text.lower().endswith(".csv"):
        columns = read_hourly_csv(text)
        if len(columns) != 1:
            raise ConfigError(f"--grid {text}: a site's CSV has 'hour' and one column of "
                              f"gCO2e/kWh; it has {sorted(columns)}")
        return next(iter(columns.values()))
    try:
        return _intensity(float(text), f"--grid {text}")
    except ValueError:
        return carbon_intensity(text)


def declared_grid(value: Any, site: str) -> Grid | str:
    """A grid a site declared when it joined (JSON: a number or a list of hourly numbers),
    or why it is refused."""
    try:
        if isinstance(value, list) and 0 < len(value) <= MAX_HOURS:
            return [_intensity(v, f"site {site!r} grid") for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _intensity(value, f"site {site!r} grid")
    except ConfigError as exc:
        return str(exc)
    return (f"site {site!r} declared grid = {str(value)[:40]!r}; a grid is a number of "
            f"gCO2e/kWh or a list of 1 to {MAX_HOURS} hourly numbers")


class RunGrids:
    """A run's site grids: the config's, and those real sites declared when they joined
    (``runtime.declared_grids()``; a declaration wins over the config for its site)."""

    def __init__(self, energy: Any, runtime: Any) -> None:
        self.energy, self.runtime = energy, runtime
        self._configured: tuple[int, SiteGrids] | None = None
        self._t0 = time.monotonic()

    @property
    def wall(self) -> bool:
        return bool(self.energy.clock == "wall")

    def now(self) -> float:
        """The run's hour on the wall clock: start_hour + real time since the run started."""
        return float(self.energy.start_hour
                     + (time.monotonic() - self._t0) / self.energy.hour_seconds)

    def wait_for(self, round_: int, selector: Any) -> float:
        """On the wall clock, sleep until the hour the selector chose for ``round_`` (it
        deferred the round to a cleaner hour); the seconds slept."""
        chosen = getattr(selector, "hour_of", lambda _: None)(round_)
        if not self.wall or chosen is None:
            return 0.0
        seconds = max(0.0, float((chosen - self.now()) * self.energy.hour_seconds))
        if seconds:
            log.info("round %d waits %.0f s for cleaner power (hour %.2f)", round_, seconds,
                     chosen)
            time.sleep(seconds)
        return seconds

    def site_grids(self, node_ids: Sequence[str]) -> SiteGrids:
        if not self.energy.site_grids_set:
            configured = SiteGrids()
        elif self._configured is not None and self._configured[0] == len(node_ids):
            configured = self._configured[1]
        else:
            configured = configured_grids(self.energy, node_ids)
            self._configured = (len(node_ids), configured)
        declared: dict[str, Grid] = getattr(self.runtime, "declared_grids", dict)()
        return SiteGrids({**configured.grids, **declared}) if declared else configured

    def at(self, node_ids: list[str], hour: float) -> dict[str, float]:
        """Each site's gCO2e/kWh at ``hour`` of the run (the sites with a grid)."""
        return self.site_grids(node_ids).at(node_ids, hour)

    def hour(self, round_: int, selector: Any) -> float:
        """The hour ``round_`` ran at: the carbon selector's (it may have waited), else
        start_hour + (round - 1) x round_hours."""
        chosen = getattr(selector, "hour_of", lambda _: None)(round_)
        if chosen is not None:
            return float(chosen)
        if self.wall:  # the hour the round is priced at: when it closes
            return self.now()
        return float(self.energy.start_hour + (round_ - 1) * self.energy.round_hours)

    def reprice(self, ledger: list[Any], round_: int, selector: Any) -> list[Any]:
        """The ledger with each site's CO2 from its own grid at the round's hour (sites
        without a grid keep the figure their meter gave, at energy.country's intensity)."""
        nodes = [n.node_id for n in ledger]
        grid = self.site_grids(self.runtime.node_ids).at(nodes, self.hour(round_, selector))
        if not grid:
            return ledger
        return [replace(n, co2_g=n.energy_j * grid[n.node_id] / 3.6e6)
                if n.node_id in grid else n for n in ledger]
