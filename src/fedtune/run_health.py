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

from .node.trainer import LocalPlan

COMPLETE, DEGRADED, FAILED = "complete", "degraded", "failed"


def max_examples(plan: LocalPlan, train_examples: int) -> int:
    """The most examples a node holding ``train_examples`` reports for one fit: the steps of
    ``plan`` times its batch size (a custom ``train_fn`` reports its training set)."""
    return max(train_examples, plan.num_steps(train_examples) * plan.batch_size)


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
