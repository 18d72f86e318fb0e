"""Screening of one round's updates, and the reputation a site earns across rounds.

:func:`screen` gives each row of a ``[K, D]`` block of updates the reason it is an outlier,
or None: an update whose L2 norm lies more than ``norm_mads`` robust standard deviations
(1.4826 x the median absolute deviation of the round's norms, and at least 10 % of the
median: honest norms that agree closely make no outlier of one 30 % above them at 3) above
the median norm (a boosted or noise update), or whose cosine similarity to the coordinate-
wise median update is below ``cosine_min`` (a sign flip, a model pulled the other way), or
whose norm is below ``min_norm_share`` of the median (the global model sent back: a free
rider). Both statistics are medians, so fewer than half of the updates cannot move them: the
screen tolerates up to half minus one attackers, needs every update of the round (not the
streaming sum), and sees single updates, so it cannot run under secure aggregation.

:func:`reputation` is the beta reputation of a site from its accepted and screened rounds,
each count decayed by ``decay`` per round so that a site can recover: (a + 1) / (a + b + 2).

References:
    Rousseeuw & Croux 1993, "Alternatives to the Median Absolute Deviation" (the 1.4826
    consistency factor). Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent" (distance-based screening). Jøsang & Ismail 2002, "The Beta
    Reputation System" (reputation with forgetting).
"""

from __future__ import annotations

import torch

MAD_TO_STD = 1.4826
REL_SPREAD = 0.1  # the spread is at least this share of the median norm


def screen(updates: torch.Tensor, *, norm_mads: float, cosine_min: float,
           min_norm_share: float = 0.0) -> list[str | None]:
    """Why each update is screened out, or None for the ones kept."""
    if updates.dim() != 2:
        raise ValueError(f"updates must be [K, D], got shape {tuple(updates.shape)}")
    k = updates.shape[0]
    if k < 3:  # a median of one or two says nothing about outliers
        return [None] * k
    norms = updates.double().norm(dim=1)
    med = norms.median()
    spread = MAD_TO_STD * (norms - med).abs().median()
    spread = torch.clamp(spread, min=REL_SPREAD * float(med) + 1e-12)
    center = updates.median(dim=0).values.double()
    cosine = (updates.double() @ center) / (norms * center.norm()).clamp_min(1e-30)
    reasons: list[str | None] = []
    for i in range(k):
        z = float((norms[i] - med) / spread)
        if float(norms[i]) < min_norm_share * float(med):
            reasons.append(f"update norm {float(norms[i]):.4g} is below {min_norm_share:g} of the "
                           f"round's median {float(med):.4g} (nothing learned: a free rider?)")
        elif z > norm_mads:
            reasons.append(f"update norm {float(norms[i]):.4g} is {z:.1f} robust std above the "
                           f"round's median {float(med):.4g} (screening.norm_mads = "
                           f"{norm_mads:g})")
        elif float(cosine[i]) < cosine_min:
            reasons.append(f"cosine {float(cosine[i]):.3f} to the round's median update is "
                           f"below screening.cosine_min = {cosine_min:g}")
        else:
            reasons.append(None)
    return reasons


def reputation(accepted: torch.Tensor, screened: torch.Tensor) -> torch.Tensor:
    """Beta reputation (a + 1) / (a + b + 2) per site."""
    return (accepted + 1) / (accepted + screened + 2)
