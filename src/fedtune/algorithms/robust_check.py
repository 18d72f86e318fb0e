"""Config-time rules of the robust aggregators (:mod:`fedtune.algorithms.robust`), apart
from them so that validating a config never imports torch."""

from __future__ import annotations

from typing import Any


def check_robust(cfg: Any) -> None:
    """Config-time rules (cfg: the RunConfig): ``strategy.byzantine`` within what the rule
    tolerates for the round's size, and the rule's knobs only with the rule."""
    s = cfg.strategy
    k = s.count or max(1, round(s.fraction * cfg.data.num_nodes))
    f = s.byzantine
    rule = {"krum": (2 * f + 2 < k, "2f + 2 < K"), "multi_krum": (2 * f + 2 < k, "2f + 2 < K"),
            "bulyan": (4 * f + 3 <= k, "4f + 3 <= K")}.get(s.aggregator)
    if rule is not None and not rule[0]:
        raise ValueError(f"strategy.aggregator = \"{s.aggregator}\" with strategy.byzantine = "
                         f"{f} needs {rule[1]}, and a round has K = {k} updates: "
                         "lower strategy.byzantine or select more sites")
    if s.byzantine and s.aggregator not in ("krum", "multi_krum", "bulyan"):
        raise ValueError("strategy.byzantine is read by the krum, multi_krum and bulyan "
                         f"aggregators; strategy.aggregator is \"{s.aggregator}\"")
