"""The privacy accountant: epsilon at delta after r rounds of client-level DP, on Google's
``dp-accounting`` (the library TensorFlow Privacy and Opacus' PRV cross-checks rely on).

Which bound applies depends on how sites are sampled (``strategy.selection``):

* **Poisson** (each site independently with probability q): the Poisson-subsampled Gaussian
  under add/remove-one adjacency. Reported by the privacy loss distribution (PLD; Koskela et
  al. 2020, Doroshenko et al. 2022, "Connect the Dots"), which is tight up to its
  discretization (pessimistic, so still an upper bound); RDP (Mironov et al. 2019) is the
  cross-check and is never smaller.
* **Every site every round** (fixed size equal to the population): the plain Gaussian
  mechanism composed r times, add/remove-one, by PLD (and RDP as the cross-check).
* **Fixed size m < n without replacement**: only RDP has the bound, for replace-one adjacency
  (Wang, Balle and Kasiviswanathan 2019, Theorem 27). Replacing one site's clipped update by
  another moves the sum by up to 2C, so the accountant is given noise_multiplier / 2. This
  is the reported figure then, whatever ``privacy.accountant`` says.

Each round is one event (the noised sum is released once per round). With adaptive clipping
the noised count is released too; :mod:`fedtune.privacy.settings` explains why the pair
costs one Gaussian of ``noise_multiplier``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import dp_accounting as dpa
from dp_accounting import pld, rdp

from .sampling import Sampling, sampling_for

# dp-accounting warns through absl when an RDP order does not converge and is skipped (the
# bound stays valid): not the user's concern.
logging.getLogger("absl").setLevel(logging.ERROR)

PLD_INTERVAL = 1e-3  # discretization of the privacy loss; finer changed epsilon by < 1e-4
__all__ = ["PLD_INTERVAL", "Accountant", "Sampling", "calibrate", "sampling_for"]


class Accountant:
    """Epsilon of r rounds (each a sampled Gaussian of ``noise_multiplier``) at ``delta``."""

    def __init__(self, *, noise_multiplier: float, sampling: Sampling, delta: float,
                 method: Literal["pld", "rdp"] = "pld") -> None:
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.z, self.sampling, self.delta = noise_multiplier, sampling, delta
        self.wor = sampling.kind == "fixed" and not sampling.everyone
        self.method: Literal["pld", "rdp"] = "rdp" if self.wor else method
        self._pld: Any = None
        self._epsilons: dict[int, float] = {}  # each round's figure is asked more than once

    @property
    def bound(self) -> str:
        """Which bound the reported epsilon is, in words."""
        s = self.sampling
        if self.wor:
            return (f"RDP, {s.size} of {s.population} sites sampled without replacement, "
                    "replace-one adjacency (sensitivity 2C)")
        how = (f"Poisson sampling q = {s.rate:g}" if s.kind == "poisson"
               else "every site every round")
        return f"{self.method.upper()}, {how}, add/remove-one adjacency"

    def event(self, rounds: int = 1) -> dpa.DpEvent:
        """The dp-accounting event of ``rounds`` rounds."""
        s = self.sampling
        if self.wor:
            one: dpa.DpEvent = dpa.SampledWithoutReplacementDpEvent(
                s.population, s.size, dpa.GaussianDpEvent(self.z / 2))
        elif s.kind == "poisson" and s.rate < 1:
            one = dpa.PoissonSampledDpEvent(s.rate, dpa.GaussianDpEvent(self.z))
        else:
            one = dpa.GaussianDpEvent(self.z)
        return dpa.SelfComposedDpEvent(one, rounds)

    def epsilon(self, rounds: int) -> float:
        """The reported epsilon after ``rounds`` rounds (0 before the first)."""
        if rounds <= 0:
            return 0.0
        if rounds not in self._epsilons:
            self._epsilons[rounds] = self._epsilon(rounds)
        return self._epsilons[rounds]

    def _epsilon(self, rounds: int) -> float:
        if self.method == "rdp":
            return self.epsilon_rdp(rounds)
        if self._pld is None:
            s = self.sampling
            rate = s.rate if s.kind == "poisson" else 1.0
            self._pld = pld.privacy_loss_distribution.from_gaussian_mechanism(
                self.z, sampling_prob=rate, value_discretization_interval=PLD_INTERVAL)
        return float(self._pld.self_compose(rounds).get_epsilon_for_delta(self.delta))

    def epsilon_rdp(self, rounds: int) -> float:
        """The RDP bound after ``rounds`` rounds (the cross-check)."""
        if rounds <= 0:
            return 0.0
        relation = dpa.NeighboringRelation.REPLACE_ONE if self.wor \
            else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        accountant = rdp.RdpAccountant(neighboring_relation=relation)
        accountant.compose(self.event(rounds))
        return float(accountant.get_epsilon(self.delta))

    def rounds_within(self, max_epsilon: float, limit: int) -> int:
        """The most rounds (at most ``limit``) whose epsilon stays <= ``max_epsilon``."""
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.epsilon(mid) <= max_epsilon:
                lo = mid
            else:
                hi = mid - 1
        return lo


def calibrate(target_epsilon: float, *, delta: float, rounds: int, sampling: Sampling,
              method: Literal["pld", "rdp"] = "pld") -> float:
    """The smallest noise multiplier whose ``rounds`` rounds stay within ``target_epsilon``
    at ``delta``, by dp-accounting's calibration (bisection). RDP's answer comes first: it
    is never below the PLD one, so it brackets the PLD search from above (a PLD of a tiny
    noise multiplier is huge and slow to build)."""
    if not target_epsilon > 0 or rounds < 1:
        raise ValueError("calibration needs target_epsilon > 0 and rounds >= 1")

    def search(how: Literal["pld", "rdp"], bracket: Any) -> float:
        probe = Accountant(noise_multiplier=1.0, sampling=sampling, delta=delta, method=how)

        def fresh() -> dpa.PrivacyAccountant:
            if how == "pld":
                return pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
            return rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE
                                     if probe.wor else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)

        def event(z: float) -> dpa.DpEvent:
            return Accountant(noise_multiplier=z, sampling=sampling, delta=delta).event(rounds)

        z: float = dpa.calibrate_dp_mechanism(fresh, event, target_epsilon, delta, bracket,
                                              tol=1e-3)
        return z

    upper = search("rdp", dpa.LowerEndpointAndGuess(1e-3, 1.0))
    if Accountant(noise_multiplier=upper, sampling=sampling, delta=delta,
                  method=method).method == "rdp":
        return upper
    try:
        return search("pld", dpa.ExplicitBracketInterval(upper / 2, upper))
    except ValueError:  # PLD needs less than half of RDP's noise: rare, and RDP's is safe
        return upper
