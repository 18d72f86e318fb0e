"""The coordinator's state file is the union of its parts' states: any stateful part
resumes after a crash, and the file's names stay those of earlier versions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fedtune.algorithms.server_opt import OptState
from fedtune.coordinator_state import CoordinatorState


@dataclass
class AccountantLike:
    """A stand-in for a future stateful part (a privacy accountant): numbers and a tensor."""

    steps: int
    epsilon: float
    history: torch.Tensor


def test_snapshot_names_are_those_of_earlier_state_files():
    st = CoordinatorState(torch.ones(3), parts={
        "opt": OptState(4, torch.zeros(3), None), "control": torch.full((3,), 2.0)})
    assert set(st.snapshot()) == {"params", "opt.step", "opt.m", "control"}
    assert int(st.snapshot()["opt.step"]) == 4


def test_any_part_state_round_trips_through_the_snapshot():
    fresh = {"opt": OptState(0, torch.zeros(2), torch.zeros(2)),
             "acct": AccountantLike(0, 0.0, torch.zeros(5)), "pair": (torch.zeros(1), 0)}
    st = CoordinatorState(torch.zeros(2), parts=dict(fresh))
    st.params = torch.tensor([1.0, 2.0])
    st.parts = {"opt": OptState(7, torch.ones(2), torch.full((2,), 3.0)),
                "acct": AccountantLike(12, 1.5, torch.arange(5.0)), "pair": (torch.ones(1), 9)}
    saved = {k: v.clone() for k, v in st.snapshot().items()}
    resumed = CoordinatorState(torch.zeros(2), parts=dict(fresh))
    resumed.restore(3, saved, [])
    assert resumed.round == 3 and torch.equal(resumed.params, st.params)
    assert resumed.parts["opt"].step == 7 and torch.equal(resumed.parts["opt"].v, st.parts["opt"].v)
    acct = resumed.parts["acct"]
    assert (acct.steps, acct.epsilon) == (12, 1.5) and torch.equal(acct.history, torch.arange(5.0))
    assert torch.equal(resumed.parts["pair"][0], torch.ones(1)) and resumed.parts["pair"][1] == 9


def test_a_part_the_state_file_lacks_starts_fresh_and_a_bad_state_is_named():
    st = CoordinatorState(torch.zeros(2), parts={"control": torch.full((2,), 5.0)})
    st.restore(1, {"params": torch.ones(2)}, [])
    assert torch.equal(st.parts["control"], torch.full((2,), 5.0))
    with pytest.raises(TypeError, match="'odd'"):
        CoordinatorState(torch.zeros(1), parts={"odd": {"a": 1}}).snapshot()
