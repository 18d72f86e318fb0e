"""A whole run: central pretraining, the rounds (by the configured driver), the final
evaluation on every node, and the :class:`RunResult` with its honest status.

Drivers are registered by ``strategy.mode``: each is a function ``(coordinator,
first_round)`` that runs rounds ``first_round .. run.rounds`` through the coordinator's
public API. A new message flow (secure aggregation's extra stages) is one more driver.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

from ..algorithms.fairness import fairness_summary
from ..algorithms.selection import FixedSize
from ..coordinator import Coordinator
from ..energy.run_plan import plan_own_run, plan_vs_actual
from ..equity.bias_part import BiasAuditPart
from ..personal.evaluation import (
    adaptation,
    collect_evals,
    eval_instruction,
    personal_summary,
    training_sites,
)
from ..seeds import derived_seed
from ..types import EvalRes, NodeRoundRecord, RoundRecord, RunResult
from .buffered_async import run_buffered_async
from .sync import run_sync_rounds

log = logging.getLogger("fedtune")

Driver = Callable[[Coordinator, int], None]
def _secagg(coord: Coordinator, first_round: int) -> None:
    from ..secagg.driver import run_secagg_rounds

    run_secagg_rounds(coord, first_round)


DRIVERS: dict[str, Driver] = {"sync": run_sync_rounds, "async": run_buffered_async,
                              "secagg": _secagg}


def run_federation(coord: Coordinator) -> RunResult:
    """Run the coordinator's federation from its next round to the end."""
    t0 = time.perf_counter()
    cfg = coord.cfg
    pre: list[NodeRoundRecord] = []
    first = coord.state.round + 1
    if first == 1 and cfg.central.pretrain_steps and len(coord.y_central):
        pre.append(coord.meter_server(
            0, "pretrain", lambda: coord.central_train(0, cfg.central.pretrain_steps)))
        if coord.store is not None:
            test = coord.evaluate_central()
            rec = RoundRecord(0, [], [], float("nan"), test.get("loss"), test.get("accuracy"),
                              pre[0].wall_s, 0, 0, pre[0].energy_j, pre[0].co2_g,
                              coordinator_energy_j=pre[0].energy_j)
            coord.store.record_round(coord.run_id, rec, pre)
    try:
        DRIVERS[cfg.strategy.mode](coord, first)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            coord.writer.close()
        raise
    coord.writer.close()  # every round is stored before the final evaluation is
    evals, eval_ledger = evaluate_nodes(coord)
    for part in coord.round_parts:  # a served run's bias audit: the sites' counts
        if isinstance(part, BiasAuditPart) and part.remote:
            part.reported(evals)
    final = coord.evaluate_central()
    asr = None
    if cfg.attack.kind == "backdoor":  # the final model is loaded by evaluate_central
        from ..attack.round_part import backdoor_success

        asr = backdoor_success(coord.bench.flat.module, coord.x_test, coord.y_test, cfg.attack,
                               coord.bench.task)
    hist = coord.state.history
    ledgers = pre + eval_ledger
    ordered = sorted(evals.items())  # arrival order differs by runtime; sums must not
    acc_g = {k: v.metrics.get("accuracy", float("nan")) for k, v in ordered}
    acc_p = {k: v.metrics.get("accuracy_personalized", float("nan")) for k, v in ordered}
    result = RunResult(
        run_id=coord.run_id, rounds=hist, final_test_loss=final["loss"],
        final_test_accuracy=final.get("accuracy", float("nan")),
        node_accuracy_global=acc_g, node_accuracy_personalized=acc_p,
        fairness_global=fairness_summary(list(acc_g.values())),
        fairness_personalized=fairness_summary(list(acc_p.values())),
        total_bytes_down=sum(r.bytes_down for r in hist) + sum(x.bytes_down for x in ledgers),
        total_bytes_up=sum(r.bytes_up for r in hist) + sum(x.bytes_up for x in ledgers),
        total_energy_j=sum(r.energy_j for r in hist) + sum(x.energy_j for x in ledgers),
        total_co2_g=sum(r.co2_g for r in hist) + sum(x.co2_g for x in ledgers),
        wall_s=time.perf_counter() - t0, energy_method=coord.meter.code)
    for part in coord.round_parts:  # e.g. "privacy": epsilon, delta, the bound, the noise
        result.extra[part.name] = part.summary(coord.state.parts[part.name])
    if cfg.personalization.method != "none":
        result.extra["personal"].update(personal_summary(evals), rounds=coord.personal_rounds,
                                        new_sites=adaptation(coord))
        if "fedex" in result.extra:
            result.extra["personal"]["tuned"] = result.extra.pop("fedex")
    if asr is not None:
        result.extra["attack"]["backdoor_asr"] = asr
    if coord.stopped:
        result.extra["stopped"] = coord.stopped
    if cfg.strategy.selection == "carbon" and hist:
        result.extra["participation"] = participation(hist, coord.runtime.node_ids,
                                                      cfg.strategy.participation_floor)
        result.extra["clock"] = clock_summary(
            [coord.grids.hour(r.round, coord.selector) for r in hist], cfg.energy.start_hour,
            cfg.energy.round_hours)
    coordinator_j = sum(r.coordinator_energy_j for r in hist) + sum(x.energy_j for x in pre)
    result.extra["energy_split"] = {"coordinator_j": coordinator_j,
                                    "sites_j": result.total_energy_j - coordinator_j}
    result.extra["provenance"] = provenance(coord)
    if cfg.energy.enabled:
        result.extra["plan"] = plan_own_run(coord)
        result.extra["plan"].update(plan_vs_actual(result.extra["plan"], result))
    if coord.meter.method != coord.meter.code:  # how the figure was obtained, in words
        result.extra["energy_source"] = coord.meter.method
    population = len(coord.runtime.node_ids)
    if len(evals) < population and evals:
        values = [v for v in acc_g.values() if not math.isnan(v)]
        if values:
            lo, hi = sample_interval(values, population)
            result.extra["node_eval_sample"] = {"sites": len(evals), "of": population,
                                                "accuracy_mean_ci95": [lo, hi]}
    result.status, reason = coord.health.verdict()
    if reason:
        result.extra["status_reason"] = reason
        log.warning("run %s ended %s: %s", coord.run_id, result.status, reason)
    if coord.store is not None:
        coord.store.finish_run(coord.run_id, result, result.status)
    return result


