"""The ``[energy]`` section: metering, the grid of the coordinator and of each site, and the
clock of carbon-aware rounds; and its checks across sections."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EnergySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    country: str = "WORLD"
    tdp_watts: float = Field(0.0, ge=0)
    rapl: bool = True
    # simulated sites' own grids, dealt in the order of site ids (energy/grids.py): fixed
    # (a country's intensity or g/kWh) or hourly (the columns of a CSV after its "hour")
    site_countries: list[str] = Field(default_factory=list)
    site_g_per_kwh: list[Annotated[float, Field(ge=0)]] = Field(default_factory=list)
    site_grid_csv: str = ""
    # the carbon clock: a round lasts round_hours (simulated) from start_hour, and a round
    # may wait up to defer_hours (whole hours) for cleaner power (selection = "carbon")
    round_hours: float = Field(1.0, gt=0)
    start_hour: float = Field(0.0, ge=0)
    defer_hours: int = Field(0, ge=0, le=24 * 7)
    # "wall": hours are real time since the run started (hour_seconds long), and a deferred
    # round really waits; "simulated": each round lasts round_hours, the same in every runtime
    clock: Literal["simulated", "wall"] = "simulated"
    hour_seconds: float = Field(3600.0, gt=0)

    @property
    def site_grids_set(self) -> bool:
        return bool(self.site_countries or self.site_g_per_kwh or self.site_grid_csv)


def check_energy(cfg: Any) -> None:
    """Rules across sections (raised as ValueError, shown as one config error line)."""
    e, s = cfg.energy, cfg.strategy
    given = [k for k in ("site_countries", "site_g_per_kwh", "site_grid_csv") if getattr(e, k)]
    if len(given) > 1:
        raise ValueError(f"energy.{given[0]} and energy.{given[1]} both give the sites' grids; "
                         "keep one")
    if e.defer_hours and s.selection != "carbon":
        raise ValueError("energy.defer_hours waits for cleaner power, which strategy.selection "
                         "= \"carbon\" chooses; set it, or energy.defer_hours = 0")
    if s.selection == "carbon" and not s.count and s.participation_floor > s.fraction:
        raise ValueError(f"strategy.participation_floor = {s.participation_floor} cannot "
                         f"hold when a round takes strategy.fraction = {s.fraction} of "
                         "the sites; lower the floor or raise the fraction")


def check_grid_file(cfg: Any) -> None:
    """The hourly grid CSV is read before anything runs: a bad file stops no stored run."""
    if cfg.energy.site_grid_csv:
        from .grids import read_hourly_csv

        read_hourly_csv(cfg.energy.site_grid_csv)


def check_simulated_grids(cfg: Any) -> None:
    """A simulation has no site to declare its grid: carbon selection needs them configured."""
    check_grid_file(cfg)
    if cfg.strategy.selection == "carbon" and not cfg.energy.site_grids_set:
        from ..errors import ConfigError

        raise ConfigError("strategy.selection = \"carbon\" needs the sites' grids: set "
                          "energy.site_countries (e.g. [\"FRA\", \"POL\"]), "
                          "energy.site_g_per_kwh or energy.site_grid_csv (real sites may "
                          "declare their own: fedtune join --grid)")
