"""Fair aggregation: q-FFL and agnostic federated learning, as a round part and a node hook.

Both weigh a site by how badly the global model serves it: each site reports F_k(w_t), the
loss of the model it was sent on its own training rows, before it trains
(:class:`StartLoss`, ``aux.start_loss``), and the round part (:class:`FairAggregation`)
changes the update's weight on its way into the streaming weighted mean and rescales the
finished mean, so the fold keeps one accumulator whatever K is.

q-FFL (q-FedAvg, Li et al. 2020, Algorithm 3) minimises sum_k p_k F_k^{q+1} / (q + 1). With
Delta_k = L (w_t - w_k) and h_k = q F_k^{q-1} ||Delta_k||^2 + L F_k^q, the step is
w_{t+1} = w_t - sum_k Delta_k F_k^q / sum_k h_k. In fedtune's terms (an update is
u_k = w_k - w_t, added to the model) the direction is

    sum_k w_k F_k^q L u_k / sum_k w_k h_k

(w_k the fold's weight). The part gives update k the weight w_k F_k^q (the mean is then
sum_k w_k F_k^q u_k / sum_k w_k F_k^q) and multiplies the mean by L sum_k w_k F_k^q /
sum_k w_k h_k. With q = 0 that factor is 1 and q-FFL is FedAvg: the paper's stated special
case, and a test.

Agnostic FL (Mohri et al. 2019, "Agnostic Federated Learning", Stochastic-AFL) minimises
max over mixtures lambda of sum_k lambda_k F_k(w): the model step weighs site k by
lambda_k, and lambda takes a projected gradient-ascent step lambda <- Proj_simplex(lambda +
gamma g) with g_k = F_k (N / m) for the m sites of the round (an unbiased estimate of the
loss vector), 0 for the others. lambda lives in the part's state, so a resumed run continues
with it.

References:
    Li, Sanjabi, Beirami & Smith 2020, "Fair Resource Allocation in Federated Learning"
    (ICLR; q-FFL, q-FedAvg). Mohri, Sivek & Suresh 2019, "Agnostic Federated Learning"
    (ICML). Duchi, Shalev-Shwartz, Singer & Chandra 2008, "Efficient Projections onto the
    l1-Ball for Learning in High Dimensions" (the projection onto the simplex).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.strategy import Strategy, StrategyParams, _sgd_strategy
from ..node.context import FitContext
from ..seeds import derived_seed
from .settings import FairnessSection

log = logging.getLogger("fedtune")
Update = torch.Tensor | Callable[[], torch.Tensor]
LOSS_CAP = 1e4  # a reported loss is clipped to [LOSS_FLOOR, LOSS_CAP]: no site buys the round
LOSS_FLOOR = 1e-8  # F = 0 would give q < 1 an infinite F^(q-1)


def qffl(p: StrategyParams) -> Strategy:
    """q-FFL: plain server SGD, lr 1; the reweighting is :class:`FairAggregation`'s."""
    return _sgd_strategy("qffl", p, lr=1.0, momentum=0.0)


def afl(p: StrategyParams) -> Strategy:
    """Agnostic FL: plain server SGD, lr 1; the mixture weights are :class:`FairAggregation`'s."""
    return _sgd_strategy("afl", p, lr=1.0, momentum=0.0)


# -- the pure parts ----------------------------------------------------------------------
def qffl_direction(updates: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor, *,
                   q: float, lipschitz: float) -> torch.Tensor:
    """q-FedAvg's direction from ``[K, D]`` updates (local minus global), the losses F_k of
    the global model at the sites and the fold's weights: what the round part computes
    streaming, in one expression."""
    f = losses.double().clamp(LOSS_FLOOR, LOSS_CAP)
    w = weights.double()
    fq = f ** q
    h = q * f ** (q - 1) * lipschitz ** 2 * updates.double().pow(2).sum(1) + lipschitz * fq
    coef = w * fq * lipschitz / (w * h).sum()
    return (coef[:, None] * updates.double()).sum(0).to(updates.dtype)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of ``v`` onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0)
    ks = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - (css - 1) / ks > 0).nonzero().max())
    theta = (css[rho] - 1) / (rho + 1)
    return (v - theta).clamp_min(0)


def afl_step(lam: torch.Tensor, losses: torch.Tensor, *, lr: float) -> torch.Tensor:
    """One Stochastic-AFL ascent step on the mixture: ``losses`` is NaN where a site did not
    report; the reported ones are scaled by N / m, so the step is unbiased for the full loss
    vector under uniform sampling."""
    seen = ~torch.isnan(losses)
    m = int(seen.sum())
    if m == 0:
        return lam
    g = torch.where(seen, losses, torch.zeros_like(losses)) * (lam.numel() / m)
    return project_simplex(lam + lr * g)


def reported_loss(aux: dict[str, torch.Tensor]) -> float | None:
    """A site's ``aux.start_loss`` clipped to [LOSS_FLOOR, LOSS_CAP], or None if it sent
    none or a non-finite one."""
    t = aux.get("start_loss")
    if t is None or t.numel() != 1 or not math.isfinite(float(t)):
        return None
    return min(max(float(t), LOSS_FLOOR), LOSS_CAP)


