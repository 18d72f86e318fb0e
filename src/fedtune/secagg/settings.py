"""The ``[secagg]`` section (``strategy.mode = "secagg"``) and the rules that tie secure
aggregation to the rest of a config."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SecAggSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(32, ge=8, le=62)  # the ring Z_{2^bits}
    clip_range: float = Field(1.0, gt=0)  # B: every coordinate is clamped to [-B, B]
    neighbours: int = Field(0, ge=0)  # 0: min(n - 1, 4 ceil(log2 n)), even
    threshold: float = Field(0.5, gt=0, lt=1)  # t = floor(threshold k) + 1 of k neighbours
    # for tests and benchmarks: this fraction (rounded up) of the sites that shared their
    # keys, seeded, drop before sending their masked input, so that the recovery path runs
    simulated_dropout: float = Field(0.0, ge=0, lt=1)


def secagg_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Secure aggregation sums updates with equal weights: ``strategy.weighting`` becomes
    ``"uniform"`` unless the user set it."""
    strategy = raw.get("strategy", {})
    if isinstance(strategy, dict) and strategy.get("mode") == "secagg" \
            and "weighting" not in strategy:
        return {**raw, "strategy": {**strategy, "weighting": "uniform"}}
    return raw


def check_secagg(cfg: Any) -> None:  # a RunConfig (not imported: it imports this)
    """Refuse what secure aggregation cannot do, each with its fix."""
    s, p = cfg.strategy, cfg.privacy
    if s.mode != "secagg":
        return
    rules = [
        (s.aggregator != "mean", f"strategy.aggregator = {s.aggregator!r} needs every single "
         "update, which secure aggregation hides; use \"mean\""),
        (s.name in ("scaffold", "fednova"), f"strategy.name = {s.name!r} sends control "
         "variates or step counts beside the update; use fedavg, fedavgm, fedprox, fedadam, "
         "fedyogi, fedadagrad or diloco"),
        (s.weighting != "uniform", "strategy.weighting = \"examples\": the sum hides each "
         "site's weight; set strategy.weighting = \"uniform\""),
        (bool(cfg.compression.uplink), "compression.uplink: masked updates are uniform in the "
         "ring and do not compress; leave it empty"),
        (p.mode == "central", "privacy.mode = \"central\" clips single updates at the "
         "coordinator, which never sees them; use privacy.mode = \"distributed\""),
        (p.mode != "off" and p.adaptive_clip, "privacy.adaptive_clip needs each site's clip "
         "bit, which secure aggregation does not sum yet; set privacy.adaptive_clip = false"),
        (cfg.server.stragglers == "stale", "server.stragglers = \"stale\": a late masked "
         "update cannot be unmasked; use \"drop\""),
    ]
    for broken, why in rules:
        if broken:
            raise ValueError(f"strategy.mode = \"secagg\": {why}")
