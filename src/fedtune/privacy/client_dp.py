"""Client-level differential privacy as a part of the coordinator's round.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models"): every site's update is clipped to L2 norm C and weighs 1; the round's sum gets
Gaussian noise of standard deviation z C (``mode = "central"``: added here; ``"distributed"``:
each site adds its share, :mod:`fedtune.privacy.site`) and is divided by the expected number of
sites m (a fixed denominator: :class:`~fedtune.algorithms.aggregate.FixedMean`), so one
site's presence moves the result by at most C / m. With adaptive clipping (Andrew et al.
2021) C follows a quantile of the update norms through a noised count
(:mod:`fedtune.privacy.settings`).

The part's state (:class:`DPState`: the clip, the rounds spent) lives in the coordinator's
state, so a resumed run keeps its spent budget; the :class:`Accountant` turns rounds into
epsilon, and the run stops before the round that would pass ``privacy.max_epsilon``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..algorithms.aggregate import FixedMean
from ..algorithms.strategy import Strategy
from ..seeds import derived_seed
from .accountant import Accountant, Sampling
from .noise import gaussian
from .settings import PrivacySection, check_delta

log = logging.getLogger("fedtune")
Update = torch.Tensor | Callable[[], torch.Tensor]


@dataclass
class DPState:
    """The clip in force, the rounds spent, and this round's count of updates within the
    clip (reset after every round)."""

    clip: float
    rounds: int = 0
    within: float = 0.0


class ClientDP:
    """The coordinator's part of client-level DP."""

    name = "privacy"

    def __init__(self, settings: PrivacySection, sampling: Sampling, *, min_nodes: int,
                 seed: int, rounds: int) -> None:
        check_delta(settings.delta, sampling.population)
        self.s, self.sampling, self.seed = settings, sampling, seed
        self.m = sampling.expected_sites
        self.min_nodes = min_nodes
        z = settings.noise_multiplier
        self.count_noise = settings.clip_count_noise or self.m / 20
        self.update_z = z
        if settings.adaptive_clip:
            if 2 * self.count_noise <= z:
                raise ValueError(
                    f"privacy.clip_count_noise = {self.count_noise:g} (default: expected sites "
                    f"/ 20) must exceed noise_multiplier / 2 = {z / 2:g} for adaptive clipping; "
                    "raise privacy.clip_count_noise or sample more sites")
            self.update_z = (z ** -2 - (2 * self.count_noise) ** -2) ** -0.5
        if settings.mode == "distributed" and self.m >= 2 * min_nodes:
            log.warning("privacy.mode = \"distributed\": each site adds 1 / strategy.min_nodes = "
                        "1/%d of the noise variance, so a round of the ~%.0f expected sites "
                        "carries %.1fx the noise the guarantee needs; raise strategy.min_nodes "
                        "toward the sites a round really gets", min_nodes, self.m,
                        self.m / min_nodes)
        self.accountant = Accountant(noise_multiplier=z, sampling=sampling,
                                     delta=settings.delta, method=settings.accountant)
        self.allowed_rounds = rounds
        if settings.max_epsilon is not None:
            self.allowed_rounds = self.accountant.rounds_within(settings.max_epsilon, rounds)

    # -- the strategy and the sites ------------------------------------------------------
    def adapt(self, strategy: Strategy) -> Strategy:
        """Every update weighs 1 and the sum is divided by the expected number of sites."""
        return replace(strategy, aggregator=FixedMean(self.m))

    def init(self) -> DPState:
        return DPState(clip=self.s.clip)

    def node_config(self, state: DPState) -> dict[str, float | bool]:
        """What a site is told: in distributed mode its clip and its share of the noise."""
        if self.s.mode != "distributed":
            return {}
        share = math.sqrt(self.min_nodes)
        return {"dp_clip": state.clip, "dp_noise_std": self.update_z * state.clip / share,
                "dp_bit_noise_std": self.count_noise / share if self.s.adaptive_clip else 0.0,
                "dp_secure": self.s.secure_rng}

    # -- the round -----------------------------------------------------------------------
    def instruction_aux(self, state: Any) -> dict[str, torch.Tensor]:
        return {}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: DPState,
              node_id: str) -> float:
        return weight

    def receive(self, update: Update, aux: dict[str, torch.Tensor], state: DPState,
                node_id: str) -> Update:
        """One update on its way into the fold: clipped here (central), or counted by the
        clip bit its site sent (distributed)."""
        if self.s.mode == "distributed":
            bit = aux.get("dp_clip_bit")
            if bit is not None and bit.numel() == 1 and math.isfinite(float(bit)):
                state.within += min(max(float(bit), -10.0), 11.0)  # a site's noisy 0/1 bit
            return update
        if isinstance(update, torch.Tensor):
            return self._clip(update, state)
        return lambda: self._clip(update(), state)  # a spilled update, clipped when read

    def _clip(self, update: torch.Tensor, state: DPState) -> torch.Tensor:
        norm = float(update.norm())
        state.within += 1.0 if norm <= state.clip else 0.0
        return update if norm <= state.clip else update * (state.clip / norm)

    def release(self, delta: torch.Tensor, state: DPState, round_: int) -> torch.Tensor:
        """The aggregate (sum / m) with the central noise, and the clip adapted."""
        if self.s.mode == "central":
            std = self.update_z * state.clip / self.m
            delta = delta + self._noise(delta.numel(), std, round_, "update").to(delta.device)
        if self.s.adaptive_clip:
            count = state.within
            if self.s.mode == "central":
                count += float(self._noise(1, self.count_noise, round_, "count")[0])
            fraction = count / self.m
            state.clip *= math.exp(-self.s.clip_lr * (fraction - self.s.target_quantile))
        return delta

    def _noise(self, numel: int, std: float, round_: int, purpose: str) -> torch.Tensor:
        gen = None if self.s.secure_rng else torch.Generator().manual_seed(
            derived_seed(self.seed, round_, "dp", purpose))
        return gaussian(numel, std, secure=self.s.secure_rng, generator=gen)

    def after_round(self, state: DPState) -> None:
        """Every round that ran is spent, whether or not its step was taken."""
        state.rounds += 1
        state.within = 0.0

    def stop_reason(self, round_: int, state: DPState) -> str | None:
        if round_ <= self.allowed_rounds:
            return None
        return (f"privacy budget: round {round_} would take epsilon to "
                f"{self.accountant.epsilon(round_):.3g} > privacy.max_epsilon = "
                f"{self.s.max_epsilon:g} at delta = {self.s.delta:g}")

    def round_metrics(self, state: DPState) -> dict[str, float]:
        return {"epsilon": self.accountant.epsilon(state.rounds)}

    def summary(self, state: DPState) -> dict[str, Any]:
        """What the run reports about its privacy."""
        return {"level": "client", "mode": self.s.mode,
                "epsilon": self.accountant.epsilon(state.rounds),
                "epsilon_rdp": self.accountant.epsilon_rdp(state.rounds),
                "delta": self.s.delta, "rounds": state.rounds, "bound": self.accountant.bound,
                "noise_multiplier": self.s.noise_multiplier, "clip": state.clip,
                "adaptive_clip": self.s.adaptive_clip, "expected_sites": self.m,
                "secure_rng": self.s.secure_rng,
                "private": self.s.secure_rng}  # seeded noise can be recomputed: not private
