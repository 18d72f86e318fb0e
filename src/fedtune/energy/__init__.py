"""Energy and carbon: meters (RAPL, NVML, CPU time x TDP share), grid intensity, and the
cost planner (``fedtune plan``)."""

from .carbon import carbon_intensity
from .meter import EnergyMeter

__all__ = ["EnergyMeter", "carbon_intensity"]
