"""Parts of the coordinator's round that keep state and act at its fixed points.

A round part sees the strategy once (:meth:`RoundPart.adapt`), adds keys to what every site
is told (``node_config``) and tensors to every instruction (``instruction_aux``), sets each
valid update's weight in the fold (``weigh``: fair aggregation's) and sees the update on its
way in (``receive``), changes the finished aggregate
(``release``), closes the round (``after_round``), adds figures to the round's record
(``round_metrics``), may stop the run before a round (``stop_reason``) and reports at the
end (``summary``). Its state is a part of the coordinator's state
(:mod:`fedtune.coordinator_state`), so it is in every snapshot and a resumed run continues
with it. Client-level differential privacy is one
(:class:`fedtune.privacy.client_dp.ClientDP`), the report of sample-level DP another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from .algorithms.strategy import Strategy
from .config import RunConfig
from .errors import ConfigError
from .runtime.base import Runtime

Update = torch.Tensor | Callable[[], torch.Tensor]


class RoundPart(Protocol):
    name: str

    def adapt(self, strategy: Strategy) -> Strategy: ...
    def init(self) -> Any: ...
    def node_config(self, state: Any) -> Mapping[str, float | bool | str | int]: ...
    def instruction_aux(self, state: Any) -> dict[str, torch.Tensor]: ...
    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: Any,
              node_id: str) -> float: ...
    def receive(self, update: Update, aux: dict[str, torch.Tensor], state: Any,
                node_id: str) -> Update: ...
    def release(self, delta: torch.Tensor, state: Any, round_: int) -> torch.Tensor: ...
    def after_round(self, state: Any) -> None: ...
    def round_metrics(self, state: Any) -> dict[str, float]: ...
    def stop_reason(self, round_: int, state: Any) -> str | None: ...
    def summary(self, state: Any) -> dict[str, Any]: ...


def population(runtime: Runtime, what: str) -> int:
    """How many sites can take part: those registered (simulations), or those holding a
    token (gRPC, where sites join over time)."""
    if not runtime.capabilities.nodes_join:
        return len(runtime.node_ids)
    known: int | None = getattr(runtime, "known_sites", None)
    if known is None:
        raise ConfigError(f"{what} needs to know how many sites may join: list every site's "
                          "token in server.tokens")
    return known


def site_names(runtime: Runtime, what: str) -> list[str]:
    """Every site that can take part, by name: those registered (simulations), or those
    holding a token (gRPC)."""
    if not runtime.capabilities.nodes_join:
        return sorted(runtime.node_ids)
    tokens = getattr(runtime, "tokens", None)
    if not isinstance(tokens, dict):
        raise ConfigError(f"{what} keeps a figure per site and needs every site's name: list "
                          "every site's token in server.tokens")
    return sorted(tokens)


def round_parts(cfg: RunConfig, runtime: Runtime, bench: Any,
                params: Callable[[], torch.Tensor] | None = None) -> list[RoundPart]:
    """The round parts a config asks for (``bench``: the coordinator's model; ``params``:
    the global parameters, for parts that evaluate sub-models of the round)."""
    from .personal.round_part import personalization_part

    parts: list[RoundPart] = []
    personal = personalization_part(cfg, bench)
    if personal is not None:
        parts.append(personal)
    if cfg.personalization.method == "fedex":
        from .personal.fedex import FedExTuner

        parts.append(FedExTuner(cfg.personalization))
    if cfg.attack.kind != "none":
        from .attack.round_part import AttackPart
        from .personal.label_prior import head_bias

        ids = list(runtime.node_ids)  # over gRPC: the sites that hold tokens, or the named
        if runtime.capabilities.nodes_join:
            tokens = getattr(runtime, "tokens", None)
            ids = sorted(tokens) if isinstance(tokens, dict) else list(cfg.attack.sites)
        parts.append(AttackPart(cfg, ids, classes=head_bias(bench.flat.module).numel()))
    if cfg.strategy.name in ("qffl", "afl"):
        from .equity.fair_aggregation import fair_aggregation_part

        parts.append(fair_aggregation_part(cfg, runtime))
    if cfg.privacy.mode != "off":
        from .privacy.accountant import sampling_for
        from .privacy.client_dp import ClientDP

        s = cfg.strategy
        sampling = sampling_for(s.selection, population=population(runtime, "privacy.mode"),
                                fraction=s.fraction, count=s.count, min_nodes=s.min_nodes)
        try:
            parts.append(ClientDP(cfg.privacy, sampling, min_nodes=s.min_nodes,
                                  seed=cfg.run.seed, rounds=cfg.run.rounds))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.privacy.sample_dp:
        from .privacy.sample_level import SampleLevelReport

        parts.append(SampleLevelReport(cfg.privacy, cfg.run.rounds))
    if cfg.fairness.audit and params is not None:
        from .equity.bias_part import bias_part

        parts.append(bias_part(cfg, runtime, bench, params))
    f = cfg.fairness
    if f.site_steps or f.site_uplink or f.site_link_mbps:
        from .equity.low_resource import ResourcePart, fitted_uplinks

        known = set(site_names(runtime, "fairness.site_*"))
        for key in ("site_steps", "site_uplink", "site_link_mbps"):
            unknown = sorted(set(getattr(f, key)) - known)
            if unknown:
                raise ConfigError(f"fairness.{key} names {unknown[0]!r}, which is not a site; "
                                  f"sites: {', '.join(sorted(known)[:5])}")
        fitted = fitted_uplinks(f.site_link_mbps, f.upload_budget_s, bench.flat.spec.numel,
                                given=f.site_uplink, default=cfg.compression.uplink,
                                block=cfg.compression.block) if f.upload_budget_s else {}
        parts.append(ResourcePart(f.site_steps, {**f.site_uplink, **fitted}, f.site_link_mbps,
                                  tuple(fitted)))
    if cfg.screening.enabled:
        from .equity.screening_part import ScreeningPart

        parts.append(ScreeningPart(cfg.screening, site_names(runtime, "screening")))
    if cfg.fairness.contribution != "off" and params is not None:  # last: sees the final weights
        from .equity.contribution_part import contribution_part

        parts.append(contribution_part(cfg, site_names(runtime, "fairness.contribution"),
                                       bench, params))
    return parts
