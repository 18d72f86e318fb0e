"""GPU energy through NVML: real counters when an NVIDIA driver is present (skipped with the
library's own reason otherwise), and a clear record of why a GPU was not metered."""

from __future__ import annotations

import pytest
import torch

from fedtune.energy import EnergyMeter
from fedtune.energy.nvml import NvmlEnergy

NVML, WHY_NOT = NvmlEnergy.open([0])


@pytest.mark.skipif(NVML is None or not torch.cuda.is_available(),
                    reason=f"no NVIDIA GPU to meter here ({WHY_NOT})")
def test_nvml_counts_the_energy_of_gpu_work() -> None:
    meter = EnergyMeter(gpus=[0])
    assert meter.nvml is not None and meter.code.endswith("+nvml")
    token = meter.start()
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):
        x = torch.tanh(x @ x)
    torch.cuda.synchronize()
    assert meter.stop(token, cpu_s=0.0) > 1.0  # 200 products of 4096^2: well above a joule


@pytest.mark.skipif(NVML is not None, reason="an NVIDIA driver is present: nothing to explain")
def test_a_gpu_run_without_nvml_says_why_its_gpu_is_not_metered() -> None:
    assert "NVML" in WHY_NOT or "nvidia-ml-py" in WHY_NOT
    meter = EnergyMeter(gpus=[0])
    assert meter.nvml is None
    assert "GPU not metered" in meter.method and WHY_NOT in meter.method
    assert "+nvml" not in meter.code
    token = meter.start()
    assert meter.stop(token, cpu_s=2.0) == pytest.approx(2.0 * meter.watts_per_thread) \
        or meter.rapl


def test_joules_between_two_reads() -> None:
    assert NvmlEnergy.joules([1000, 5000], [3500, 5000]) == pytest.approx(2.5)
