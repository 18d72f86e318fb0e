"""Buffered asynchronous aggregation (FedBuff): nodes train without waiting for each other.

Up to ``strategy.async_concurrency`` nodes train at once, each on the global model of the
moment it was asked. Every finished update enters a buffer with the weight
examples x (1 + tau)^-a, where tau counts the server steps since its node was asked; every
``strategy.async_buffer`` updates the server takes one step (``strategy.min_nodes`` only says
how many ready sites to wait for before starting), which is one "round" in the
records (``run.rounds`` steps in all), and the freed node is replaced by an idle one, chosen
by the seeded generator. Each dispatch carries its own task number as ``round``, so node
seeds and the node's replay protection stay per dispatch.

Runtimes that support it offer ``submit(node_id, ins)`` and ``collect()``: over gRPC these
are real concurrent sites; in one process, nodes run when asked and their replies are
released in the order of a seeded virtual clock (node i needs steps x speed_i), so a
simulation of slow and fast sites is deterministic.

References:
    Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation";
    Xie et al. 2019, "Asynchronous Federated Optimization" (polynomial staleness).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from ..coordinator import Coordinator
from ..errors import ConfigError
from ..runtime.base import not_asynchronous
from ..seeds import derived_seed
from ..types import NodeRoundRecord


def run_buffered_async(coord: Coordinator, first_round: int) -> None:
    """Run server steps ``first_round .. run.rounds`` asynchronously."""
    cfg, runtime = coord.cfg, coord.runtime
    if not runtime.capabilities.asynchronous:
        raise not_asynchronous(runtime)
    if coord.state.control is not None:
        raise ConfigError("strategy.mode = 'async' cannot run SCAFFOLD; choose another strategy")
    s = cfg.strategy
    runtime.wait_for_nodes(s.min_nodes)
    rng = np.random.default_rng(derived_seed(cfg.run.seed, "async"))
    asked: dict[str, int] = {}  # node -> server step of the model it was given
    task = (first_round - 1) * s.async_buffer * 1000  # task numbers stay unique on resume
    step = first_round
    fold, fold_cpu, nodes, examples = coord.new_fold(), 0.0, [], 0
    ledger: list[NodeRoundRecord] = []
    wall0 = time.perf_counter()

    def refill() -> None:
        nonlocal task
        idle = [n for n in runtime.node_ids if n not in asked]
        while idle and len(asked) < s.async_concurrency:
            node = idle.pop(int(rng.integers(len(idle))))
            task += 1
            asked[node] = step
            runtime.submit(node, coord.instruction(task))

    refill()
    while step <= cfg.run.rounds:
        if not asked:
            raise ConfigError("no node is available to train (strategy.mode = 'async')")
        reply = runtime.collect()
        node = reply.result.node_id
        given = asked.pop(node, None)
        res, row = coord.screen(reply, step, expected_round=None,
                                allowed=() if given is None else (node,), seen=())
        del reply
        ledger.append(row)
        if res is not None and given is not None:
            # folded on arrival (arrival order is the virtual clock's in one process), so
            # the buffer holds one accumulator, not async_buffer updates
            tau = step - given
            fold_cpu += coord.fold_in(fold, res, (1.0 + tau) ** -s.staleness_exponent)
            nodes.append(res.node_id)
            examples += res.num_examples
        del res
        if fold.count >= s.async_buffer:
            ledger.append(coord.meter_server(
                step, "aggregate", partial(coord.step, fold, (), examples, 1),
                extra_cpu=fold_cpu))
            coord.close_round(step, nodes, [], ledger, wall0)
            fold, fold_cpu, nodes, examples = coord.new_fold(), 0.0, [], 0
            ledger, wall0 = [], time.perf_counter()
            step += 1
        refill()
    runtime.drain()
