"""FedEx against its update rule worked by hand and against a case with a clear winner;
held-out sites, personal evaluation every N rounds, FedBABU's frozen head, per-site input
shift."""

from __future__ import annotations

import math

import pytest
import torch

from fedtune.errors import ConfigError, FedtuneError
from fedtune.experiment import run
from fedtune.personal.fedex import FedExTuner, advantages, exponentiated_step, grid, parse_grid, sampling
from fedtune.personal.settings import PersonalizationSection
from fedtune.tasks import build_task

from .conftest import small_config


def test_exponentiated_step_by_hand():
    theta = torch.full((3,), 1 / 3, dtype=torch.float64)
    # config 0 did better than the baseline 0.5, config 2 worse, config 1 was not tried
    new = exponentiated_step(theta, [(0, 0.2 - 0.5, 10.0), (2, 0.8 - 0.5, 10.0)], t=1)
    g = 10 * 0.3 / (20 / 3)  # |g_0| = |g_2| = 0.45
    eta = math.sqrt(2 * math.log(3)) / g
    weights = torch.tensor([math.exp(eta * g), 1.0, math.exp(-eta * g)], dtype=torch.float64)
    torch.testing.assert_close(new, weights / weights.sum())
    assert new[0] > new[1] > new[2]
    assert torch.equal(exponentiated_step(theta, [], 1), theta)


def test_exploration_weighs_by_the_probability_a_configuration_was_sampled_with():
    theta = torch.tensor([0.9, 0.1], dtype=torch.float64)
    q = sampling(theta, 0.5)  # half theta, half uniform
    torch.testing.assert_close(q, torch.tensor([0.7, 0.3], dtype=torch.float64))
    new = exponentiated_step(theta, [(1, -0.3, 1.0)], t=4, explore=0.5)
    g1 = -0.3 / 0.3  # advantage / q_1 (one report: its validation share is 1)
    eta = math.sqrt(2 * math.log(2)) / abs(g1) / 2
    logits = theta.log() - eta * torch.tensor([0.0, g1], dtype=torch.float64)
    torch.testing.assert_close(new, torch.softmax(logits, 0))


def test_advantages_leave_one_out_or_against_the_global_baseline():
    assert advantages([3], [0.4], baseline=0.25) == [(3, pytest.approx(0.15))]
    out = advantages([0, 1, 2], [0.3, 0.6, 0.9], baseline=99.0)
    assert out == [(0, pytest.approx(0.3 - 0.75)), (1, pytest.approx(0.0)),
                   (2, pytest.approx(0.9 - 0.45))]


def _report(tuner, state, site, choices, losses):
    tuner.receive(None, {"fedex_choice": torch.tensor([float(c) for c in choices]),
                         "fedex_loss": torch.tensor(losses),
                         "fedex_val": torch.tensor([20.0])}, state, site)


def test_paired_samples_see_through_the_sites_own_difficulty():
    # config 1 is 5 points better at every site; the easy site happened to train config 0,
    # the hard one config 1. One sample per site compares sites, not configurations.
    def tuned(paired: bool) -> int:
        tuner = FedExTuner(PersonalizationSection(method="fedex", tune_lr=[0.01, 0.1],
                                                  tune_steps=[5], tune_scope=["all"]))
        state = tuner.init()
        for _ in range(3):
            easy, hard = ([0, 1], [0.10, 0.05]), ([1, 0], [0.55, 0.60])
            for site, (choices, losses) in (("easy", easy), ("hard", hard)):
                k = 2 if paired else 1
                _report(tuner, state, site, choices[:k], losses[:k])
            tuner.after_round(state)
        return int(state.theta.argmax())

    assert tuned(paired=False) == 0
    assert tuned(paired=True) == 1


