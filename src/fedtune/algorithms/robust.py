"""Byzantine-robust aggregation rules: pure functions on a ``[K, D]`` block of updates.

Each takes the stacked updates and their weights (the round's example counts) and returns
one ``[D]`` direction; none keeps state, so each is the same in every runtime and can be
checked by hand. All of them need every update at once (they rank or compare rows), so none
works with the streaming sum or under secure aggregation, where the coordinator only sees the
sum. How many attackers each tolerates, with K updates of which f are Byzantine:

=======================  ===================================================================
``multi_krum``           f with 2f + 2 < K (Blanchard et al. 2017, Proposition 1); m = 1
                         is Krum
``bulyan``               f with 4f + 3 <= K (El Mhamdi et al. 2018)
``geometric_median``     any fraction below 1/2 of the total weight (the breakdown point of
                         the geometric median; Pillutla et al. 2022)
``centered_clipping``    a small fraction; each update moves the centre by at most ``radius``
                         per iteration, so f attackers move it by at most f/K x radius
                         (Karimireddy et al. 2021)
``norm_bounded_mean``    no Byzantine guarantee: bounds what one site can add (a scaled or
                         boosted update, a backdoor's model replacement; Sun et al. 2019)
=======================  ===================================================================

Pairwise distances come from one matrix product of the centred rows (``g_ii + g_jj - 2 g_ij``)
and the Weiszfeld iterations run on that ``[K, K]`` Gram matrix (the iterate is a combination
of the rows), so a round of 100 updates of 1 M parameters costs one matrix product and a
weighted sum, not K^2 vector differences or one pass over the block per iteration. Written here: the
libraries that implement these rules (e.g. Flower's strategies) own the round loop, while
these are parts of fedtune's.

References:
    Blanchard, El Mhamdi, Guerraoui & Stainer 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent" (NeurIPS; Krum and Multi-Krum).
    El Mhamdi, Guerraoui & Rouault 2018, "The Hidden Vulnerability of Distributed Learning in
    Byzantium" (ICML; Bulyan).
    Pillutla, Kakade & Harchaoui 2022, "Robust Aggregation for Federated Learning" (IEEE TSP;
    RFA, the smoothed Weiszfeld algorithm).
    Karimireddy, He & Jaggi 2021, "Learning from History for Byzantine Robust Optimization"
    (ICML; centered clipping).
    Sun, Kairouz, Suresh & McMahan 2019, "Can You Really Backdoor Federated Learning?"
    (norm bounding).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from .aggregate import Stacked


def _check(updates: torch.Tensor, weights: torch.Tensor) -> None:
    if updates.dim() != 2 or updates.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty [K, D] block, got {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must be [K={updates.shape[0]}], got {tuple(weights.shape)}")


def centered_gram(updates: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` inner products of the rows after subtracting their mean: one matrix
    product in the updates' dtype, centred afterwards in float64 (``J g J`` with
    ``J = I - 11^T / K``), so the ``[K, D]`` block is read once and never copied. Distances
    between rows and between their combinations follow from it; centring keeps them from
    being the small difference of the rows' large common part."""
    g = (updates @ updates.T).double()
    row = g.mean(dim=1, keepdim=True)
    return g - row - row.T + g.mean()


