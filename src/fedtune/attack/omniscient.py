"""Omniscient attacks: the attackers see the round's benign updates and send what hurts the
aggregate most while passing its checks. They need the whole round, so they are a wrapper
over the runtime's reply stream (the round waits for every reply, then the attackers'
updates are replaced), never a branch in the round loop.

* ALIE, "A Little Is Enough" (Baruch, Baruch & Goldberg 2019): every attacker sends
  ``mean - z * std`` of the benign updates, coordinate-wise; by default ``z`` is the paper's
  ``z_max``: with n updates of which f attack, ``s = floor(n / 2 + 1) - f`` benign updates
  must look farther than the attackers', so ``z = Phi^-1((n - s) / n)``.
* IPM, inner product manipulation (Xie, Koyejo & Gupta 2020, "Fall of Empires"): every
  attacker sends ``-epsilon * mean`` of the benign updates (a small epsilon stays within the
  benign spread; a large one reverses the mean).

The benign statistics are over every update of the round before the attack (the attackers
know what their own benign updates would have been). Dense updates only: with uplink
compression the attack is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from statistics import NormalDist
from typing import Any

import torch

from ..types import FitIns, FitRes


def alie_z(n: int, f: int) -> float:
    """The paper's ``z_max`` for n updates of which f attack (at least 0)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    return max(0.0, NormalDist().inv_cdf(p)) if 0 < p < 1 else 0.0


def crafted(kind: str, updates: torch.Tensor, attackers: int, *, z: float = 0.0,
            epsilon: float = 0.5) -> torch.Tensor:
    """The update every attacker sends, from the ``[K, D]`` benign updates of the round."""
    mean = updates.mean(dim=0)
    if kind == "alie":
        std = updates.std(dim=0, unbiased=False) if updates.shape[0] > 1 else \
            torch.zeros_like(mean)
        return mean - (z or alie_z(updates.shape[0], attackers)) * std
    if kind == "ipm":
        return -epsilon * mean
    raise ValueError(f"unknown omniscient attack {kind!r}; known: alie, ipm")


def with_omniscient_attackers(cfg: Any, runtime: Any) -> Any:
    """The runtime, wrapped when the run simulates ALIE or IPM (cfg: the RunConfig)."""
    if cfg.attack.kind not in ("alie", "ipm"):
        return runtime
    from .settings import attacker_sites

    return OmniscientAttack(runtime, cfg.attack.kind, attacker_sites(cfg, list(runtime.node_ids)),
                            z=cfg.attack.alie_z, epsilon=cfg.attack.ipm_epsilon)


class OmniscientAttack:
    """A runtime whose fit replies carry the attackers' crafted updates."""

    def __init__(self, runtime: Any, kind: str, sites: Sequence[str], *, z: float,
                 epsilon: float) -> None:
        self._runtime = runtime
        self.kind, self.sites = kind, frozenset(sites)
        self.z, self.epsilon = z, epsilon

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def fit(self, node_ids: Sequence[str], ins: FitIns) -> Iterator[Any]:
        replies = list(self._runtime.fit(node_ids, ins))
        results = [r.result for r in replies if isinstance(r.result, FitRes)]
        dense = [r for r in results if not r.encoding]
        hit = {id(r) for r in dense if r.node_id in self.sites}
        if not hit or len(dense) < 2:
            yield from replies
            return
        update = crafted(self.kind, torch.stack([r.update.float() for r in dense]), len(hit),
                         z=self.z, epsilon=self.epsilon)
        for reply in replies:
            res = reply.result
            if id(res) in hit:
                reply = replace(reply, result=replace(res, update=update.clone()))
            yield reply
