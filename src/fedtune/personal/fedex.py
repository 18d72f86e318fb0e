"""FedEx: the federation tunes its sites' fine-tuning by itself, while it trains.

The configuration space is the grid of ``personalization.tune_lr`` x ``tune_steps`` x
``tune_scope`` (the local learning rate, the local steps of a round, and which parameters a
site fine-tunes: ``"all"`` or its ``"head"``). The coordinator keeps one distribution theta
over the grid (uniform at first). Each round every selected site samples its configuration
from theta (seeded by the run, the site and the round, so every runtime draws the same),
fine-tunes the shared model with it on its training data minus a fixed validation part
(``tune_val_fraction``), and reports the chosen index and its validation error (or loss:
``tune_metric``) after fine-tuning; its update travels as FedAvg's, so all configurations
share one model (weight sharing). The coordinator then takes an exponentiated-gradient
step (Khodak et al. 2021, Algorithm 1):

    g_j = sum_i |V_i| (L_i - lambda) 1[c_i = j] / (theta_j sum_i |V_i|)
    theta <- theta * exp(-eta_t g) / Z,   eta_t = sqrt(2 log k) / (||g||_inf sqrt(t))

with the baseline ``lambda`` the discounted mean (factor 0.9) of the earlier rounds' mean
losses, summed in site-id order. The tuned configuration is theta's mode; personal models
are then the global model fine-tuned with it. Written here (no library implements FedEx for
a flat-vector runtime): it is a few vector operations per round.

References:
    Khodak, Tu, Li, Li, Balcan, Smith & Talwalkar 2021, "Federated Hyperparameter Tuning:
    Challenges, Baselines, and Connections to Weight-Sharing" (NeurIPS).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import MessageError
from ..node.context import FitContext
from ..seeds import derived_seed

THETA, CHOICE, LOSS, VAL = "fedex_theta", "fedex_choice", "fedex_loss", "fedex_val"
DISCOUNT = 0.9


def grid(lrs: Sequence[float], steps: Sequence[int], scopes: Sequence[str],
         ) -> list[dict[str, Any]]:
    """Every configuration, in a fixed order (lr slowest, scope fastest)."""
    return [{"lr": lr, "steps": k, "scope": s}
            for lr, k, s in itertools.product(lrs, steps, scopes)]


def grid_text(configs: list[dict[str, Any]]) -> str:
    """The grid as one instruction string: ``lr:steps:scope`` items joined by ``;``."""
    return ";".join(f"{c['lr']!r}:{c['steps']}:{c['scope']}" for c in configs)


def parse_grid(text: str) -> list[dict[str, Any]]:
    try:
        out = []
        for item in text.split(";"):
            lr, steps, scope = item.split(":")
            if scope not in ("all", "head") or int(steps) < 1 or not float(lr) > 0:
                raise ValueError(item)
            out.append({"lr": float(lr), "steps": int(steps), "scope": scope})
        return out
    except ValueError as exc:
        raise MessageError(f"fedex_grid item {exc} is not lr:steps:scope") from None


def head_slice(flat: Any) -> slice:
    """Where the model's head (its last module with parameters) sits in the flat vector."""
    from .layout import _head

    names = list(flat.spec.names) + list(flat.local_names)
    head = _head(flat.module)
    at = [i for i, n in enumerate(names) if n in head]
    if not at or at != list(range(at[0], at[-1] + 1)):
        raise MessageError("tune_scope = \"head\" needs the head's parameters side by side "
                           "in the vector")
    offsets = [0, *itertools.accumulate(flat.sizes)]
    return slice(offsets[at[0]], offsets[at[-1] + 1])


def validation_rows(num_train: int, fraction: float, seed: int, node_id: str,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A site's fixed (train, validation) row split for tuning."""
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(
        derived_seed(seed, node_id, "fedex-val")))
    k = min(max(1, round(fraction * num_train)), num_train - 1)
    return order[k:].sort().values, order[:k].sort().values


class FedExChoice:
    """The site's part: sample a configuration from theta, fine-tune with it on its training
    rows, report the choice and the validation loss after fine-tuning."""

    mutable: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.choice = 0
        self.val: torch.Tensor | None = None

    def before_fit(self, ctx: FitContext) -> None:
        ins = ctx.instructions
        configs = parse_grid(ins.fedex_grid)
        theta = ctx.aux[THETA].double().clamp_min(0)
        if theta.numel() != len(configs) or not float(theta.sum()) > 0:
            raise MessageError(f"fedex_theta has {theta.numel()} weights for "
                               f"{len(configs)} configurations")
        gen = torch.Generator().manual_seed(derived_seed(ctx.seed, "fedex"))
        self.choice = int(torch.multinomial(theta / theta.sum(), 1, generator=gen))
        c = configs[self.choice]
        ctx.plan = replace(ins.plan, lr=c["lr"], steps=c["steps"])
        if c["scope"] == "head":
            ctx.trainable = head_slice(ctx.model)
        train, self.val = validation_rows(ctx.num_train, ins.fedex_val_fraction,
                                          ctx.node_seed, ctx.node_id)
        ctx.rows = train

    def after_fit(self, ctx: FitContext) -> None:
        assert self.val is not None and ctx.evaluate_rows is not None
        metrics = ctx.evaluate_rows(self.val)
        # the error rate when the task measures accuracy (what sites are judged by), else loss
        loss = 1.0 - metrics["accuracy"] if "accuracy" in metrics and \
            ctx.instructions.fedex_metric == "error" else metrics["loss"]
        ctx.out_aux[CHOICE] = torch.tensor([float(self.choice)])
        ctx.out_aux[LOSS] = torch.tensor([loss])
        ctx.out_aux[VAL] = torch.tensor([float(self.val.numel())])