def test_the_tuner_moves_toward_the_configuration_with_lower_validation_error():
    tuner = FedExTuner(PersonalizationSection(method="fedex", tune_lr=[0.01, 0.1],
                                              tune_steps=[5], tune_scope=["all"]))
    state = tuner.init()
    for _ in range(3):
        for site, choice, err in (("a", 0, 0.6), ("b", 1, 0.2), ("c", 0, 0.5)):
            aux = {"fedex_choice": torch.tensor([float(choice)]),
                   "fedex_loss": torch.tensor([err]), "fedex_val": torch.tensor([20.0])}
            tuner.receive(None, aux, state, site)
        tuner.receive(None, {"fedex_choice": torch.tensor([7.0]),  # out of range: ignored
                             "fedex_loss": torch.tensor([0.0]),
                             "fedex_val": torch.tensor([1.0])}, state, "d")
        tuner.after_round(state)
    assert tuner.best(state) == {"lr": 0.1, "steps": 5, "scope": "all"}
    summary = tuner.summary(state)
    assert summary["site_choices"] == {"a": [0, 0, 0], "b": [1, 1, 1], "c": [0, 0, 0]}
    assert summary["local_steps"] == 45 and "d" not in summary["site_choices"]


def test_a_grid_travels_as_text_and_a_bad_item_is_refused():
    configs = grid([0.01, 0.1], [5, 20], ["all", "head"])
    assert len(configs) == 8 and configs[1] == {"lr": 0.01, "steps": 5, "scope": "head"}
    from fedtune.personal.fedex import grid_text

    assert parse_grid(grid_text(configs)) == configs
    with pytest.raises(Exception, match="lr:steps:scope"):
        parse_grid("0.1:5:everything")


def test_fedex_finds_the_rate_that_learns_and_fine_tunes_with_it():
    res = run(small_config('personalization.method="fedex"', "run.rounds=6",
                           "personalization.tune_lr=[1e-6, 0.1]", "personalization.tune_steps=[10]",
                           'personalization.tune_scope=["all"]', "energy.enabled=false"),
              store=False)
    tuned = res.extra["personal"]["tuned"]
    assert tuned["best"]["lr"] == 0.1 and tuned["theta_max"] > 0.8
    assert set(tuned["site_choices"]) == {f"node-{i}" for i in range(4)}
    assert res.extra["personal"]["mean_acc"] > 0.8
    # each site tried two configurations a round (the same one twice costs one fine-tuning)
    tried = tuned["site_tried"]
    assert all(len(rounds) == 6 and all(1 <= len(t) <= 2 for t in rounds)
               for rounds in tried.values())
    assert tuned["local_steps"] == 10 * sum(len(t) for rounds in tried.values() for t in rounds)
    assert tuned["local_steps"] > 6 * 4 * 10, "some rounds compared two configurations"


def test_fedex_fine_tunes_with_the_optimizer_it_tuned_with():
    from types import SimpleNamespace

    from fedtune.node.instructions import EvalInstructions
    from fedtune.personal.evaluation import eval_config

    cfg = small_config('personalization.method="fedex"', "local.momentum=0.8",
                       "local.weight_decay=0.001")
    tuner = FedExTuner(cfg.personalization)
    coord = SimpleNamespace(cfg=cfg, round_parts=[tuner],
                            state=SimpleNamespace(parts={"fedex": tuner.init()}))
    plan = EvalInstructions.from_config(eval_config(coord)).plan
    assert (plan.momentum, plan.weight_decay, plan.optimizer) == (0.8, 0.001, "sgd")
    plain = SimpleNamespace(cfg=small_config('personalization.method="finetune"'),
                            round_parts=[])
    assert EvalInstructions.from_config(eval_config(plain)).plan.momentum == 0.0


def test_held_out_sites_never_train_and_are_evaluated_after_adapting():
    res = run(small_config('personalization.method="finetune"', "personalization.holdout_sites=1",
                           "personalization.adapt_steps=[0, 5]", "energy.enabled=false"),
              store=False)
    held = res.extra["personal"]["new_sites"]["sites"]
    assert len(held) == 1
    assert all(held[0] not in r.nodes for r in res.rounds)
    assert held[0] not in res.node_accuracy_personalized
    curve = res.extra["personal"]["new_sites"]["mean_acc_after_steps"]
    assert set(curve) == {"0", "5"} and curve["5"] >= curve["0"]
    per_site = res.extra["personal"]["new_sites"]["per_site_acc_after_steps"]
    assert {k: list(v) for k, v in per_site.items()} == {"0": held, "5": held}
    assert per_site["5"][held[0]] == pytest.approx(curve["5"])


def test_personal_models_are_evaluated_every_n_rounds():
    res = run(small_config('personalization.method="fedper"', "personalization.eval_every=2",
                           "run.rounds=5", "energy.enabled=false"), store=False)
    rounds = res.extra["personal"]["rounds"]
    assert [r["round"] for r in rounds] == [2, 4]
    assert all(0 < r["mean_acc"] <= 1 and r["sites"] == 4 for r in rounds)


