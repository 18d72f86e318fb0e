"""server.park_model: the global model waits in a temporary file while updates come in."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from fedtune.config import config_from_dict
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.parking import ParkedVector
from fedtune.store import RunStore


def test_parked_vector_comes_back_bit_for_bit_and_leaves_no_file(tmp_path):
    vector = torch.randn(300_001, generator=torch.Generator().manual_seed(1))
    vector[7] = float("-inf")  # bits, not values: whatever is parked comes back
    parked = ParkedVector(vector, tmp_path / "tmp")
    fd = parked.file.fileno()
    assert os.fstat(fd).st_size == 4 * vector.numel()
    assert list((tmp_path / "tmp").iterdir()) == []  # unnamed: gone if the process dies
    back = parked.load()
    assert back.data_ptr() != vector.data_ptr()
    assert torch.equal(back.view(torch.int32), vector.view(torch.int32))
    parked.close()
    with pytest.raises(ValueError, match="flat vector"):
        ParkedVector(torch.zeros(2, 2))


def test_a_saved_vector_is_read_back_from_its_file_and_checked_first(tmp_path):
    from safetensors.torch import save_file

    from fedtune.parking import SavedVector

    vector = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    save_file({"params": vector, "opt.step": torch.tensor(3)}, str(tmp_path / "state.st"))
    back = SavedVector(tmp_path / "state.st", "params", vector).load()
    assert torch.equal(back, vector)
    with pytest.raises(ValueError, match="shape"):
        SavedVector(tmp_path / "state.st", "params", torch.zeros(999))
    with pytest.raises(OSError):
        SavedVector(tmp_path / "missing.st", "params", vector)
    (tmp_path / "bad.st").write_bytes(b"not safetensors")
    with pytest.raises(OSError):
        SavedVector(tmp_path / "bad.st", "params", vector)


def _run(tmp_path, name, park):
    cfg = config_from_dict({
        "run": {"rounds": 3, "workspace": str(tmp_path / name), "checkpoint_every": 1},
        "data": {"num_nodes": 4},
        "strategy": {"name": "fedadam", "fraction": 0.75},
        "central": {"steps_between_rounds": 2},
        "evaluation": {"personalize_steps": 2},
        "server": {"park_model": park},
    })
    result = run(cfg)
    store = RunStore(tmp_path / name)
    data = store.load_run("last")
    store.close()
    return result, data, load_file(data["checkpoints"][-1]["path"])


def test_parking_the_model_changes_no_number(tmp_path):
    """Rounds with a sample of nodes, central steps between them, a server optimizer with
    state, checkpoints every round: parked or not, the same bits."""
    plain, plain_run, plain_params = _run(tmp_path, "plain", False)
    parked, parked_run, parked_params = _run(tmp_path, "parked", True)
    assert parked.final_test_loss == plain.final_test_loss
    assert [r.test_loss for r in parked.rounds] == [r.test_loss for r in plain.rounds]
    for name, value in plain_params.items():
        assert torch.equal(parked_params[name], value), name
    assert parked_run["node_evals"] == plain_run["node_evals"]
    assert list((tmp_path / "parked" / "tmp").iterdir()) == []


def test_a_model_that_cannot_be_parked_stays_in_memory(tmp_path, caplog):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "tmp").write_text("not a directory")  # parking there fails
    plain, _, plain_params = _run(tmp_path, "plain", False)
    kept, _, kept_params = _run(tmp_path, "full", True)
    assert "cannot park the model" in caplog.text
    assert kept.final_test_loss == plain.final_test_loss
    for name, value in plain_params.items():
        assert torch.equal(kept_params[name], value), name


def test_parking_needs_synchronous_rounds():
    with pytest.raises(ConfigError, match=r"park_model.*sync"):
        config_from_dict({"server": {"park_model": True}, "strategy": {"mode": "async"}})


def test_a_spilled_update_comes_back_bit_for_bit_when_its_turn_comes(tmp_path):
    """An update that arrives before its predecessors is spilled to disk and folded, in
    selection order, from there: the same sum as when it waited in memory."""
    from fedtune.algorithms.aggregate import weighted_mean
    from fedtune.algorithms.fold import RoundFold
    from fedtune.parking import spill

    updates = [torch.randn(1000) for _ in range(3)]
    held, spilled = RoundFold(weighted_mean), RoundFold(weighted_mean)
    for position in (2, 1, 0):  # arrival order: the last selected first
        held.offer(position, updates[position].clone(), 1.0 + position, 1.0)
        u = updates[position].clone()
        spilled.offer(position, spill(u, tmp_path) if position else u, 1.0 + position, 1.0)
    assert list(tmp_path.iterdir()) == []  # unnamed temporary files
    assert torch.equal(held.delta(weighted_mean), spilled.delta(weighted_mean))
