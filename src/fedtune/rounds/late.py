"""Stragglers' updates from earlier rounds, folded into the current one with a staleness
weight, when the runtime keeps them (gRPC with ``server.stragglers = "stale"``)."""

from __future__ import annotations

import logging

from ..coordinator import Coordinator
from ..types import FitRes, NodeRoundRecord

log = logging.getLogger("fedtune")


def late_updates(coord: Coordinator, round_: int,
                 ledger: list[NodeRoundRecord]) -> list[tuple[FitRes, float]]:
    """Stragglers' updates from earlier rounds, with staleness weights (1 + tau)^-a, when
    the runtime keeps them (gRPC with server.stragglers = "stale").

    References:
        Xie et al. 2019, "Asynchronous Federated Optimization" (polynomial staleness).
    """
    if not coord.runtime.capabilities.keeps_late or coord.cfg.server.stragglers != "stale":
        return []
    out = []
    late = sorted(coord.runtime.take_late(), key=lambda item: (item[0].round, item[0].node_id))
    for res, bytes_up in late:
        problem = coord.valid(res)
        if problem is None and res.round >= round_:
            problem = f"claims round {res.round} during round {round_}"
        if problem is not None:
            log.warning("round %d: dropped late update of %s: %s", round_, res.node_id,
                        problem)
            continue
        tau = round_ - res.round
        factor = (1.0 + tau) ** -coord.cfg.server.staleness_exponent
        log.info("round %d: late update of %s from round %d, weight x %.3f", round_,
                 res.node_id, res.round, factor)
        out.append((res, factor))
        m = res.meter
        ledger.append(NodeRoundRecord(round_, res.node_id, "late", res.num_examples,
                                      res.num_steps, res.train_loss, m.wall_s, m.cpu_s, 0,
                                      bytes_up, m.energy_j, m.co2_g, m.energy_method))
    return out
