"""What the coordinator carries from round to round.

:class:`CoordinatorState` is the global parameter vector and the state of each stateful
server part (the server optimizer, SCAFFOLD's control variate, ...), with the round reached
and its records; its snapshot, the union of the parts' states, is the state file a resumed
run continues from, so a new stateful part resumes after a crash with no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch

from .types import RoundRecord


@dataclass
class CoordinatorState:
    """Everything that changes from round to round on the coordinator: the parameters and
    each stateful server part's state by the part's name (``"opt"``: the server optimizer,
    ``"control"``: SCAFFOLD's control variate, ...)."""

    params: torch.Tensor
    parts: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    history: list[RoundRecord] = field(default_factory=list)

    @property
    def control(self) -> torch.Tensor | None:
        """SCAFFOLD's server control variate, when the strategy has one."""
        control: torch.Tensor | None = self.parts.get("control")
        return control

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue after the current round, as named tensors: the
        union of the parts' states, each under its part's name."""
        out = {"params": self.params}
        for name, state in self.parts.items():
            out.update(state_tensors(name, state))
        return out

    def restore(self, round_: int, tensors: dict[str, torch.Tensor],
                history: list[RoundRecord]) -> None:
        """Continue from a :meth:`snapshot` taken after ``round_``; a part whose tensors the
        snapshot lacks keeps its initial state."""
        device = self.params.device
        if tensors["params"].shape != self.params.shape:
            raise ValueError(f"saved parameters have {tensors['params'].numel()} values, the "
                             f"model has {self.params.numel()}: the config changed since the run")
        self.params = tensors["params"].to(device)
        self.parts = {name: state_from_tensors(name, state, tensors, device)
                      for name, state in self.parts.items()}
        self.round = round_
        self.history = list(history)


def state_tensors(name: str, state: Any) -> dict[str, torch.Tensor]:
    """A part's state as named tensors: a tensor under ``name``, a dataclass's fields under
    ``name.field``, a tuple's items under ``name.i``, numbers as 0-d tensors; None is left
    out."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {name: state}
    if isinstance(state, bool | int | float):  # float64: a float survives a resume exactly
        return {name: torch.tensor(state, dtype=torch.float64 if isinstance(state, float)
                                   else None)}
    items: list[tuple[str, Any]]
    if is_dataclass(state) and not isinstance(state, type):
        items = [(f.name, getattr(state, f.name)) for f in fields(state)]
    elif isinstance(state, tuple):
        items = [(str(i), v) for i, v in enumerate(state)]
    else:
        raise TypeError(f"server part {name!r} keeps a {type(state).__name__}; a part's state "
                        "must be tensors, numbers, dataclasses or tuples of them")
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(state_tensors(f"{name}.{key}", value))
    return out


def state_from_tensors(name: str, template: Any, tensors: dict[str, torch.Tensor],
                       device: torch.device) -> Any:
    """The inverse of :func:`state_tensors`, shaped like ``template`` (the part's initial
    state); what ``tensors`` lacks stays as in the template."""
    if isinstance(template, torch.Tensor):
        return tensors[name].to(device) if name in tensors else template
    if template is None:
        return tensors[name].to(device) if name in tensors else None
    if isinstance(template, bool | int | float):
        return type(template)(tensors[name].item()) if name in tensors else template
    if is_dataclass(template) and not isinstance(template, type):
        return replace(template, **{f.name: state_from_tensors(
            f"{name}.{f.name}", getattr(template, f.name), tensors, device)
            for f in fields(template)})
    if isinstance(template, tuple):
        return tuple(state_from_tensors(f"{name}.{i}", v, tensors, device)
                     for i, v in enumerate(template))
    raise TypeError(f"cannot restore server part {name!r} from a {type(template).__name__}")
