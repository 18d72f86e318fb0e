"""This process's device and energy meter, as a run's config asks for them.

Both the coordinator (:mod:`fedtune.experiment`) and a site (:mod:`fedtune.runtime.grpc.site`)
set themselves up with these, so a site does not import the coordinator's front door.
"""

from __future__ import annotations

import torch

from .config import RunConfig
from .energy import EnergyMeter, carbon_intensity
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device = {name!r} but no CUDA device is visible; use 'auto' or "
                          "'cpu'")
    return torch.device(name)


def make_meter(cfg: RunConfig) -> tuple[EnergyMeter, float]:
    """The energy meter and the grams of CO2e per joule for the configured country."""
    e = cfg.energy
    meter = EnergyMeter(tdp_watts=e.tdp_watts or None, use_rapl=e.rapl)
    if not e.enabled:
        meter.watts_per_thread, meter.rapl, meter.method = 0.0, [], "disabled"
        meter.code = "disabled"
    return meter, carbon_intensity(e.country) / 3.6e6
