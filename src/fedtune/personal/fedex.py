"""FedEx: the federation tunes its sites' fine-tuning by itself, while it trains.

The configuration space is the grid of ``personalization.tune_lr`` x ``tune_steps`` x
``tune_scope`` (the local learning rate, the local steps of a round, and which parameters a
site fine-tunes: ``"all"`` or its ``"head"``). The coordinator keeps one distribution theta
over the grid (uniform at first). Each round every selected site samples ``tune_samples``
configurations from theta (seeded by the run, the site and the round, so every runtime draws
the same), fine-tunes the shared model with each on its training data minus a fixed
validation part (``tune_val_fraction``), and reports the chosen indices and the validation
error (or loss: ``tune_metric``) after each. The first configuration's update travels, as
FedAvg's, so all configurations share one model (weight sharing); the others are fine-tuned
from the same start for validation only. The coordinator then takes an exponentiated-gradient
step (Khodak et al. 2021, Algorithm 1) on the reports' advantages ``A``:

    g_j = sum_i |V_i| A_i 1[c_i = j] / (theta_j sum_i |V_i|)
    theta <- theta * exp(-eta_t g) / Z,   eta_t = sqrt(2 log k) / (||g||_inf sqrt(t))

With one sample per site (FedEx as published), ``A = L - lambda`` with the baseline
``lambda`` the discounted mean (factor 0.9) of the earlier rounds' mean losses. With k > 1
samples, each sample's baseline is the mean of the same site's other samples in the same
round (the leave-one-out baseline of Kool, van Hoof & Welling 2019, unbiased): the site's own
difficulty and the round's model cancel out, which a global baseline leaves in. Measured on
mnist1d (20 sites, Dirichlet 0.1, 18 configurations): sites' validation errors differ by tens
of points while configurations differ by a few, so with one sample theta settled on whichever
configurations the easiest sites drew first. The tuned configuration is theta's mode; personal
models are then the global model fine-tuned with it. Written here (no library implements
FedEx for a flat-vector runtime): it is a few vector operations per round.

References:
    Khodak, Tu, Li, Li, Balcan, Smith & Talwalkar 2021, "Federated Hyperparameter Tuning:
    Challenges, Baselines, and Connections to Weight-Sharing" (NeurIPS).
    Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"
    (ICLR workshop DeepRLStructPred).
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
    """The site's part: sample configurations from theta, fine-tune with each on its
    training rows (the first one's update travels), report the choices and the validation
    losses after fine-tuning."""

    mutable: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.choices: list[int] = []
        self.configs: list[dict[str, Any]] = []
        self.val: torch.Tensor | None = None
        self.start: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def before_fit(self, ctx: FitContext) -> None:
        ins = ctx.instructions
        self.configs = parse_grid(ins.fedex_grid)
        theta = ctx.aux[THETA].double().clamp_min(0)
        if theta.numel() != len(self.configs) or not float(theta.sum()) > 0:
            raise MessageError(f"fedex_theta has {theta.numel()} weights for "
                               f"{len(self.configs)} configurations")
        if not 1 <= ins.fedex_samples <= 4:
            raise MessageError(f"fedex_samples = {ins.fedex_samples}; a site tries 1 to 4 "
                               "configurations per round")
        gen = torch.Generator().manual_seed(derived_seed(ctx.seed, "fedex"))
        self.choices = [int(c) for c in torch.multinomial(
            theta / theta.sum(), ins.fedex_samples, replacement=True, generator=gen)]
        c = self.configs[self.choices[0]]
        # the shared model trains every parameter at the first configuration's rate and
        # steps; the scope is which parameters a site fine-tunes for its own model
        ctx.plan = replace(ins.plan, lr=c["lr"], steps=c["steps"])
        train, self.val = validation_rows(ctx.num_train, ins.fedex_val_fraction,
                                          ctx.node_seed, ctx.node_id)
        ctx.rows = train
        flat = ctx.model  # the start every other fine-tuning begins from
        self.start = (flat.vector.detach().clone(), flat.buffers("travel"),
                      flat.buffers("local"))

    def _val_loss(self, ctx: FitContext) -> float:
        assert self.val is not None and ctx.evaluate_rows is not None
        metrics = ctx.evaluate_rows(self.val)
        # the error rate when the task measures accuracy (what sites are judged by), else loss
        return float(1.0 - metrics["accuracy"] if "accuracy" in metrics and
                     ctx.instructions.fedex_metric == "error" else metrics["loss"])

    def after_fit(self, ctx: FitContext) -> None:
        assert self.val is not None
        losses: dict[int, float] = {}
        if self.configs[self.choices[0]]["scope"] == "all":  # the training was its fine-tuning
            losses[self.choices[0]] = self._val_loss(ctx)
        flat = ctx.model
        for choice in self.choices:
            if choice in losses:  # the same configuration again: the same comparison
                continue
            assert self.start is not None and ctx.train is not None
            vector, travel, local = self.start
            flat.vector.copy_(vector)
            flat.load_buffers_("travel", travel)
            flat.load_buffers_("local", local)
            c = self.configs[choice]
            plan = replace(ctx.instructions.plan, lr=c["lr"], steps=c["steps"])
            ctx.train(plan, f"fedex-{choice}", rows=ctx.rows,
                      trainable=head_slice(flat) if c["scope"] == "head" else None)
            losses[choice] = self._val_loss(ctx)
        ctx.out_aux[CHOICE] = torch.tensor([float(c) for c in self.choices])
        ctx.out_aux[LOSS] = torch.tensor([losses[c] for c in self.choices])
        ctx.out_aux[VAL] = torch.tensor([float(self.val.numel())])


@dataclass
class FedExState:
    theta: torch.Tensor  # float64, one weight per configuration
    baseline: float = 0.0  # discounted mean of the rounds' mean validation losses
    baseline_weight: float = 0.0  # its discounted count (0: no round yet)
    rounds: int = 0


def sampling(theta: torch.Tensor, explore: float) -> torch.Tensor:
    """What sites sample from: theta mixed with the uniform distribution (EXP3's
    exploration, Auer et al. 2002), so every configuration keeps being compared."""
    return (1 - explore) * theta + explore / theta.numel()


def exponentiated_step(theta: torch.Tensor, reports: list[tuple[int, float, float]],
                       t: int, explore: float = 0.0) -> torch.Tensor:
    """One FedEx step from ``(choice, advantage, validation size)`` reports (in a fixed
    order): the advantage is the loss minus its baseline, weighed by the inverse of the
    probability the configuration was sampled with."""
    if not reports:
        return theta
    q = sampling(theta, explore)
    total = sum(v for _, _, v in reports)
    g = torch.zeros_like(theta)
    for choice, advantage, v in reports:
        g[choice] += v * advantage / (float(q[choice]) * total)
    top = float(g.abs().max())
    if top == 0:
        return theta
    eta = math.sqrt(2 * math.log(max(theta.numel(), 2))) / (top * math.sqrt(t))
    logits = theta.log() - eta * g
    return torch.softmax(logits, dim=0)


def advantages(choices: list[int], losses: list[float], baseline: float,
               ) -> list[tuple[int, float]]:
    """One site's ``(choice, loss - baseline)``: one sample against the global ``baseline``,
    several each against the mean of the others (leave-one-out)."""
    k = len(choices)
    if k == 1:
        return [(choices[0], losses[0] - baseline)]
    total = sum(losses)
    return [(c, loss - (total - loss) / (k - 1)) for c, loss in zip(choices, losses, strict=True)]


class FedExTuner:
    """The coordinator's part (a round part): theta, its step, and what was chosen where."""

    name = "fedex"

    def __init__(self, settings: Any) -> None:
        self.s = settings
        self.configs = grid(settings.tune_lr, settings.tune_steps, settings.tune_scope)
        self.pending: dict[str, tuple[list[int], list[float], float]] = {}
        self.choices: dict[str, list[int]] = {}  # per site, in round order: the trained one
        self.tried: dict[str, list[list[int]]] = {}  # per site and round: every one fine-tuned
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
                "fedex_val_fraction": self.s.tune_val_fraction,
                "fedex_samples": self.s.tune_samples}

    def instruction_aux(self, state: FedExState) -> dict[str, torch.Tensor]:
        return {THETA: sampling(state.theta, self.s.tune_explore).float()}

    def weigh(self, weight: float, aux: dict[str, torch.Tensor], state: FedExState,
              node_id: str) -> float:
        return weight

    def receive(self, update: Any, aux: dict[str, torch.Tensor], state: FedExState,
                node_id: str) -> Any:
        try:
            choices = [float(c) for c in aux[CHOICE].reshape(-1)]
            losses = [float(v) for v in aux[LOSS].reshape(-1)]
            val = float(aux[VAL].reshape(-1)[0])
        except (KeyError, IndexError):
            return update  # no report: the update still counts, theta does not move
        if 1 <= len(choices) == len(losses) <= 4 and val >= 1 and all(
                c.is_integer() and 0 <= c < len(self.configs) for c in choices) and all(
                math.isfinite(v) for v in losses):
            self.pending[node_id] = ([int(c) for c in choices], losses, val)
        return update

    def release(self, delta: torch.Tensor, state: FedExState, round_: int) -> torch.Tensor:
        return delta

    def after_round(self, state: FedExState) -> None:
        pending = [(k, *self.pending[k]) for k in sorted(self.pending)]
        self.pending.clear()
        if not pending:
            return
        for node_id, choices, losses, _ in pending:
            self.choices.setdefault(node_id, []).append(choices[0])
            self.tried.setdefault(node_id, []).append(sorted(set(choices)))
            for c, loss in dict(zip(choices, losses, strict=True)).items():
                self.losses.setdefault(node_id, {}).setdefault(c, []).append(loss)
        mean = sum(v * losses[0] for *_, losses, v in pending) / sum(v for *_, v in pending)
        baseline = state.baseline if state.baseline_weight else mean
        reports = [(c, a, v) for _, choices, losses, v in pending
                   for c, a in advantages(choices, losses, baseline)]
        state.rounds += 1
        state.theta = exponentiated_step(state.theta, reports, state.rounds,
                                         self.s.tune_explore)
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
                "local_steps": sum(self.configs[c]["steps"] for v in self.tried.values()
                                   for round_ in v for c in round_),
                "site_choices": self.choices, "site_tried": self.tried,
                "site_best": site_best}
