"""Energy and carbon metering: RAPL counters when readable, else CPU time x TDP share."""

from .carbon import carbon_intensity
from .meter import EnergyMeter

__all__ = ["EnergyMeter", "carbon_intensity"]
