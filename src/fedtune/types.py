"""Typed records that flow through a federation.

Messages (``FitIns``, ``FitRes``, ``EvalIns``, ``EvalRes``) are what runtimes move; records
(``NodeRoundRecord``, ``RoundRecord``, ``RunResult``) are what the coordinator stores and
reports. Every measured quantity carries its unit in its field name (``_s``, ``_bytes``,
``_j``, ``_gco2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by what runs, not to list runs
    import torch


Scalar = int | float | str | bool


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of the parameters that travel, in flat-vector order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float32"

    @property
    def sizes(self) -> tuple[int, ...]:
        out = []
        for shape in self.shapes:
            n = 1
            for d in shape:
                n *= d
            out.append(n)
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "dtype": self.dtype}

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ParamSpec:
        return ParamSpec(tuple(obj["names"]), tuple(tuple(s) for s in obj["shapes"]),
                         obj.get("dtype", "float32"))


@dataclass
class FitIns:
    """Coordinator -> node: train from these global parameters with this plan."""

    round: int
    params: torch.Tensor
    config: dict[str, Scalar] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    encoding: str = ""  # compression spec of params (then packed in aux), "" = dense float32


@dataclass
class NodeMeter:
    """What one node spent on one task: time, CPU, energy and carbon."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    energy_j: float = 0.0
    co2_g: float = 0.0
    energy_method: str = ""


@dataclass
class FitRes:
    """Node -> coordinator: the update (local minus global parameters) and its counts."""

    node_id: str
    round: int
    update: torch.Tensor
    num_examples: int
    num_steps: int
    train_loss: float
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    meter: NodeMeter = field(default_factory=NodeMeter)
    encoding: str = ""  # compression spec of the update (then packed in aux), "" = dense


@dataclass
class EvalIns:
    """Coordinator -> node: evaluate these parameters, optionally after local fine-tuning."""

    round: int
    params: torch.Tensor
    config: dict[str, Scalar] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # travelling buffers


@dataclass
class EvalRes:
    """Node -> coordinator: metrics on the node's own test split."""

    node_id: str
    round: int
    num_examples: int
    metrics: dict[str, float]
    meter: NodeMeter = field(default_factory=NodeMeter)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. the bias audit's counts


@dataclass
class NodeFailure:
    """A node that did not answer a round (crashed, timed out, sent something invalid)."""

    node_id: str
    round: int
    reason: str


@dataclass
class NodeRoundRecord:
    """One node's share of one round, as stored in the energy ledger."""

    round: int
    node_id: str
    phase: str
    examples: int
    steps: int
    train_loss: float
    wall_s: float
    cpu_s: float
    bytes_down: int
    bytes_up: int
    energy_j: float
    co2_g: float
    energy_method: str
    epsilon: float | None = None  # the site's own DP-SGD epsilon after this fit (sample-level)
    attack: str = ""  # the simulated attack ([attack] kind) this node made in this round


@dataclass
class RoundRecord:
    """What one round did and measured."""

    round: int
    nodes: list[str]
    failed: list[str]
    train_loss: float
    test_loss: float | None
    test_accuracy: float | None
    wall_s: float
    bytes_down: int
    bytes_up: int
    energy_j: float
    co2_g: float
    epsilon: float | None = None  # client-level DP spent after this round, at privacy.delta
    coordinator_energy_j: float = 0.0  # of energy_j: the coordinator's own (aggregation, ...)


@dataclass
class FairnessSummary:
    """Spread of a per-node metric: who is served well and who is left behind."""

    mean: float
    std: float
    worst: float
    bottom10_mean: float
    jain_index: float


@dataclass
class RunResult:
    """Everything a finished run reports."""

    run_id: str
    rounds: list[RoundRecord]
    final_test_loss: float
    final_test_accuracy: float
    node_accuracy_global: dict[str, float]
    node_accuracy_personalized: dict[str, float]
    fairness_global: FairnessSummary
    fairness_personalized: FairnessSummary
    total_bytes_down: int
    total_bytes_up: int
    total_energy_j: float
    total_co2_g: float
    wall_s: float
    energy_method: str
    status: str = "complete"
    extra: dict[str, Any] = field(default_factory=dict)