# -- the node's part ---------------------------------------------------------------------
class StartLoss:
    """Before training: the loss of the global model on the first ``rows`` of a seeded
    shuffle of the site's training rows (the same rows every round), sent as
    ``aux.start_loss``."""

    mutable: tuple[str, ...] = ()

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def before_fit(self, ctx: FitContext) -> None:
        gen = torch.Generator().manual_seed(derived_seed(ctx.node_seed, ctx.node_id, "loss"))
        rows = torch.randperm(ctx.num_train, generator=gen)[: self.rows]
        with torch.no_grad():
            loss = ctx.evaluate_rows(rows)["loss"]
        ctx.out_aux["start_loss"] = torch.tensor([loss], dtype=torch.float32)

    def after_fit(self, ctx: FitContext) -> None:
        return None


# -- the coordinator's part --------------------------------------------------------------
@dataclass
class FairState:
    """AFL's mixture over the sites (empty for q-FFL), and this round's losses (reset after
    every round)."""

    lam: torch.Tensor
    losses: torch.Tensor


@dataclass
class FairAggregation:
    """The coordinator's part of q-FFL (``kind = "qffl"``) or agnostic FL (``"afl"``)."""

    kind: str
    settings: FairnessSection
    sites: list[str]
    lipschitz: float
    name: str = "fairness"
    # this round's terms per site: w F^q, w L F^q + q L^2 w F^(q-1) |u|^2, q L^2 w F^(q-1);
    # summed in the order of the sites' names on release, so every runtime (whatever order
    # replies arrive in) takes the same step
    _num: dict[str, float] = field(default_factory=dict, repr=False)
    _den: dict[str, float] = field(default_factory=dict, repr=False)
    _coef: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.sites)}

    def adapt(self, strategy: Strategy) -> Strategy:
        return strategy

    def init(self) -> FairState:
        n = len(self.sites) if self.kind == "afl" else 0
        lam = torch.full((n,), 1.0 / n, dtype=torch.float64) if n else torch.zeros(0)
        return FairState(lam=lam, losses=torch.full((n,), math.nan, dtype=torch.float64))

    def node_config(self, state: FairState) -> dict[str, int]:
        return {"fair_loss_rows": self.settings.loss_rows}

    def instruction_aux(self, state: FairState) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: FairState,
              node_id: str) -> float:
        """The update's weight in the fold: w_k F_k^q (q-FFL) or lambda_k (AFL)."""
        f = reported_loss(aux)
        if f is None:
            log.warning("site %s sent no finite start_loss: it weighs as a site the model "
                        "serves perfectly", node_id)
            f = LOSS_FLOOR
        if self.kind == "afl":
            i = self.index.get(node_id)
            if i is None:
                return 1e-12
            state.losses[i] = f
            return max(float(state.lam[i]), 1e-12)
        q, lip = self.settings.q, self.lipschitz
        fq = f ** q
        self._num[node_id] = weight * fq
        self._den[node_id] = weight * lip * fq
        self._coef[node_id] = q * lip ** 2 * weight * f ** (q - 1)
        return float(weight * fq)

    def receive(self, update: Update, aux: dict[str, torch.Tensor], state: FairState,
                node_id: str) -> Update:
        """q-FFL: the update's squared norm into sum_k w_k h_k (when it is folded)."""
        coef = self._coef.get(node_id, 0.0)
        if coef == 0.0:
            return update

        def counted(u: torch.Tensor) -> torch.Tensor:
            self._den[node_id] += coef * float(u.double().pow(2).sum())
            return u

        if isinstance(update, torch.Tensor):
            return counted(update)
        return lambda: counted(update())

    def release(self, delta: torch.Tensor, state: FairState, round_: int) -> torch.Tensor:
        if self.kind == "afl":
            state.lam = afl_step(state.lam, state.losses, lr=self.settings.afl_lr)
            return delta
        num = sum(self._num[n] for n in sorted(self._num))
        den = sum(self._den[n] for n in sorted(self._den))
        if den <= 0:
            return delta
        return delta * (self.lipschitz * num / den)

    def after_round(self, state: FairState) -> None:
        state.losses.fill_(math.nan)
        for terms in (self._num, self._den, self._coef):
            terms.clear()

    def round_metrics(self, state: FairState) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: FairState) -> str | None:
        return None

    def summary(self, state: FairState) -> dict[str, Any]:
        if self.kind == "qffl":
            return {"method": "qffl", "q": self.settings.q, "lipschitz": self.lipschitz}
        lam = {s: float(state.lam[i]) for i, s in enumerate(self.sites)}
        return {"method": "afl", "afl_lr": self.settings.afl_lr, "lambda": lam,
                "lambda_max_site": max(lam, key=lam.__getitem__) if lam else None}


def fair_aggregation_part(cfg: Any, runtime: Any) -> FairAggregation:
    """The part for ``strategy.name`` (qffl or afl): AFL's mixture spans the sites known when
    the run starts, so it needs a runtime that lists them."""
    from ..errors import ConfigError

    kind = cfg.strategy.name
    if kind == "afl" and runtime.capabilities.nodes_join:
        raise ConfigError("strategy.name = \"afl\" keeps a mixture weight per site and needs "
                          "every site known when the run starts (fedtune run: simulation or "
                          "Ray); use strategy.name = \"qffl\" with fedtune serve")
    s = cfg.fairness
    return FairAggregation(kind, s, sorted(runtime.node_ids),
                           lipschitz=s.lipschitz or 1.0 / cfg.local.lr)