@dataclass
class FedExState:
    theta: torch.Tensor  # float64, one weight per configuration
    baseline: float = 0.0  # discounted mean of the rounds' mean validation losses
    baseline_weight: float = 0.0  # its discounted count (0: no round yet)
    rounds: int = 0


def exponentiated_step(theta: torch.Tensor, reports: list[tuple[int, float, float]],
                       baseline: float, t: int) -> torch.Tensor:
    """One FedEx step from ``(choice, loss, validation size)`` reports (in a fixed order)."""
    if not reports:
        return theta
    total = sum(v for _, _, v in reports)
    g = torch.zeros_like(theta)
    for choice, loss, v in reports:
        g[choice] += v * (loss - baseline) / (float(theta[choice]) * total)
    top = float(g.abs().max())
    if top == 0:
        return theta
    eta = math.sqrt(2 * math.log(max(theta.numel(), 2))) / (top * math.sqrt(t))
    logits = theta.log() - eta * g
    return torch.softmax(logits, dim=0)


class FedExTuner:
    """The coordinator's part (a round part): theta, its step, and what was chosen where."""

    name = "fedex"

    def __init__(self, settings: Any) -> None:
        self.s = settings
        self.configs = grid(settings.tune_lr, settings.tune_steps, settings.tune_scope)
        self.pending: dict[str, tuple[int, float, float]] = {}
        self.choices: dict[str, list[int]] = {}  # per site, in round order
        self.losses: dict[str, dict[int, list[float]]] = {}

    def adapt(self, strategy: Any) -> Any:
        # the base plan carries the longest configuration: the coordinator's bound on the
        # examples a site may report covers every choice
        return replace(strategy, node_plan={**strategy.node_plan,
                                            "steps": max(self.s.tune_steps)})

    def init(self) -> FedExState:
        k = len(self.configs)
        return FedExState(theta=torch.full((k,), 1.0 / k, dtype=torch.float64))

    def node_config(self, state: FedExState) -> dict[str, float | str]:
        return {"fedex_grid": grid_text(self.configs), "fedex_metric": self.s.tune_metric,
                "fedex_val_fraction": self.s.tune_val_fraction}

    def instruction_aux(self, state: FedExState) -> dict[str, torch.Tensor]:
        return {THETA: state.theta.float()}

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: FedExState,
                node_id: str) -> Any:
        try:
            choice, loss, val = (float(aux[key].reshape(-1)[0]) for key in (CHOICE, LOSS, VAL))
        except (KeyError, IndexError):
            return update  # no report: the update still counts, theta does not move
        if choice.is_integer() and 0 <= choice < len(self.configs) and math.isfinite(loss) \
                and val >= 1:
            self.pending[node_id] = (int(choice), loss, val)
        return update

    def release(self, delta: torch.Tensor, state: FedExState, round_: int) -> torch.Tensor:
        return delta

    def after_round(self, state: FedExState) -> None:
        reports = [self.pending[k] for k in sorted(self.pending)]
        for node_id in sorted(self.pending):
            choice, loss, _ = self.pending[node_id]
            self.choices.setdefault(node_id, []).append(choice)
            self.losses.setdefault(node_id, {}).setdefault(choice, []).append(loss)
        self.pending.clear()
        if not reports:
            return
        mean = sum(v * loss for _, loss, v in reports) / sum(v for *_, v in reports)
        baseline = state.baseline if state.baseline_weight else mean
        state.rounds += 1
        state.theta = exponentiated_step(state.theta, reports, baseline, state.rounds)
        weight = DISCOUNT * state.baseline_weight
        state.baseline = (weight * state.baseline + mean) / (weight + 1)
        state.baseline_weight = weight + 1

    def round_metrics(self, state: FedExState) -> dict[str, float]:
        return {}

    def stop_reason(self, round_: int, state: FedExState) -> str | None:
        return None

    def best(self, state: FedExState) -> dict[str, Any]:
        return dict(self.configs[int(state.theta.argmax())])

    def summary(self, state: FedExState) -> dict[str, Any]:
        site_best = {}
        for node_id, by_choice in sorted(self.losses.items()):
            choice = min(by_choice, key=lambda c: sum(by_choice[c]) / len(by_choice[c]))
            site_best[node_id] = self.configs[choice]
        return {"configs": len(self.configs), "best": self.best(state),
                "theta_max": float(state.theta.max()), "rounds": state.rounds,
                "local_steps": sum(self.configs[c]["steps"] for v in self.choices.values()
                                   for c in v),
                "site_choices": self.choices, "site_best": site_best}
