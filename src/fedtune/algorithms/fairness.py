"""Fairness of a per-node metric: who the federation serves well, and who it leaves behind.

References:
    Jain, Chiu & Hawe 1984, "A Quantitative Measure of Fairness and Discrimination for
    Resource Allocation in Shared Computer Systems" (Jain's index).
    Li et al. 2020, "Fair Resource Allocation in Federated Learning" (worst and bottom-10 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..types import FairnessSummary


def fairness_summary(values: Sequence[float]) -> FairnessSummary:
    """Mean, population std, worst, mean of the bottom 10 % (at least one), Jain's index."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        nan = float("nan")
        return FairnessSummary(nan, nan, nan, nan, nan)
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
    bottom = sorted(xs)[: max(1, math.ceil(0.1 * n))]
    squares = sum(x * x for x in xs)
    jain = (sum(xs) ** 2) / (n * squares) if squares > 0 else 1.0
    return FairnessSummary(mean=mean, std=std, worst=min(xs),
                           bottom10_mean=sum(bottom) / len(bottom), jain_index=jain)