def test_fedbabu_keeps_the_head_at_its_initial_values(tmp_path):
    from safetensors.torch import load_file

    from fedtune.store import RunStore

    cfg = small_config('personalization.method="fedbabu"', "run.checkpoint_every=3",
                       f'run.workspace="{tmp_path}"')
    res = run(cfg)
    store = RunStore(tmp_path)
    try:
        final = load_file(store.load_run(res.run_id)["checkpoints"][-1]["path"])
    finally:
        store.close()
    torch.manual_seed(cfg.run.seed)
    initial = build_task(cfg).model_factory().state_dict()
    assert torch.equal(final["3.weight"], initial["3.weight"]), "the head never moved"
    assert not torch.equal(final["1.weight"], initial["1.weight"]), "the body trained"
    assert res.fairness_personalized.mean > res.fairness_global.mean


def test_site_shift_gives_each_site_its_own_inputs_and_leaves_the_test_set():
    plain = build_task(small_config())
    shifted = build_task(small_config("data.options={site_shift=1.0}"))
    again = build_task(small_config("data.options={site_shift=1.0}"))
    assert torch.equal(plain.data.x_test, shifted.data.x_test)
    for a, b, c in zip(plain.data.nodes, shifted.data.nodes, again.data.nodes, strict=True):
        assert torch.equal(a.y_train, b.y_train) and not torch.allclose(a.x_train, b.x_train)
        assert torch.equal(b.x_train, c.x_train), "seeded"
    with pytest.raises(FedtuneError, match="site_shift"):
        run(small_config("data.options={site_shift=3.0}"), store=False)


def test_fedex_without_a_grid_is_refused():
    with pytest.raises(ConfigError, match="tune_lr"):
        small_config('personalization.method="fedex"', "personalization.tune_lr=[]")


def test_a_grid_too_large_for_one_instruction_is_refused():
    with pytest.raises(ConfigError, match="at most 512"):
        small_config('personalization.method="fedex"',
                     "personalization.tune_lr=" + str([0.001 * i for i in range(1, 20)]))


def test_the_label_prior_goes_into_the_heads_bias_by_hand():
    from torch import nn

    from fedtune.personal.label_prior import add_own_prior

    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    add_own_prior(model, torch.tensor([0, 0, 0, 1]))
    freq = torch.tensor([4 / 7, 2 / 7, 1 / 7])  # add-one smoothed counts 4, 2, 1
    torch.testing.assert_close(model[2].bias, freq.log() + math.log(3))
    # Saerens et al.: a head that knew nothing (uniform posteriors) now predicts the site's
    # own class frequencies, whatever the input
    torch.testing.assert_close(torch.softmax(model(torch.randn(6, 4)), 1), freq.expand(6, 3))


def test_the_label_prior_needs_a_classifier_head_with_a_bias():
    from torch import nn

    from fedtune.personal.label_prior import add_own_prior

    with pytest.raises(FedtuneError, match="bias"):
        add_own_prior(nn.Sequential(nn.Linear(4, 3, bias=False)), torch.tensor([0, 1]))
    with pytest.raises(FedtuneError, match="class labels"):
        add_own_prior(nn.Linear(4, 3), torch.tensor([0.5, 1.0]))
    with pytest.raises(FedtuneError, match="3 outputs"):
        add_own_prior(nn.Linear(4, 3), torch.tensor([0, 7]))


def test_prior_correction_personalizes_without_a_step_and_helps_new_sites():
    base = ['personalization.method="finetune"', "evaluation.personalize_steps=0",
            "data.alpha=0.1", "personalization.holdout_sites=1",
            "personalization.adapt_steps=[0]", "energy.enabled=false"]
    plain = run(small_config(*base), store=False).extra["personal"]
    res = run(small_config(*base, "personalization.prior_correction=true"), store=False)
    personal = res.extra["personal"]
    assert personal["mean_acc"] > res.fairness_global.mean + 0.05, "the prior alone helps"
    new = personal["new_sites"]["mean_acc_after_steps"]["0"]
    assert new > plain["new_sites"]["mean_acc_after_steps"]["0"]
