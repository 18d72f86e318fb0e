"""GPU energy through NVML (``nvidia-ml-py``): the driver's total-energy counter of each GPU,
in millijoules since the driver loaded (``nvmlDeviceGetTotalEnergyConsumption``; Volta and
newer). Two reads around a piece of work give its joules, as RAPL does for the CPU package.
"""

from __future__ import annotations

from typing import Any


class NvmlEnergy:
    """The energy counters of the GPUs at ``indices``."""

    def __init__(self, nvml: Any, handles: list[Any], names: list[str]) -> None:
        self.nvml, self.handles, self.names = nvml, handles, names

    @classmethod
    def open(cls, indices: list[int]) -> tuple[NvmlEnergy | None, str]:
        """The counters, or None and why (no library, no driver, a GPU without the counter)."""
        try:
            import pynvml
        except ImportError:
            return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            names = [str(pynvml.nvmlDeviceGetName(h)) for h in handles]
            for h in handles:  # raises NVMLError_NotSupported before Volta
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except pynvml.NVMLError as exc:
            return None, f"NVML: {exc}"
        return cls(pynvml, handles, names), ""

    def read(self) -> list[int]:
        return [int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]

    @staticmethod
    def joules(before: list[int], after: list[int]) -> float:
        """Joules between two reads (the counter is 64-bit: it does not wrap in practice)."""
        return sum(max(0, a - b) for a, b in zip(after, before, strict=True)) / 1000.0
