"""Screening and reputation: the screen on hand-made blocks, attackers below half always
caught (property), the beta reputation by hand, and a real run where sign-flipping sites are
screened out every round with the reason logged while the model learns."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune.algorithms.screening import reputation, screen
from fedtune.errors import ConfigError
from fedtune.experiment import run

from .conftest import small_config


def _honest(k: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.ones(k, d) + 0.1 * torch.randn(k, d, generator=gen)


def test_the_screen_names_a_boosted_and_a_flipped_update():
    block = torch.cat([_honest(5), 50 * torch.ones(1, 6), -torch.ones(1, 6), torch.zeros(1, 6)])
    reasons = screen(block, norm_mads=3.0, cosine_min=0.0, min_norm_share=0.05)
    assert reasons[:5] == [None] * 5
    assert "update norm" in reasons[5] and "robust std above" in reasons[5]
    assert reasons[6].startswith("cosine -0.99")
    assert "free rider" in reasons[7]
    assert screen(block[:2], norm_mads=3.0, cosine_min=0.0) == [None, None]  # too few to judge
    same = torch.ones(4, 3)
    assert screen(same, norm_mads=3.0, cosine_min=0.0) == [None] * 4  # no spread, no outlier


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 15), st.data())
def test_attackers_below_half_are_all_caught_and_no_honest_update(k, data):
    m = data.draw(st.integers(1, (k - 1) // 2))
    kind = data.draw(st.sampled_from(["flip", "boost"]))
    scale = data.draw(st.floats(1.0, 100.0))
    honest = _honest(k - m, seed=k)
    bad = -scale * torch.ones(m, 6) if kind == "flip" else (10 + scale) * torch.ones(m, 6)
    reasons = screen(torch.cat([honest, bad]), norm_mads=3.0, cosine_min=0.0)
    assert all(r is None for r in reasons[:k - m])
    assert all(r is not None for r in reasons[k - m:])


def test_beta_reputation_by_hand():
    out = reputation(torch.tensor([3.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(out, torch.tensor([4 / 6, 1 / 2, 1 / 4]))


def test_sign_flippers_are_screened_out_with_the_reason_logged(caplog):
    base = ["data.num_nodes=8", "run.rounds=4", 'data.partition="iid"', "energy.enabled=false",
            "evaluation.personalize_steps=0", 'attack.kind="sign_flip"', "attack.scale=1.0",
            'attack.sites=["node-1", "node-5"]']
    attacked = run(small_config(*base), store=False)
    with caplog.at_level(logging.WARNING, logger="fedtune"):
        screened = run(small_config(*base, "screening.enabled=true"), store=False)
    s = screened.extra["screening"]
    assert s["left_out_rounds"] == {"node-1": 4, "node-5": 4}
    assert s["reputation"]["node-1"] < 0.3 < min(v for k, v in s["reputation"].items()
                                                 if k not in ("node-1", "node-5"))
    assert "round 1: screened out node-5: cosine" in caplog.text
    assert s["latest_reasons"]["node-1"].startswith("round 4: cosine -")
    assert screened.final_test_accuracy > attacked.final_test_accuracy + 0.1


@pytest.mark.parametrize("override", ['privacy.mode="central"', 'strategy.mode="async"',
                                      'strategy.name="qffl"', 'strategy.name="fednova"'])
def test_screening_is_refused_where_it_would_change_what_weights_mean(override):
    with pytest.raises(ConfigError, match=r"screening\.enabled"):
        small_config("screening.enabled=true", override)
