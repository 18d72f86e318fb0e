"""Grid carbon intensity (gCO2e per kWh) by country, from CodeCarbon's maintained data.

CodeCarbon ships ``global_energy_mix.json`` (Our World in Data / Ember figures per ISO 3166
alpha-3 country code). We read the file directly instead of starting CodeCarbon's tracker:
the tracker polls in a thread and costs far more than the <2 % metering budget. ``WORLD`` is
the generation-weighted mean over all countries in that file.
"""

from __future__ import annotations

import json
from functools import cache

from ..errors import ConfigError
from .codecarbon_data import codecarbon_file


@cache
def _energy_mix() -> dict[str, dict[str, float]]:
    path = codecarbon_file("data/private_infra/global_energy_mix.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def carbon_intensity(country: str) -> float:
    """gCO2e per kWh of electricity in ``country`` (ISO alpha-3, e.g. "FRA"), or "WORLD"."""
    mix = _energy_mix()
    code = country.upper()
    if code == "WORLD":
        total = sum(v.get("total_TWh", 0.0) for v in mix.values())
        return sum(v["carbon_intensity"] * v.get("total_TWh", 0.0) for v in mix.values()) / total
    if code not in mix:
        raise ConfigError(f"energy.country = {country!r} is not in CodeCarbon's energy mix; "
                          "use an ISO 3166 alpha-3 code such as 'USA', 'FRA', 'DEU' or 'WORLD'")
    return float(mix[code]["carbon_intensity"])
