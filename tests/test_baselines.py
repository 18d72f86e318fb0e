"""Baselines in the same command: pooled data and each site alone, with the run's budget."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from torch.nn import functional as F

from fedtune.experiment import run
from fedtune.tasks import build_task

from .conftest import FEDTUNE, small_config

GD = ["run.rounds=4", "local.steps=1", "local.batch_size=100000", "local.momentum=0.0",
      "local.lr=0.3", "evaluation.personalize_steps=0", "energy.enabled=false",
      'run.baselines=["pooled", "local"]']


def gd(model, x, y, steps, lr=0.3):
    for _ in range(steps):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return model


def test_pooled_is_federated_gd_and_local_is_each_site_alone():
    """With one full-batch step per round, FedAvg is gradient descent on the pooled data
    (McMahan et al. 2017), so the pooled baseline must end at the federated test loss; each
    site alone is plain GD on its own data, computed here by hand."""
    cfg = small_config(*GD)
    result = run(cfg, store=False)
    base = result.extra["baselines"]
    assert base["pooled"]["test_loss"] == pytest.approx(result.final_test_loss, abs=1e-5)
    task = build_task(cfg)
    for node in task.data.nodes:
        torch.manual_seed(cfg.run.seed)
        model = gd(task.model_factory(), node.x_train, node.y_train, steps=4)
        with torch.no_grad():
            acc = float((model(task.data.x_test).argmax(1) == task.data.y_test).float().mean())
        assert base["local"]["per_site_test_accuracy"][node.node_id] == pytest.approx(acc)
    values = list(base["local"]["per_site_test_accuracy"].values())
    assert base["local"]["test_accuracy_worst"] == min(values)


def test_the_cli_reports_and_stores_the_baselines(tmp_path):
    out = subprocess.run([FEDTUNE, "run", "--set", "run.rounds=3", "--baselines",
                          "pooled,local", "--output", "json", "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["baselines"]["pooled"]["test_accuracy"] > 0.5
    assert len(summary["baselines"]["local"]["per_site_test_accuracy"]) == 10
    stored = json.loads(subprocess.run([FEDTUNE, "export", "last"], cwd=tmp_path,
                                       capture_output=True, text=True, timeout=60).stdout)
    assert stored["result"]["extra"]["baselines"] == summary["baselines"]
    bad = subprocess.run([FEDTUNE, "run", "--baselines", "pooled,lokal"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'lokal'" in bad.stderr


def test_the_linear_probe_fits_the_initial_models_last_layer_features():
    """Alain & Bengio 2016: a linear classifier on a layer's features. Here the features are
    the input of the MLP's last layer at initialization, computed by hand."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cfg = small_config("run.rounds=1", "evaluation.personalize_steps=0",
                       'run.baselines=["probe"]')
    probe = run(cfg, store=False).extra["baselines"]["probe"]
    task = build_task(cfg)
    torch.manual_seed(cfg.run.seed)
    model = task.model_factory()
    body = torch.nn.Sequential(*list(model.children())[:-1])
    x = torch.cat([n.x_train for n in task.data.nodes])
    y = torch.cat([n.y_train for n in task.data.nodes]).numpy()
    with torch.no_grad():
        train, test = body(x).numpy(), body(task.data.x_test).numpy()
    scaler = StandardScaler().fit(train)
    fit = LogisticRegression(max_iter=2000, random_state=0).fit(scaler.transform(train), y)
    want = fit.score(scaler.transform(test), task.data.y_test.numpy())
    assert probe["test_accuracy"] == pytest.approx(want)
    assert probe["features"] == train.shape[1] == 128
