"""Each simulated site's grid: ``energy.site_countries`` (ISO alpha-3 codes, CodeCarbon's
intensities) or ``energy.site_g_per_kwh`` (fixed gCO2e/kWh), dealt to the sites in the
order of their ids, cycling. A site's energy is turned into CO2 with its own grid's
intensity, and ``strategy.selection = "carbon"`` reads the same figures."""

from __future__ import annotations

from typing import Any

from .carbon import carbon_intensity


def site_intensities(energy: Any, node_ids: list[str]) -> dict[str, float]:
    """gCO2e per kWh of each site's grid; empty when no site grid is configured (every site
    then has ``energy.country``'s)."""
    grids = [carbon_intensity(c) for c in energy.site_countries] or list(energy.site_g_per_kwh)
    if not grids:
        return {}
    return {node: grids[i % len(grids)] for i, node in enumerate(sorted(node_ids))}
