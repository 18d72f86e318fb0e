"""The flat parameter vector and the wire format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedtune.errors import MessageError
from fedtune.params import FlatModel, unflatten
from fedtune.types import EvalIns, EvalRes, FitIns, FitRes, NodeMeter
from fedtune.wire import decode, encode, encoded_size


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m[0].bias.requires_grad_(False)  # frozen: must not travel
    return m


def test_flat_model_views_and_grads():
    m = _model()
    frozen_before = m[0].bias.detach().clone()
    flat = FlatModel(m)
    assert flat.spec.names == ("0.weight", "2.weight", "2.bias")
    assert flat.spec.numel == 12 + 8 + 2 == flat.vector.numel()
    flat.load_(torch.arange(22, dtype=torch.float32))
    torch.testing.assert_close(m[2].bias.detach(), torch.tensor([20.0, 21.0]))
    torch.testing.assert_close(m[0].bias.detach(), frozen_before)
    for _ in range(2):  # accumulates into the flat buffer, zeroed in place
        flat.zero_grad()
        m(torch.randn(5, 3)).pow(2).sum().backward()
        assert m[2].weight.grad.data_ptr() == flat.grad.data_ptr() + 12 * 4
        torch.testing.assert_close(flat.grad[20:], m[2].bias.grad)
    named = unflatten(flat.vector, flat.spec)
    assert named["0.weight"].shape == (4, 3)


def test_released_flat_model_frees_its_buffers_and_comes_back_on_load():
    m = _model()
    flat = FlatModel(m)
    x = torch.randn(5, 3)
    before = m(x).detach().clone()
    saved = flat.vector.clone()
    flat.release()
    assert flat.released
    assert flat.vector.untyped_storage().nbytes() == 0 == flat.grad.untyped_storage().nbytes()
    flat.load_(saved, with_grad=False)  # enough to evaluate
    assert not flat.released
    assert flat.grad.untyped_storage().nbytes() == 0
    assert torch.equal(m(x).detach(), before)
    flat.release()
    flat.load_(saved)
    assert not flat.released
    assert torch.equal(m(x).detach(), before)  # the module's views see the buffer again
    assert torch.count_nonzero(flat.grad) == 0
    m(x).pow(2).sum().backward()  # gradients land in the flat buffer again
    assert m[2].weight.grad.data_ptr() == flat.grad.data_ptr() + 12 * 4
    assert torch.count_nonzero(flat.grad) > 0


def test_flat_model_rejects_wrong_size():
    flat = FlatModel(_model())
    with pytest.raises(ValueError, match="22"):
        flat.load_(torch.zeros(5))


MESSAGES = [
    FitIns(3, torch.randn(10), {"lr": 0.1, "optimizer": "sgd"}, {"scaffold_c": torch.ones(10)}),
    FitRes("node-1", 3, torch.randn(10), 40, 2, 0.25, {}, NodeMeter(1.0, 2.0, 3.0, 4.0, "rapl")),
    EvalIns(1, torch.randn(7), {"personalize_steps": 5}),
    EvalRes("node-2", 1, 12, {"accuracy": 0.5}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_encoded_size_is_exact_and_roundtrips(msg):
    data = encode(msg)
    assert encoded_size(msg) == len(data)
    back = decode(data)
    assert type(back) is type(msg)
    for name in ("params", "update"):
        if hasattr(msg, name):
            assert torch.equal(getattr(back, name), getattr(msg, name))


def test_decode_rejects_bad_messages():
    good = encode(MESSAGES[1])
    bad_update = FitRes("n", 1, torch.tensor([1.0, float("nan")]), 1, 1, 0.0)
    cases = {
        "magic": b"XXXX" + good[4:],
        "trailing": good + b"\x00",
        "truncated": good[:-3],
        "NaN": encode(bad_update),
        "exceeds": good,
    }
    for what, data in cases.items():
        with pytest.raises(MessageError, match=what if what != "truncated" else "does not fit"):
            decode(data, max_bytes=100 if what == "exceeds" else None)
