"""SCAFFOLD's server part: the server control variate c, sent with every instruction and
moved by the selected nodes' control deltas after each server step.

The node part (the gradient correction c - c_i and the new c_i) is
:class:`fedtune.node.hooks.ScaffoldNode`; the two meet only in the message fields
``scaffold_c`` (coordinator to node) and ``scaffold_dc`` (node to coordinator).

References:
    Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning" (Algorithm 1, option II).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def scaffold_control_step(control: torch.Tensor, control_delta_sum: torch.Tensor,
                          num_nodes: int) -> torch.Tensor:
    """c <- c + (1/N) sum_{i in S} delta c_i (Algorithm 1, line 17), given the sum of the
    selected nodes' deltas and N, the number of all nodes."""
    return control + control_delta_sum / num_nodes


@dataclass(frozen=True)
class ScaffoldServer:
    """A server part: ``init``, what instructions carry, what replies must carry (summed
    over the round by the fold), and its move after the server step."""

    name: str = "control"  # its key in the coordinator's state and state file
    sends: str = "scaffold_c"
    receives: str = "scaffold_dc"

    def init(self, params: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(params)

    def instruction_aux(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.sends: state}

    def after_step(self, state: torch.Tensor, received_sum: torch.Tensor | None,
                   num_nodes: int) -> torch.Tensor:
        if received_sum is None:
            return state
        return scaffold_control_step(state, received_sum, num_nodes)