def participation(rounds: list[RoundRecord], node_ids: list[str],
                  floor: float) -> dict[str, object]:
    """Each site's share of the rounds it took part in, and the smallest."""
    counts = dict.fromkeys(node_ids, 0)
    for record in rounds:
        for node in record.nodes:
            counts[node] = counts.get(node, 0) + 1
    share = {k: v / len(rounds) for k, v in sorted(counts.items())}
    return {"min_frac": min(share.values(), default=0.0), "floor": floor, "sites": share}


def provenance(coord: Coordinator) -> dict[str, object]:
    """What ran this run, and where: versions, seed, runtime, machine."""
    import platform

    import torch

    from .. import __version__

    runtime = "grpc" if coord.runtime.capabilities.nodes_join else coord.cfg.runtime.kind
    return {"fedtune": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "seed": coord.cfg.run.seed, "runtime": runtime,
            "device": str(coord.bench.flat.device), "host": platform.node(),
            "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} threads",
            "energy": coord.meter.method}


def clock_summary(hours: list[float], start: float, round_hours: float) -> dict[str, object]:
    """When each round started (hours of the run) and how long rounds waited for cleaner
    power."""
    expected, waited, deferred = start, 0.0, 0
    for hour in hours:
        if hour > expected + 1e-9:
            deferred, waited = deferred + 1, waited + hour - expected
        expected = hour + round_hours
    return {"round_hours": round_hours, "start_hours": hours, "deferred_hours": waited,
            "rounds_deferred": deferred}


def evaluated_sites(coord: Coordinator) -> list[str]:
    """Every training site, or a seeded uniform sample of ``evaluation.max_sites`` of them
    (held-out sites are evaluated apart: :func:`fedtune.personal.evaluation.adaptation`)."""
    ids = training_sites(coord)
    k = coord.cfg.evaluation.max_sites
    if len(ids) <= k:
        return ids
    return FixedSize(count=k).select(ids, 0, derived_seed(coord.cfg.run.seed, "final-eval"))


def sample_interval(values: list[float], population: int) -> tuple[float, float]:
    """A 95 % confidence interval of the mean over ``population`` sites from a simple random
    sample of them: mean +- 1.96 s / sqrt(k) sqrt(1 - k / N), with the finite-population
    correction (Cochran 1977, "Sampling Techniques", ch. 2)."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = 1.96 * sd / math.sqrt(k) * math.sqrt(max(0.0, 1 - k / population))
    return mean - half, mean + half


def evaluate_nodes(coord: Coordinator) -> tuple[dict[str, EvalRes], list[NodeRoundRecord]]:
    """Each node's accuracy with the global model and after local fine-tuning."""
    cfg, runtime = coord.cfg, coord.runtime
    round_ = cfg.run.rounds
    ins = eval_instruction(coord, round_)
    steps = int(ins.config["personalize_steps"])
    out, ledger = collect_evals(runtime.evaluate(evaluated_sites(coord), ins), round_, steps)
    ledger = coord.grids.reprice(ledger, round_, coord.selector)  # sites' own grids
    if coord.store is not None:
        coord.store.record_ledger(coord.run_id, ledger)
        coord.store.record_node_evals(coord.run_id, [
            (k, v.num_examples, v.metrics.get("accuracy", float("nan")),
             v.metrics.get("loss", float("nan")), v.metrics.get("accuracy_personalized"),
             v.metrics.get("loss_personalized")) for k, v in out.items()])
    return out, ledger
