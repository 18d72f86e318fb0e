"""Sample-level DP-SGD inside sites: per-example clipping checked against a hand loop, the
noise's spread, each site's epsilon against dp-accounting, calibration to a target, LoRA
(adapters only), and runs that store every site's epsilon."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import pld

from fedtune.experiment import run
from fedtune.models import mlp
from fedtune.params import FlatModel
from fedtune.privacy.accountant import PLD_INTERVAL
from fedtune.privacy.dp_sgd import DPSGD, site_epsilon, site_sigma
from fedtune.store import RunStore

from .conftest import small_config

pytest.importorskip("opacus")


def test_the_gradient_is_the_mean_of_clipped_per_example_gradients_by_hand():
    torch.manual_seed(0)
    flat = FlatModel(mlp(6, (5,), 3))
    x, y = torch.randn(7, 6) * 3, torch.randint(0, 3, (7,))
    dp = DPSGD(clip=0.5, sigma=0.0, rate=0.25, n=28, secure=False, seed=1)
    dp.backward(flat, x, y, F.cross_entropy, step=0)
    got = flat.grad.clone()
    want = torch.zeros_like(got)
    for i in range(7):  # one example at a time, clipped, summed
        flat.zero_grad()
        F.cross_entropy(flat.module(x[i:i + 1]), y[i:i + 1]).backward()
        g = flat.grad.clone()
        want += g * min(1.0, 0.5 / float(g.norm()))
    want /= 0.25 * 28  # the expected batch size of Poisson sampling
    assert torch.allclose(got, want, atol=1e-6)
    assert not all(p.__dict__.get("grad_sample") is not None for p in flat.params), \
        "the per-example gradients are let go"


def test_an_empty_poisson_batch_is_pure_noise_of_sigma_c_over_the_expected_batch():
    flat = FlatModel(mlp(400, (250,), 10))  # 102,760 parameters: many draws
    dp = DPSGD(clip=2.0, sigma=1.3, rate=0.1, n=50, secure=True, seed=0)
    loss = dp.backward(flat, torch.zeros(0, 400), torch.zeros(0, dtype=torch.long),
                       F.cross_entropy, step=0)
    assert float(loss) == 0.0
    assert flat.grad.double().std().item() == pytest.approx(1.3 * 2.0 / 5.0, rel=0.02)


def test_a_site_epsilon_is_the_poisson_subsampled_gaussian_of_its_steps():
    direct = pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    direct.compose(dpa.PoissonSampledDpEvent(32 / 400, dpa.GaussianDpEvent(1.1)), 120)
    eps = site_epsilon(sigma=1.1, rate=32 / 400, n=400, steps=120, delta=1e-5)
    assert eps == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    sigma = site_sigma(target_epsilon=2.0, rate=0.08, n=400, steps=120, delta=1e-5)
    assert 1.9 <= site_epsilon(sigma=sigma, rate=0.08, n=400, steps=120, delta=1e-5) <= 2.0


def test_lora_gets_per_example_gradients_for_its_adapters_only():
    pytest.importorskip("peft")
    from fedtune.text.minilm import minilm_classifier

    flat = FlatModel(minilm_classifier(2, kind="minilm-lora"))
    frozen = [p for p in flat.module.parameters() if not p.requires_grad]
    assert frozen, "the encoder is frozen"
    ids = torch.randint(1000, 2000, (4, 12))
    dp = DPSGD(clip=1.0, sigma=0.0, rate=0.5, n=8, secure=False, seed=0)
    dp.backward(flat, ids, torch.tensor([0, 1, 1, 0]), F.cross_entropy, step=0)
    assert torch.isfinite(flat.grad).all() and float(flat.grad.norm()) > 0
    assert float(flat.grad.norm()) <= 4 * 1.0 / (0.5 * 8) + 1e-5  # 4 clipped examples / qn
    assert all(p.grad is None or not p.requires_grad for p in frozen)


def test_sites_report_their_own_epsilon_and_the_store_keeps_it(tmp_path):
    cfg = small_config("privacy.sample_dp=true", "privacy.sample_epsilon=3",
                       "privacy.secure_rng=false", "run.rounds=2",
                       f'run.workspace="{tmp_path}"')
    result = run(cfg)
    sample = result.extra["sample_privacy"]
    assert len(sample["sites"]) == 4 and not sample["private"]
    # calibrated for two rounds of every round's steps; every site trained in both rounds
    assert all(2.8 <= eps <= 3.0 for eps in sample["sites"].values())
    store = RunStore(tmp_path)
    try:
        rows = [n for n in store.load_run("last")["node_metrics"] if n["phase"] == "fit"]
    finally:
        store.close()
    assert all(r["epsilon"] is not None for r in rows)
    final = {r["node_id"]: r["epsilon"] for r in rows if r["round"] == 2}
    assert final == sample["sites"]
    assert run(cfg.model_copy(update={"run": cfg.run.model_copy(update={"workspace": str(
        tmp_path / "again")})})).final_test_loss == result.final_test_loss, "seeded: repeats"


def test_a_custom_training_loop_cannot_claim_dp_sgd():
    from fedtune.data import build_federated_data
    from fedtune.task import Task

    def train_fn(model, x, y, plan, generator):
        return 1

    data = build_federated_data("digits", num_nodes=3, partition="iid", seed=0)
    task = Task(lambda: mlp(64, (8,), 10), data, train_fn=train_fn)
    result = run(small_config("privacy.sample_dp=true", "data.num_nodes=3", "run.rounds=1"),
                 task=task, store=False)
    assert result.status == "failed"
    assert "custom train_fn" in result.extra["status_reason"] or result.rounds[0].failed
