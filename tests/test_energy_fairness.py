"""Energy metering, carbon intensity and fairness summaries."""

from __future__ import annotations

import math

import pytest

from fedtune.algorithms.fairness import fairness_summary
from fedtune.energy import EnergyMeter, carbon_intensity
from fedtune.energy.meter import lookup_tdp
from fedtune.errors import ConfigError
from fedtune.experiment import run

from .conftest import small_config


def test_fairness_by_hand():
    f = fairness_summary([1.0, 0.5, 0.5, 0.0] + [1.0] * 6)
    assert f.mean == pytest.approx(0.8)
    assert f.worst == 0.0 and f.bottom10_mean == 0.0
    assert f.std == pytest.approx(math.sqrt((0.04 * 7 + 0.09 * 2 + 0.64) / 10))
    assert f.jain_index == pytest.approx(8.0**2 / (10 * 7.5))
    equal = fairness_summary([0.7] * 5)
    assert equal.jain_index == pytest.approx(1.0) and equal.std == 0.0
    assert math.isnan(fairness_summary([]).mean)


def test_carbon_intensity_from_codecarbon_data():
    assert 20 < carbon_intensity("FRA") < carbon_intensity("WORLD") < carbon_intensity("IND")
    assert carbon_intensity("fra") == carbon_intensity("FRA")
    with pytest.raises(ConfigError, match="alpha-3"):
        carbon_intensity("Atlantis")


def test_tdp_table_lookup():
    assert lookup_tdp("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz") == 150.0
    assert lookup_tdp("Imaginary CPU 9000") is None


def test_meter_estimate_and_method():
    meter = EnergyMeter(tdp_watts=64.0, use_rapl=False)
    assert meter.method.startswith("tdp-estimate")
    joules = meter.stop(meter.start(), cpu_s=2.0)
    assert joules == pytest.approx(2.0 * meter.watts_per_thread)


def test_run_energy_and_co2_follow_the_country():
    fra = run(small_config("energy.country=\"FRA\"", "energy.tdp_watts=100"), store=False)
    pol = run(small_config("energy.country=\"POL\"", "energy.tdp_watts=100"), store=False)
    assert fra.total_energy_j > 0
    ratio = carbon_intensity("POL") / carbon_intensity("FRA")
    # same work, different grid: CO2 per joule scales with the grid's intensity
    assert (pol.total_co2_g / pol.total_energy_j) == pytest.approx(
        ratio * fra.total_co2_g / fra.total_energy_j, rel=2e-3)  # 4 significant digits
    off = run(small_config("energy.enabled=false"), store=False)
    assert off.total_energy_j == 0 and off.energy_method == "disabled"
