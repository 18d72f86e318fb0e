"""What a node hook sees of one round at one node (:class:`FitContext`): its own module so
that hooks defined elsewhere (privacy, secure aggregation) need not import the hook list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .instructions import NodeInstructions


@dataclass
class FitContext:
    """One round of one node, as the hooks see it."""

    round: int
    params: torch.Tensor  # the global parameters the node starts from
    aux: dict[str, torch.Tensor]  # the instruction's tensors
    instructions: NodeInstructions
    state: dict[str, Any]  # what the node keeps between rounds
    seed: int = 0  # this node's seed for the round's message (uplink encoders)
    correction: torch.Tensor | None = None  # added to every local gradient
    optimizer_state: dict[str, Any] | None = None  # the local optimizer's, in and out
    update: torch.Tensor | None = None  # after training: local minus global
    steps: int = 0
    out_aux: dict[str, torch.Tensor] = field(default_factory=dict)
    encoding: str = ""
    num_train: int = 0  # the node's training examples
    dp: Any = None  # sample-level DP-SGD for this round (fedtune.privacy.dp_sgd.DPSGD)
    model: Any = None  # the FlatModel the node trains (personalization loads its own part)
    # train(plan, purpose, rows=None, **train_locally options) -> LocalStats: one more local
    # phase on the node's data (FedRep's head, Ditto's personal model), seeded by its purpose
    train: Any = None
    trainable: slice | None = None  # the main loop steps only this slice of the vector
    loop: Any = None  # replaces the default local loop (Per-FedAvg), same signature
    plan: Any = None  # replaces the instruction's local plan (FedEx's sampled configuration)
    rows: torch.Tensor | None = None  # train on these rows of the training data only
    evaluate_rows: Any = None  # (rows) -> the model's loss and metrics on training rows
    # (x, y) -> (x, y): what the node trains on this round instead (a simulated attack's)
    poison: Any = None
    node_seed: int = 0  # the node's own seed and id (per-site choices that never change)
    node_id: str = ""
