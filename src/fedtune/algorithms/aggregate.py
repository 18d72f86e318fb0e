"""Aggregation of K node updates stacked as one ``[K, D]`` tensor.

Each function is pure: it reads the stacked updates (and weights) and returns one ``[D]``
vector. Weighted mean is the FedAvg rule; coordinate-wise median and trimmed mean are the
simple robust rules (they ignore weights by design).

The weighted mean is also available as a running sum, :class:`WeightedSum`, so a
coordinator can fold each update in as it arrives and hold one accumulator instead of K
updates. :func:`weighted_mean` is that same fold over the rows, so stacking and streaming
give bit-for-bit the same vector when the rows come in the same order.

References:
    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (weighted mean).
    Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (coordinate-wise median and trimmed mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(updates: torch.Tensor, weights: torch.Tensor) -> None:
    if updates.dim() != 2:
        raise ValueError(f"updates must be [K, D], got shape {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must be [K={updates.shape[0]}], got {tuple(weights.shape)}")
    if updates.shape[0] == 0:
        raise ValueError("cannot aggregate zero updates")


class WeightedSum:
    """Sum_k c_k u_k folded one update at a time (``c_k`` a Python float).

    The first update is scaled into a fresh accumulator; later ones are added in place, so
    the memory is one vector whatever K is. Summation order is the call order: callers that
    need reproducible results call :meth:`add` in a fixed order.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, update: torch.Tensor, coef: float) -> None:
        if self.total is None:
            self.total = torch.mul(update, coef)
        else:
            if update.shape != self.total.shape:
                raise ValueError(f"update of shape {tuple(update.shape)} does not match "
                                 f"{tuple(self.total.shape)}")
            self.total.add_(update, alpha=coef)
        self.count += 1

    def scaled(self, factor: float) -> torch.Tensor:
        """The sum times ``factor``, in place (the fold is finished)."""
        if self.total is None:
            raise ValueError("cannot aggregate zero updates")
        return self.total.mul_(factor)


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum_k w_k u_k / sum_k w_k, folded row by row (the same numbers as a streaming
    :class:`WeightedSum` over the same rows in the same order)."""
    _check(updates, weights)
    w = [float(x) for x in weights]
    total = sum(w)
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    acc = WeightedSum()
    for row, wk in zip(updates, w, strict=True):
        acc.add(row, wk)
    return acc.scaled(1.0 / total)


def coordinate_median(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (lower median for even K); weights are ignored."""
    _check(updates, weights)
    return updates.median(dim=0).values


def trimmed_mean(updates: torch.Tensor, weights: torch.Tensor, *, trim: float = 0.1) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``trim`` fraction at each end."""
    _check(updates, weights)
    k = updates.shape[0]
    cut = int(trim * k)
    if 2 * cut >= k:
        raise ValueError(f"trim={trim} removes all {k} updates")
    ordered = updates.sort(dim=0).values
    return ordered[cut:k - cut].mean(dim=0)


AGGREGATORS: dict[str, Aggregator] = {
    "mean": weighted_mean,
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
}