def pairwise_sq_distances(updates: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` squared Euclidean distances: ``g_ii + g_jj - 2 g_ij`` of the Gram matrix."""
    g = centered_gram(updates)
    sq = g.diagonal()
    d = sq[:, None] + sq[None, :] - 2.0 * g
    d.clamp_(min=0.0).fill_diagonal_(0.0)
    return d


def krum_scores(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Each update's Krum score: the sum of its squared distances to its K - f - 2 nearest
    other updates."""
    k = updates.shape[0]
    if f < 0 or 2 * f + 2 >= k:
        raise ValueError(f"Krum needs 2f + 2 < K; got f={f}, K={k}")
    d = pairwise_sq_distances(updates)
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(k - f - 2, dim=1, largest=False).values
    return nearest.sum(dim=1)


def krum_select(updates: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """The indices of the ``m`` updates with the lowest Krum scores (ties: lower index)."""
    k = updates.shape[0]
    if not 1 <= m <= k:
        raise ValueError(f"Multi-Krum selects 1 <= m <= K updates; got m={m}, K={k}")
    scores = krum_scores(updates, f)
    order = sorted(range(k), key=lambda i: (float(scores[i]), i))
    return torch.tensor(order[:m], dtype=torch.long)


def multi_krum(updates: torch.Tensor, weights: torch.Tensor, *, f: int, m: int = 1,
               ) -> torch.Tensor:
    """The weighted mean of the ``m`` updates Krum scores best (``m = 1``: Krum's pick)."""
    _check(updates, weights)
    chosen = krum_select(updates, f, m)
    coeff = torch.zeros(updates.shape[0], dtype=torch.float64)
    coeff[chosen] = weights[chosen].double()
    coeff /= coeff.sum()  # one pass over the block: no copy of the chosen rows
    out: torch.Tensor = coeff.to(updates.dtype) @ updates
    return out


def bulyan(updates: torch.Tensor, weights: torch.Tensor, *, f: int) -> torch.Tensor:
    """Bulyan: pick ``K - 2f`` updates by Krum one at a time (each pick leaves the pool), then
    in every coordinate average the ``K - 4f`` picked values closest to their median."""
    _check(updates, weights)
    k = updates.shape[0]
    if f < 0 or 4 * f + 3 > k:
        raise ValueError(f"Bulyan needs 4f + 3 <= K; got f={f}, K={k}")
    pool = list(range(k))
    picked: list[int] = []
    while len(picked) < k - 2 * f:
        if len(pool) > 2 * f + 2:
            best = int(krum_select(updates[pool], f, 1)[0])
        else:  # too few left for Krum's neighbourhood: the one closest to the others
            d = pairwise_sq_distances(updates[pool]).sum(dim=1)
            best = int(torch.argmin(d))
        picked.append(pool.pop(best))
    selected = updates[picked]
    beta = k - 4 * f
    median = selected.median(dim=0).values
    closest = (selected - median).abs().topk(beta, dim=0, largest=False).indices
    return selected.gather(0, closest).mean(dim=0)


def geometric_median(updates: torch.Tensor, weights: torch.Tensor, *, iters: int = 100,
                     nu: float = 1e-6, tol: float = 1e-10) -> torch.Tensor:
    """The weighted geometric median by smoothed Weiszfeld steps (RFA): each step is the
    weighted mean with weights ``w_k / max(nu, ||z - x_k||)``. The iterate stays a
    combination ``z = a @ x`` of the rows, so every step runs on the ``[K, K]`` Gram matrix
    (``||x_k - z||^2 = g_kk - 2 (g a)_k + a.g.a``) and the rows are read twice in all."""
    _check(updates, weights)
    g = centered_gram(updates)
    sq = g.diagonal()
    w = weights.double() / weights.double().sum()
    a = w.clone()
    for _ in range(iters):
        ga = g @ a
        dist = (sq - 2.0 * ga + a @ ga).clamp_min(0.0).sqrt().clamp_min(nu)
        beta = w / dist
        new = beta / beta.sum()
        step = new - a
        a = new
        if float(step @ g @ step) <= tol * max(1.0, float(a @ g @ a)):
            break
    out: torch.Tensor = a.to(updates.dtype) @ updates
    return out


def centered_clipping(updates: torch.Tensor, weights: torch.Tensor, *, radius: float,
                      center: torch.Tensor | None = None, iters: int = 3) -> torch.Tensor:
    """Centered clipping: from ``center`` (zero unless given: the previous round's
    direction), ``iters`` times move by the weighted mean of the updates' differences to it,
    each clipped to norm ``radius``."""
    _check(updates, weights)
    if not radius > 0:
        raise ValueError(f"centered clipping needs a radius > 0, got {radius}")
    x = updates.double()
    w = weights.double() / weights.double().sum()
    v = torch.zeros_like(x[0]) if center is None else center.double().clone()
    for _ in range(iters):
        diff = x - v
        scale = (radius / diff.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
        v = v + (w * scale)[:, None].mul(diff).sum(dim=0)
    return v.to(updates.dtype)


def norm_bounded_mean(updates: torch.Tensor, weights: torch.Tensor, *,
                      bound: float | None = None, factor: float = 1.0) -> torch.Tensor:
    """The weighted mean after scaling every update to norm at most ``bound`` (adaptive when
    not given: ``factor`` x the median of the round's update norms)."""
    _check(updates, weights)
    norms = updates.double().norm(dim=1)
    limit = float(norms.median()) * factor if bound is None else bound
    if not limit > 0:
        return torch.zeros_like(updates[0])
    scale = (norms.clamp_min(1e-30).reciprocal() * limit).clamp(max=1.0)
    w = weights.double() / weights.double().sum()
    out: torch.Tensor = ((w * scale)[:, None] * updates.double()).sum(dim=0)
    return out.to(updates.dtype)


def tolerable(f: int, k: int, *, bulyan_rule: bool = False) -> int:
    """The most attackers a round of ``k`` updates lets a rule assume, at most ``f``: a round
    with fewer answers than the configured ``f`` needs still aggregates (with a smaller f)."""
    most = (k - 3) // 4 if bulyan_rule else (k - 3) // 2
    return max(0, min(f, most))


def _krum_rule(updates: torch.Tensor, weights: torch.Tensor, *, f: int, m: int,
               ) -> torch.Tensor:
    k = updates.shape[0]
    if k < 3:  # no neighbourhood to score: the plain weighted mean of one or two
        w = weights.to(updates.dtype)
        return (w[:, None] * updates).sum(dim=0) / w.sum()
    f = tolerable(f, k)
    return multi_krum(updates, weights, f=f, m=min(m or k - f, k))


def _bulyan_rule(updates: torch.Tensor, weights: torch.Tensor, *, f: int) -> torch.Tensor:
    k = updates.shape[0]
    if k < 3:
        return _krum_rule(updates, weights, f=0, m=k)
    return bulyan(updates, weights, f=tolerable(f, k, bulyan_rule=True))


def _clipping_rule(updates: torch.Tensor, weights: torch.Tensor, *, radius: float,
                   ) -> torch.Tensor:
    if not radius > 0:  # adaptive: the median norm of the round's updates
        radius = float(updates.double().norm(dim=1).median()) or 1.0
    return centered_clipping(updates, weights, radius=radius)


def _stacked(rule: Any) -> Stacked:
    return Stacked(rule)


def krum_part(*, byzantine: int = 0, **_: Any) -> Any:
    """The ``krum`` entry of :data:`fedtune.catalog.AGGREGATORS` (one pick)."""
    return _stacked(partial(_krum_rule, f=byzantine, m=1))


def multi_krum_part(*, byzantine: int = 0, krum_m: int = 0, **_: Any) -> Any:
    """The ``multi_krum`` entry (``krum_m = 0``: K - f picks)."""
    return _stacked(partial(_krum_rule, f=byzantine, m=krum_m))


def bulyan_part(*, byzantine: int = 0, **_: Any) -> Any:
    """The ``bulyan`` entry."""
    return _stacked(partial(_bulyan_rule, f=byzantine))


def geometric_median_part(**_: Any) -> Any:
    """The ``geometric_median`` entry."""
    return _stacked(geometric_median)


def centered_clipping_part(*, clip_radius: float = 0.0, **_: Any) -> Any:
    """The ``centered_clipping`` entry (``clip_radius = 0``: the median update norm)."""
    return _stacked(partial(_clipping_rule, radius=clip_radius))


def norm_bound_part(*, norm_bound: float = 0.0, **_: Any) -> Any:
    """The ``norm_bound`` entry (``norm_bound = 0``: the median update norm)."""
    return _stacked(partial(norm_bounded_mean, bound=norm_bound or None))


__all__ = [
    "bulyan",
    "centered_clipping",
    "centered_gram",
    "geometric_median",
    "krum_scores",
    "krum_select",
    "multi_krum",
    "norm_bounded_mean",
    "pairwise_sq_distances",
]
