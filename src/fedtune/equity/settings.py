"""The ``[fairness]`` section (fair aggregation, contribution scores, the bias audit) and the
``[screening]`` section (outlier updates and reputations).

=========================  ==================================================================
``q``                      q-FFL's fairness exponent (``strategy.name = "qffl"``): 0 is FedAvg;
                           larger q weighs the sites the model serves worst more
``lipschitz``              q-FFL's Lipschitz estimate L of the loss gradient; it damps the step
                           by 1 / (1 + q L |u|^2 / F). 0: 1 / local.lr, as Li et al. 2020 set
                           it, which with fedtune's local epochs of momentum SGD shrank the
                           step about 20x (README, fairness)
``afl_lr``                 agnostic FL's step on the mixture weights lambda (``strategy.name =
                           "afl"``)
``loss_rows``              rows of its training data a site evaluates the global model on for
                           the loss both strategies weigh by (the first rows of a seeded shuffle)
``contribution``           per-site contribution scores each round: ``"off"``, ``"gtg"``
                           (GTG-Shapley) or ``"loo"`` (leave-one-out)
``shapley_permutations``   GTG-Shapley's most permutations per round (it stops earlier once the
                           estimates settle)
``truncation``             GTG-Shapley's truncation, in points: stop a permutation once
                           the utility is within this much of the full coalition's
``audit``                  the hidden-bias audit (in the summary, and every ``audit_every``
                           rounds)
``audit_every``            rounds between audits (0: the final model only); a served run's
                           audit is one evaluation exchange with every training site
``margin_pts``             a site, class or group is flagged when its accuracy is more than this
                           many points below the mean
``site_steps``             a compute budget per site: ``{"node-3" = 5}`` trains node-3 at most
                           5 local steps a round (partial work normalised as FedNova does)
``site_uplink``            a compression setting per site, in place of compression.uplink
``site_link_mbps``         a link speed per site: its upload time in the report
``upload_budget_s``        seconds an upload may take on its site's declared link: a site that
                           would take longer (and has no site_uplink) gets top-k + q8 that fits
``group_feature``          the index of the input feature that holds a group attribute (-1:
                           none); its values are the groups (low / high around the median
                           when it has more than 10)
=========================  ==================================================================

The rules across sections keep fair aggregation to what its weights mean: a synchronous
round folded by the weighted mean, without client-level DP (whose sensitivity assumes every
update weighs the same) or secure aggregation (which hides the single losses' updates).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FAIR_STRATEGIES = ("qffl", "afl")


class FairnessSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    q: float = Field(1.0, ge=0, le=50)
    lipschitz: float = Field(0.01, ge=0, allow_inf_nan=False)
    afl_lr: float = Field(0.1, gt=0, allow_inf_nan=False)
    loss_rows: int = Field(1024, ge=1)
    contribution: Literal["off", "gtg", "loo"] = "off"
    shapley_permutations: int = Field(50, ge=1)
    truncation: float = Field(0.1, ge=0)  # points of accuracy
    audit: bool = False
    audit_every: int = Field(1, ge=0)
    margin_pts: float = Field(10.0, ge=0)
    group_feature: int = Field(-1, ge=-1)
    # low-resource sites (fedtune.equity.low_resource): site -> steps, compression, Mbps
    site_steps: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    site_uplink: dict[str, str] = Field(default_factory=dict)
    site_link_mbps: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict)
    upload_budget_s: float = Field(0.0, ge=0, allow_inf_nan=False)  # 0: no compression chosen

    @field_validator("site_uplink")
    @classmethod
    def _uplinks(cls, v: dict[str, str]) -> dict[str, str]:
        from ..algorithms.compression import CompressionSpec

        for spec in v.values():
            CompressionSpec.parse(spec)
        return v


class ScreeningSection(BaseModel):
    """``[screening]``: drop outlier updates before they are aggregated (with the reason
    logged) and keep a reputation per site across rounds (:mod:`fedtune.algorithms.screening`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    norm_mads: float = Field(3.0, gt=0)  # robust std above the round's median norm
    cosine_min: float = Field(0.0, ge=-1, le=1)  # to the round's median update
    min_norm_share: float = Field(0.05, ge=0, lt=1)  # of the median norm: below, a free rider
    decay: float = Field(0.9, gt=0, le=1)  # of a site's counts per round
    reputation_min: float = Field(0.3, ge=0, lt=1)  # below it a site's updates are left out
    weigh_by_reputation: bool = True


def check_equity(cfg: Any) -> None:
    """Rules across sections (cfg: the RunConfig) for robust aggregation, simulated attacks
    and fair aggregation."""
    from ..algorithms.robust_check import check_robust
    from ..attack.settings import check_attack

    check_robust(cfg)
    check_attack(cfg)
    s, f = cfg.strategy, cfg.fairness
    if cfg.screening.enabled and (cfg.privacy.mode != "off" or s.mode != "sync"
                                  or s.name in FAIR_STRATEGIES or s.name == "fednova"):
        raise ValueError("screening.enabled needs a synchronous round (strategy.mode = "
                         "\"sync\"; secure aggregation hides single updates) without "
                         "client-level DP, q-FFL, AFL or FedNova, whose weights it would "
                         "change; set screening.enabled = false or change those")
    if f.contribution != "off" and (cfg.privacy.mode != "off" or s.mode == "secagg"):
        raise ValueError(f"fairness.contribution = \"{f.contribution}\" scores single sites' "
                         "updates, which secure aggregation hides and client-level DP does not "
                         "cover; set fairness.contribution = \"off\" for private runs")
    if f.upload_budget_s and not f.site_link_mbps:
        raise ValueError("fairness.upload_budget_s sizes uploads to the sites' declared links; "
                         "declare them in fairness.site_link_mbps (site -> Mbit/s)")
    if (f.site_uplink or f.site_steps or f.upload_budget_s) and s.mode == "secagg":
        raise ValueError("fairness.site_uplink and fairness.site_steps change single sites' "
                         "updates, which secure aggregation sums masked; leave them empty")
    if s.name not in FAIR_STRATEGIES:
        return
    if s.mode != "sync":
        raise ValueError(f"strategy.name = \"{s.name}\" weighs a synchronous round's updates by "
                         f"the sites' losses; strategy.mode is \"{s.mode}\": set it to \"sync\"")
    if s.aggregator != "mean":
        raise ValueError(f"strategy.name = \"{s.name}\" reweighs the mean; strategy.aggregator "
                         f"is \"{s.aggregator}\": set it to \"mean\"")
    if cfg.privacy.mode != "off":
        raise ValueError(f"strategy.name = \"{s.name}\" gives sites unequal weights, which "
                         "client-level DP's sensitivity does not allow; set privacy.mode = "
                         "\"off\" or use fedavg")
