"""This process's device and energy meter, as a run's config asks for them.

Both the coordinator (:mod:`fedtune.experiment`) and a site (:mod:`fedtune.runtime.grpc.site`)
set themselves up with these, so a site does not import the coordinator's front door.
"""

from __future__ import annotations

from typing import Any

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


def gpu_indices(device: torch.device | str) -> list[int]:
    """The CUDA devices a run on ``device`` uses (for NVML), none on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def energy_meter(energy: dict[str, Any], device: torch.device | str = "cpu") -> EnergyMeter:
    """The meter an ``[energy]`` section (as a dict) asks for, with NVML on a GPU."""
    if not energy["enabled"]:
        meter = EnergyMeter(tdp_watts=1.0, use_rapl=False)
        meter.watts_per_thread, meter.method, meter.code = 0.0, "disabled", "disabled"
        return meter
    return EnergyMeter(tdp_watts=energy["tdp_watts"] or None, use_rapl=energy["rapl"],
                       gpus=gpu_indices(device))


def make_meter(cfg: RunConfig, device: torch.device | str = "cpu") -> tuple[EnergyMeter, float]:
    """The energy meter and the grams of CO2e per joule for the configured country."""
    return energy_meter(cfg.energy.model_dump(), device), carbon_intensity(cfg.energy.country) / 3.6e6
