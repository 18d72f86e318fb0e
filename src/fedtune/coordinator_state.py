"""What the coordinator carries from round to round, and who takes part in a round.

:class:`CoordinatorState` is the global parameter vector, the server optimizer's state and
SCAFFOLD's server control variate, with the round reached and its records; its snapshot is
the state file a resumed run continues from. :func:`select_nodes` is the seeded sample of a
round's nodes, the same in every runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .algorithms.server_opt import OptState
from .node.node import derived_seed
from .types import RoundRecord


@dataclass
class CoordinatorState:
    """Everything that changes from round to round on the coordinator."""

    params: torch.Tensor
    opt_state: object
    control: torch.Tensor | None = None
    round: int = 0
    history: list[RoundRecord] = field(default_factory=list)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue after the current round, as named tensors."""
        out = {"params": self.params,
               "opt.step": torch.tensor(self.opt_state.step)}  # type: ignore[attr-defined]
        for name in ("m", "v"):
            value = getattr(self.opt_state, name)
            if value is not None:
                out[f"opt.{name}"] = value
        if self.control is not None:
            out["control"] = self.control
        return out

    def restore(self, round_: int, tensors: dict[str, torch.Tensor],
                history: list[RoundRecord]) -> None:
        """Continue from a :meth:`snapshot` taken after ``round_``."""
        device = self.params.device
        if tensors["params"].shape != self.params.shape:
            raise ValueError(f"saved parameters have {tensors['params'].numel()} values, the "
                             f"model has {self.params.numel()}: the config changed since the run")
        self.params = tensors["params"].to(device)
        self.opt_state = OptState(int(tensors["opt.step"]),
                                  tensors["opt.m"].to(device) if "opt.m" in tensors else None,
                                  tensors["opt.v"].to(device) if "opt.v" in tensors else None)
        if self.control is not None and "control" in tensors:
            self.control = tensors["control"].to(device)
        self.round = round_
        self.history = list(history)


def select_nodes(node_ids: list[str], round_: int, *, seed: int, fraction: float, count: int,
                 min_nodes: int) -> list[str]:
    """The nodes of one round: a seeded sample by count or fraction (all when fraction=1)."""
    n = len(node_ids)
    k = count if count else max(min_nodes, round(fraction * n))
    k = min(k, n)
    if k == n:
        return list(node_ids)
    rng = np.random.default_rng(derived_seed(seed, "select", round_))
    return [node_ids[i] for i in sorted(rng.choice(n, size=k, replace=False))]
