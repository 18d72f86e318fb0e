"""Compression: unbiasedness, error feedback conservation, the packed format, exact bytes,
determinism, and configuration errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.compression import (
    CompressionSpec,
    compress,
    decode_gaps,
    decompress,
    encode_gaps,
    error_feedback_step,
    pack_vector,
    unpack_vector,
)
from fedtune.errors import ConfigError
from fedtune.experiment import run
from fedtune.types import FitRes
from fedtune.wire import encode, encoded_size

from .conftest import small_config

X = torch.linspace(-1.0, 2.0, 300) * torch.tensor([1.0, -0.3, 0.01]).repeat(100)


@pytest.mark.parametrize("spec", ["q1", "q2", "q4", "q8", "randk:0.25", "randk:0.5+q4"])
def test_stochastic_compression_is_unbiased(spec):
    parsed = CompressionSpec.parse(spec, block=64)
    draws = 3000
    total = torch.zeros_like(X)
    for seed in range(draws):
        total += decompress(compress(X, parsed, seed=seed), parsed, numel=X.numel(), seed=seed)
    mean = total / draws
    # the error of a mean of n unbiased draws shrinks like 1/sqrt(n); a biased coder would not
    scale = X.abs().max() * (300 / 75 if spec.startswith("randk") else 1.0)
    assert float((mean - X).abs().max()) < 6 * float(scale) / draws**0.5
    assert float((mean - X).abs().mean()) < float(scale) / draws**0.5


def test_quantization_error_shrinks_with_bits():
    errs = []
    for bits in (1, 2, 4, 8):
        spec = CompressionSpec.parse(f"q{bits}")
        y = decompress(compress(X, spec, seed=0), spec, numel=X.numel(), seed=0)
        errs.append(float((y - X).norm()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.01 * float(X.norm())


@pytest.mark.parametrize("spec", ["topk:0.01", "topk:0.1+q4", "randk:0.05", "q2"])
def test_error_feedback_loses_nothing(spec):
    parsed = CompressionSpec.parse(spec)
    gen = torch.Generator().manual_seed(0)
    residual = None
    sent_total = torch.zeros(500)
    true_total = torch.zeros(500)
    for r in range(40):
        update = torch.randn(500, generator=gen)
        packed, residual = error_feedback_step(update, residual, parsed, seed=r)
        sent_total += decompress(packed, parsed, numel=500, seed=r)
        true_total += update
    torch.testing.assert_close(sent_total + residual, true_total, atol=1e-4, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 100_000), unique=True, max_size=300))
def test_gap_codec_round_trips(indices):
    idx = torch.tensor(sorted(indices), dtype=torch.long)
    stream = encode_gaps(idx)
    assert stream.dtype == torch.uint8
    assert torch.equal(decode_gaps(stream), idx)


def test_packed_message_bytes_are_exact_and_small():
    update = torch.randn(100_000)
    dense = FitRes("n", 1, update, 10, 1, 0.1)
    packed, encoding, _ = pack_vector(update, "topk:0.01", block=256, seed=3)
    small = FitRes("n", 1, update.new_zeros(0), 10, 1, 0.1, packed, encoding=encoding)
    assert encoded_size(small) == len(encode(small))
    assert len(encode(dense)) / len(encode(small)) > 60  # 1 % of values + ~1 byte per index
    back = unpack_vector(small.aux, encoding, numel=100_000, seed=3)
    kept = back != 0
    assert int(kept.sum()) == 1000
    assert torch.equal(back[kept], update[kept])
    assert float(update[kept].abs().min()) >= float(update[~kept].abs().max())


def test_bad_specs_are_config_errors():
    for bad, what in [("topk", "topk:FRACTION"), ("q3", "bits"), ("q8+topk:0.1", "must come last"),
                      ("zip", "unknown compression")]:
        with pytest.raises(ConfigError, match=r"compression\.uplink") as err:
            small_config(f"compression.uplink=\"{bad}\"")
        assert what in str(err.value)


def test_compressed_runs_are_deterministic_and_report_fewer_bytes():
    base = ["run.rounds=3", "data.num_nodes=4"]
    plain = run(small_config(*base), store=False)
    comp = ["compression.uplink=\"topk:0.05+q8\"", "compression.downlink=\"q8\""]
    a = run(small_config(*base, *comp), store=False)
    b = run(small_config(*base, *comp), store=False)
    assert a.final_test_loss == b.final_test_loss
    assert [r.bytes_up for r in a.rounds] == [r.bytes_up for r in b.rounds]
    assert sum(r.bytes_up for r in a.rounds) * 8 < sum(r.bytes_up for r in plain.rounds)
    assert sum(r.bytes_down for r in a.rounds) * 3 < sum(r.bytes_down for r in plain.rounds)
    assert a.final_test_accuracy > 0.5
