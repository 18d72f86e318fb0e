"""The ``[privacy]`` section of a run's config, and the rules that tie it to the others.

Client-level differential privacy (DP-FedAvg, McMahan et al. 2018) protects whether a site
took part at all: each site's update is clipped to L2 norm ``clip`` and Gaussian noise of
standard deviation ``noise_multiplier x clip`` is added to the sum of the round's updates,
which is divided by the expected number of sites (a fixed denominator), with every site
weighted equally. ``mode = "central"``: the coordinator (trusted to see single updates)
clips and adds the noise. ``mode = "distributed"``: every site clips its own update and adds
its share of the noise, ``1 / strategy.min_nodes`` of the variance, so that any round the
coordinator applies (at least ``min_nodes`` updates) carries the full noise; this is the
form that composes with secure aggregation.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping"): the clip follows the ``target_quantile`` of the update norms, C <- C exp(-eta
(b - gamma)), where b is the noised fraction of sites whose update was within C; the count's
noise ``clip_count_noise`` (default: expected sites / 20, as the paper) is part of the
privacy cost, and the update noise becomes (z^-2 - (2 sigma_b)^-2)^-1/2 so that the pair
costs what ``noise_multiplier`` alone says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PrivacySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "central", "distributed"] = "off"
    clip: float = Field(1.0, gt=0)  # C: the L2 bound of one site's update (its start if adaptive)
    noise_multiplier: float = Field(1.0, gt=0)  # z: noise std / C on the sum
    adaptive_clip: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_lr: float = Field(0.2, gt=0)
    clip_count_noise: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(None, gt=0)
    accountant: Literal["pld", "rdp"] = "pld"
    secure_rng: bool = True  # false: seeded noise, equal in every runtime, NOT private
    # sample-level DP-SGD inside every site (fedtune.privacy.dp_sgd)
    sample_dp: bool = False
    sample_clip: float = Field(1.0, gt=0)  # per-example gradient L2 bound
    sample_noise_multiplier: float = Field(1.0, gt=0)
    sample_epsilon: float | None = Field(None, gt=0)  # each site calibrates its own noise
    sample_delta: float = Field(1e-5, gt=0, lt=1)


def privacy_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Client-level DP weighs every site equally: ``strategy.weighting`` becomes
    ``"uniform"`` unless the user set it (then :func:`check_privacy` names the conflict)."""
    privacy, strategy = raw.get("privacy", {}), raw.get("strategy", {})
    if not isinstance(privacy, dict) or privacy.get("mode", "off") == "off":
        return raw
    if isinstance(strategy, dict) and "weighting" not in strategy:
        return {**raw, "strategy": {**strategy, "weighting": "uniform"}}
    return raw


def check_privacy(cfg: Any) -> None:  # a RunConfig (not imported: it imports this)
    """Refuse the settings client-level DP cannot account for, each with its fix."""
    p, s = cfg.privacy, cfg.strategy
    if p.mode == "off":
        return
    rules = [
        (s.weighting != "uniform", "strategy.weighting = \"examples\" lets a site's claimed "
         "size scale its update past the clip; set strategy.weighting = \"uniform\""),
        (s.aggregator != "mean", f"strategy.aggregator = {s.aggregator!r} does not bound one "
         "site's influence by the clip; use \"mean\""),
        (s.name in ("scaffold", "fednova"), f"strategy.name = {s.name!r} sends unclipped "
         "control variates or step-normalized updates; use fedavg, fedavgm, fedprox, fedadam, "
         "fedyogi, fedadagrad or diloco"),
        (s.mode == "async", "strategy.mode = \"async\" is not accounted for; use \"sync\" "
         "or \"secagg\""),
        (cfg.server.stragglers == "stale", "server.stragglers = \"stale\" folds updates outside "
         "their round's sample; use \"drop\""),
        (p.adaptive_clip and p.clip_count_noise is not None
         and 2 * p.clip_count_noise <= p.noise_multiplier,
         f"privacy.clip_count_noise = {p.clip_count_noise} must exceed noise_multiplier / 2 = "
         f"{p.noise_multiplier / 2} (Andrew et al. 2021, Theorem 1); raise it"),
    ]
    for broken, why in rules:
        if broken:
            raise ValueError(f"privacy.mode = {p.mode!r}: {why}")


def check_delta(delta: float, population: int) -> None:
    """Refuse a delta that is not below 1 / the number of sites (a ValueError naming both)."""
    if delta >= 1 / population:
        raise ValueError(f"privacy.delta = {delta:g} is not below 1 / {population} sites = "
                         f"{1 / population:g}: a delta that large allows releasing one site's "
                         "data outright; lower privacy.delta")
