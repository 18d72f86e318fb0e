"""Contribution scores of one round's sites: GTG-Shapley and leave-one-out, as pure functions
of a utility over coalitions.

A coalition S of the round's K sites is valued by the utility of a sub-model built from its
updates alone (:class:`fedtune.equity.contribution_part.ContributionPart` builds it: the
global model plus S's part of the round's step). The Shapley value of site k is its mean
marginal gain U(S + k) - U(S) over orderings of the sites; it is the only split of the
round's gain U(all) - U(none) that is efficient (the scores sum to it), symmetric, and gives
0 to a site that adds nothing (Shapley 1953).

GTG-Shapley (Liu et al. 2022) estimates it within one round by Monte Carlo over
permutations with two truncations: a round whose total gain is below ``truncation`` scores 0
for everyone (between-round truncation), and a permutation stops evaluating once its running
utility is within ``truncation`` of U(all) (within-round truncation; the remaining marginals
are 0, so efficiency holds to within ``truncation``). Permutations are guided: the i-th puts
site i mod K first, so every site is seen first equally often. It stops once the estimates
settle (after at least two passes over the sites, the mean absolute change over the last K
permutations below 5 % of the mean absolute score, the paper's criterion) or after
``permutations``. When K! <= ``permutations`` it enumerates every ordering instead: the exact
Shapley value. Utilities are cached per coalition.

Leave-one-out scores U(all) - U(all - k): K + 1 evaluations, not efficient, and 0 for each
of two sites that duplicate each other (Shapley splits their gain).

Written here: the Shapley libraries on PyPI value data points of one model
(``shap``, ``datavalues``) or need the whole game's table up front; a round's game is K
sub-model evaluations by a callback, truncated as it goes.

References:
    Shapley 1953, "A Value for n-Person Games". Liu, Chen, Han, Yu & Hu 2022, "GTG-Shapley:
    Efficient and Accurate Participant Contribution Evaluation in Federated Learning" (ACM
    TIST). Ghorbani & Zou 2019, "Data Shapley" (truncated Monte Carlo).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

Coalition = tuple[int, ...]
Utility = Callable[[Coalition], float]


def _cached(utility: Utility) -> tuple[Utility, dict[Coalition, float]]:
    cache: dict[Coalition, float] = {}

    def value(coalition: Coalition) -> float:
        key = tuple(sorted(coalition))
        if key not in cache:
            cache[key] = float(utility(key))
        return cache[key]

    return value, cache


def gtg_shapley(utility: Utility, n: int, *, permutations: int = 50, truncation: float = 0.0,
                seed: int = 0) -> tuple[list[float], int]:
    """Shapley estimates of ``n`` sites under ``utility`` (a function of a sorted tuple of
    site indices), and how many coalitions were evaluated."""
    if n == 0:
        return [], 0
    value, cache = _cached(utility)
    empty, full = value(()), value(tuple(range(n)))
    if abs(full - empty) <= truncation:
        return [0.0] * n, len(cache)
    if math.factorial(n) <= permutations:
        orders: list[list[int]] = [list(p) for p in itertools.permutations(range(n))]
        exhaustive = True
    else:
        orders, exhaustive = [], False
    rng = random.Random(seed)
    phi, history = [0.0] * n, []
    count = len(orders) if exhaustive else permutations
    for tau in range(1, count + 1):
        if exhaustive:
            order = orders[tau - 1]
        else:
            rest = [k for k in range(n) if k != (tau - 1) % n]
            rng.shuffle(rest)
            order = [(tau - 1) % n, *rest]
        previous, members = empty, []
        for k in order:
            members.append(k)
            current = previous if abs(full - previous) <= truncation else value(tuple(members))
            phi[k] += (current - previous - phi[k]) / tau
            previous = current
        history.append(list(phi))
        if not exhaustive and tau >= 2 * n:
            old = history[tau - 1 - n]
            change = sum(abs(a - b) for a, b in zip(phi, old, strict=True)) / n
            scale = sum(abs(a) for a in phi) / n
            if scale > 0 and change < 0.05 * scale:
                break
    return phi, len(cache)


def leave_one_out(utility: Utility, n: int) -> tuple[list[float], int]:
    """U(all) - U(all without k) for each of ``n`` sites, and the coalitions evaluated."""
    value, cache = _cached(utility)
    full = value(tuple(range(n)))
    return [full - value(tuple(j for j in range(n) if j != k)) for k in range(n)], len(cache)
