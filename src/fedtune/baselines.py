"""Baselines in the same command: what federating costs against pooling the data, and what it
gains against each site training alone.

* ``pooled``: the same model, from the same initial weights, trained on the union of every
  site's training data (what a data lake would allow), for the same number of passes over
  the data as one site makes in the whole federated run (``run.rounds`` x ``local.epochs``,
  or ``run.rounds`` x ``local.steps`` steps), with the same local optimizer settings.
* ``local``: each site alone with the same budget on its own data, evaluated on the central
  test set and on its own test split; reported as the mean, the worst site, and per site.
* ``probe``: a linear probe of the initial model, the baseline a fine-tuning method has to
  beat: the initial model's features (the input of its last linear layer, the pretrained
  encoder's sentence embedding for MiniLM) on the pooled training data, and a
  logistic regression fitted on them to convergence (scikit-learn).

References:
    Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes".

Both use fedtune's own local loop (:func:`fedtune.node.trainer.train_locally`) with seeds
derived from the run seed, so a baseline repeats exactly. They are computed after the
federated run and stored with its result (``RunResult.extra["baselines"]``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .algorithms.fairness import fairness_summary
from .config import RunConfig
from .node.node import Workbench
from .node.trainer import LocalPlan, evaluate_model, train_locally
from .seeds import derived_seed
from .task import Task

BASELINES = ("pooled", "local", "probe")


def baseline_plan(cfg: RunConfig) -> LocalPlan:
    """The local plan of a whole federated run's budget, as one training run."""
    loc = cfg.local
    return LocalPlan(epochs=loc.epochs * cfg.run.rounds, steps=loc.steps * cfg.run.rounds,
                     batch_size=loc.batch_size, lr=loc.lr, optimizer=loc.optimizer,
                     momentum=loc.momentum, weight_decay=loc.weight_decay,
                     max_grad_norm=loc.max_grad_norm)


def _train(task: Task, cfg: RunConfig, device: torch.device, x: torch.Tensor, y: torch.Tensor,
           purpose: str) -> Workbench:
    bench = Workbench.create(task, device, cfg.run.seed)  # the federated run's initial weights
    gen = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "baseline", purpose))
    train_locally(bench.flat, x.to(device), y.to(device), task.loss_fn, baseline_plan(cfg), gen)
    return bench


def _test(bench: Workbench, task: Task, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    device = bench.flat.device
    return evaluate_model(bench.flat.module, x.to(device), y.to(device), task.loss_fn,
                          task.metrics_fn)


def run_baselines(kinds: list[str], cfg: RunConfig, task: Task,
                  device: torch.device) -> dict[str, Any]:
    """The asked baselines' figures, JSON-ready."""
    data = task.data
    out: dict[str, dict[str, Any]] = {}
    if "pooled" in kinds:
        x = torch.cat([n.x_train for n in data.nodes])
        y = torch.cat([n.y_train for n in data.nodes])
        bench = _train(task, cfg, device, x, y, "pooled")
        test = _test(bench, task, data.x_test, data.y_test)
        out["pooled"] = {"test_accuracy": test.get("accuracy"), "test_loss": test["loss"],
                         "train_examples": int(x.shape[0])}
    if "local" in kinds:
        central: dict[str, float] = {}
        own: dict[str, float] = {}
        for node in data.nodes:
            bench = _train(task, cfg, device, node.x_train, node.y_train, node.node_id)
            central[node.node_id] = _test(bench, task, data.x_test, data.y_test).get(
                "accuracy", float("nan"))
            if node.x_test.shape[0]:
                own[node.node_id] = _test(bench, task, node.x_test, node.y_test).get(
                    "accuracy", float("nan"))
        values = list(central.values())
        out["local"] = {"test_accuracy_mean": sum(values) / len(values),
                        "test_accuracy_worst": min(values),
                        "node_accuracy_own": dataclasses.asdict(
                            fairness_summary(list(own.values()))),
                        "per_site_own_accuracy": own,
                        "per_site_test_accuracy": central}
    if "probe" in kinds:
        out["probe"] = linear_probe(task, cfg, device)
    return out


@torch.no_grad()
def _features(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The input of ``model``'s last linear layer, for every row of ``x``."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    try:
        model.eval()
        for i in range(0, x.shape[0], batch):
            model(x[i:i + batch])
    finally:
        handle.remove()
    return torch.cat(seen).cpu()


def linear_probe(task: Task, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """A logistic regression on the initial model's last-layer features (pooled data)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    bench = Workbench.create(task, device, cfg.run.seed)
    data = task.data
    x = torch.cat([n.x_train for n in data.nodes]).to(device)
    y = torch.cat([n.y_train for n in data.nodes]).numpy()
    raw = _features(bench.flat.module, x).numpy()
    scaler = StandardScaler().fit(raw)
    train = scaler.transform(raw)
    test = scaler.transform(_features(bench.flat.module, data.x_test.to(device)).numpy())
    fit = LogisticRegression(max_iter=2000, random_state=cfg.run.seed).fit(train, y)
    return {"test_accuracy": float(fit.score(test, data.y_test.numpy())),
            "features": int(train.shape[1]), "train_examples": int(train.shape[0])}
