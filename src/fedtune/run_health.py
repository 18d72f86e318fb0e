"""Whether a run learned anything, and how much one node may weigh in a round.

A federation whose every update is refused (malformed, non-finite, over its weight bound) or
whose aggregate would make the model non-finite keeps its model unchanged for that round.
Such rounds are counted here, with the reason, so that a run which learned nothing does not
end ``complete``: it ends ``failed`` when no round changed the model, ``degraded`` when a
quarter of its rounds or its last two rounds did not, and the reason says which and why.

The weight bound: a node's update is weighted by the examples it reports, so a node that
claims too many would dominate the round. The most it can honestly report for one fit is the
number of examples the round's plan makes it visit, given the training examples it has (a
simulated node's data, a real site's registration when it joined).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from .node.trainer import LocalPlan
from .wire import all_finite

COMPLETE, DEGRADED, FAILED = "complete", "degraded", "failed"


def max_examples(plan: LocalPlan, train_examples: int) -> int:
    """The most examples a node holding ``train_examples`` reports for one fit, on any subset
    of its rows (FedEx trains on its rows minus a validation part): the steps of ``plan``
    times its batch size, plus one per step when batches hold more than one example and it
    holds more than a batch (a last slice of one example joins the batch before it: 97 rows
    in batches of 32 are 32, 32 and 33); a custom ``train_fn`` reports its training set."""
    merged = plan.batch_size > 1 and train_examples > plan.batch_size
    per_step = plan.batch_size + (1 if merged else 0)
    return max(train_examples, plan.num_steps(train_examples) * per_step)


def update_problem(res: Any, numel: int, plan: LocalPlan, runtime: Any, *,
                   masked: bool = False) -> str | None:
    """Why the update ``res`` cannot be folded (shape, dtype, finiteness, more examples than
    the node holds), or None; ``masked``: only the claimed examples (the update travels
    later, masked)."""
    if not masked:
        if res.update.shape != (numel,) or res.update.dtype != torch.float32:
            return (f"update has shape {tuple(res.update.shape)} and dtype {res.update.dtype}, "
                    f"expected ({numel},) float32")
        dc = res.aux.get("scaffold_dc")
        if dc is not None and (dc.shape != (numel,) or dc.dtype != torch.float32):
            return f"scaffold_dc has shape {tuple(dc.shape)}, expected ({numel},) float32"
        if (res.encoding or not runtime.capabilities.checks_finite) \
                and not (all_finite(res.update) and (dc is None or all_finite(dc))):
            return "update holds NaN or infinite values"
    if not res.num_examples >= 1:
        return f"update claims {res.num_examples} examples"
    known = runtime.train_examples(res.node_id)
    bound = max_examples(plan, known) if known is not None else None
    if bound is not None and res.num_examples > bound:
        return (f"update claims {res.num_examples} examples; the {known} training "
                f"examples it has allow at most {bound} per round")
    return None


@dataclass
class RunHealth:
    """Rounds run by this process and those that left the model unchanged, with why."""

    rounds: list[int] = field(default_factory=list)
    unchanged: dict[int, str] = field(default_factory=dict)

    def record(self, round_: int, unchanged_because: str | None) -> None:
        self.rounds.append(round_)
        if unchanged_because is not None:
            self.unchanged[round_] = unchanged_because

    def verdict(self) -> tuple[str, str]:
        """(status, reason): complete with no reason, or degraded / failed and why."""
        n, bad = len(self.rounds), len(self.unchanged)
        if not bad:
            return COMPLETE, ""
        why, _ = Counter(self.unchanged.values()).most_common(1)[0]
        listed = ", ".join(str(r) for r in sorted(self.unchanged)[:10])
        more = "" if bad <= 10 else f" and {bad - 10} more"
        if bad == n:
            return FAILED, (f"no round changed the model ({n} of {n} unchanged; most often: "
                            f"{why})")
        trailing = n >= 2 and all(r in self.unchanged for r in self.rounds[-2:])
        if 4 * bad >= n or trailing:
            return DEGRADED, (f"{bad} of {n} rounds left the model unchanged (rounds "
                              f"{listed}{more}; most often: {why})")
        return COMPLETE, ""
