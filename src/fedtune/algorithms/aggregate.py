"""Aggregation of K node updates stacked as one ``[K, D]`` tensor.

Each function is pure: it reads the stacked updates (and weights) and returns one ``[D]``
vector. Weighted mean is the FedAvg rule; coordinate-wise median and trimmed mean are the
simple robust rules (they ignore weights by design).

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


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum_k w_k u_k / sum_k w_k as one matrix-vector product."""
    _check(updates, weights)
    w = weights.to(updates.dtype)
    total = w.sum()
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    return (w / total) @ updates


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
