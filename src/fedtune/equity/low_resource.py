"""Low-resource sites: a compute budget, a link speed and a compression setting per site
(``fairness.site_steps``, ``fairness.site_link_mbps``, ``fairness.site_uplink``), so a
small clinic's laptop on a slow line takes part without holding up the round.

A site with a step budget trains at most that many local steps in a round (fewer than the
round's plan asks of the others); a site with its own uplink compresses its update with it
(error feedback per ``compression.error_feedback``) in place of ``compression.uplink``.
Partial work is normalised as FedNova does (Wang et al. 2020): when any site has a budget the
round part turns on the strategy's step normalisation, so a site that took 5 steps is not
outweighed by one that took 50 for the same data, nor does it drag the aggregate toward its
shorter trajectory. The declared link speed prices each site's upload in seconds in the
report (bytes up x 8 / speed), beside its contribution and its steps. With
``fairness.upload_budget_s``, a site whose update would take longer than that on its declared
link (and that has no compression of its own in ``site_uplink``) gets top-k with 8-bit
values sized so that an upper bound on its update's bytes (:func:`upload_bound`: top-k's gap
stream holds at most one byte per kept value plus one per 255 positions) fits the budget
(:func:`fitted_uplinks`); error feedback keeps what it leaves out for later rounds (Stich et
al. 2018, "Sparsified SGD with Memory").

The declarations travel to every site as two byte strings of ``site=value`` pairs in the
instruction's aux tensors (``aux.site_steps``, ``aux.site_uplink``; an instruction's config
strings are capped at 512 characters, which would hold a few dozen sites); each site reads
its own entry (:class:`SiteBudget`, a node hook), so one broadcast instruction serves every
site.

References:
    Wang, Liu, Liang, Joshi & Poor 2020, "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization" (FedNova). Li et al. 2020, "Federated Optimization
    in Heterogeneous Networks" (partial work, FedProx's gamma-inexact solutions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..algorithms.compression import CompressionSpec, keep_count
from ..algorithms.strategy import Strategy
from ..algorithms.transforms import uplink_chain
from ..node.context import FitContext
from ..node.instructions import as_bytes
from ..node.uplink import UplinkTransforms

HEADER_BYTES = 2048  # a result's header, framing and small tensors, beyond the update (a bound)


def upload_bound(spec: str, numel: int, block: int = 256) -> int:
    """An upper bound on the bytes of a result carrying ``numel`` values under ``spec``."""
    s = CompressionSpec.parse(spec, block=block) if spec else CompressionSpec(block=block)
    k = keep_count(numel, s.fraction) if s.sparsify else numel
    index = k + numel // 255 + 1 if s.sparsify == "topk" else 0
    if s.coder in ("fp16", "bf16"):
        values = 2 * k
    elif s.bits:
        values = math.ceil(k * s.bits / 8) + 4 * math.ceil(k / s.block)
    else:
        values = 4 * k
    return HEADER_BYTES + index + values


def fitted_uplinks(link_mbps: dict[str, float], budget_s: float, numel: int, *,
                   given: dict[str, str], default: str, block: int) -> dict[str, str]:
    """The compression each declared link needs to upload within ``budget_s`` (sites whose
    ``default`` upload fits, and sites with an uplink of their own, are left out)."""
    from ..errors import ConfigError

    out = {}
    for site, mbps in sorted(link_mbps.items()):
        budget = int(budget_s * mbps * 1e6 / 8)
        if site in given or upload_bound(default, numel, block) <= budget:
            continue
        # top-k + q8: k gap bytes + numel / 255 fills + k value bytes + 4 per block of scales
        k = math.floor((budget - HEADER_BYTES - numel // 255 - 5) / (2 + 4 / block))
        if k < 1:
            raise ConfigError(f"fairness.site_link_mbps: {site}'s {mbps:g} Mbit/s cannot carry "
                              f"even one value of the update in fairness.upload_budget_s = "
                              f"{budget_s:g} s ({budget} bytes); raise the budget")
        exact = (min(k, numel) - 0.5) / numel  # ceil(exact x numel) keeps k values
        scale = 10 ** (3 - math.floor(math.log10(exact)))  # four significant digits, down
        out[site] = f"topk:{math.floor(exact * scale) / scale:.4g}+q8"
    return out


def encode(entries: dict[str, Any]) -> str:
    """``{"node-3": 5}`` as ``"node-3=5"`` pairs joined by ``,``, sorted by site."""
    return ",".join(f"{site}={value}" for site, value in sorted(entries.items()))


def entry(text: str, node_id: str) -> str | None:
    """This site's value in an :func:`encode` string, or None."""
    for pair in text.split(",") if text else []:
        site, _, value = pair.partition("=")
        if site == node_id:
            return value
    return None


class SiteBudget:
    """A site's own step budget and uplink compression (the node part)."""

    mutable: tuple[str, ...] = ("uplink",)

    def __init__(self, node_id: str, steps: str, uplink: str, *, error_feedback: bool,
                 block: int) -> None:
        budget = entry(steps, node_id)
        self.budget = int(budget) if budget else 0
        own = entry(uplink, node_id)
        self.uplink = UplinkTransforms(uplink_chain(own, error_feedback=error_feedback,
                                                    block=block)) if own else None

    @property
    def compresses(self) -> bool:
        return self.uplink is not None

    def before_fit(self, ctx: FitContext) -> None:
        plan = ctx.plan or ctx.instructions.plan
        if self.budget and plan.num_steps(ctx.num_train) > self.budget:
            ctx.plan = replace(plan, steps=self.budget)

    def after_fit(self, ctx: FitContext) -> None:
        if self.uplink is not None:
            self.uplink.after_fit(ctx)


@dataclass
class ResourcePart:
    """The coordinator's part: tells the sites their budgets, normalises partial work."""

    steps: dict[str, int]
    uplink: dict[str, str]
    link_mbps: dict[str, float]
    fitted: tuple[str, ...] = ()  # sites whose uplink fitted_uplinks chose
    name: str = "resources"

    def adapt(self, strategy: Strategy) -> Strategy:
        return replace(strategy, normalize_by_steps=True) if self.steps else strategy

    def init(self) -> None:
        return None

    def node_config(self, state: None) -> dict[str, str]:
        return {}

    def instruction_aux(self, state: None) -> dict[str, torch.Tensor]:
        # as bytes, not config strings: an instruction's strings are capped at 512
        # characters, which would hold the entries of a few dozen sites
        out = {"site_steps": as_bytes(encode(self.steps)),
               "site_uplink": as_bytes(encode(self.uplink))}
        return {k: v for k, v in out.items() if v.numel()}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: None,
              node_id: str) -> float:
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: None,
                node_id: str) -> Any:
        return update

    def release(self, delta: torch.Tensor, state: None, round_: int) -> torch.Tensor:
        return delta

    def after_round(self, state: None) -> None:
        return None

    def round_metrics(self, state: None) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: None) -> str | None:
        return None

    def summary(self, state: None) -> dict[str, Any]:
        sites = sorted(set(self.steps) | set(self.uplink) | set(self.link_mbps))
        return {"sites": {s: {"steps": self.steps.get(s), "uplink": self.uplink.get(s),
                              "link_mbps": self.link_mbps.get(s),
                              "uplink_fitted": s in self.fitted} for s in sites},
                "normalized_by_steps": bool(self.steps)}
