"""The coordinator's secure-aggregation round (``strategy.mode = "secagg"``): the four
exchanges of :mod:`fedtune.secagg.protocol`, then the sum, then the usual server step.

The coordinator routes public keys and sealed shares and sums masked inputs; it sees no
single update. Sites that drop after sharing keys are recovered: their ``s`` keys are
rebuilt from their neighbours' shares and the masks they shared with the survivors removed.
A round is aborted (the model stays as it is, the round is recorded with the reason, and the
run's health counts it) when fewer than ``strategy.min_nodes`` sites (at least 2) send keys,
when fewer than 2 masked inputs arrive (or fewer than ``strategy.min_nodes`` with distributed
DP, whose noise is split among that many sites), or when some site's secret has fewer than t
shares left.

The neighbour graph (Bell et al. 2020): with k < n - 1, the sites are placed on a ring in a
seeded random order and each is a neighbour of the k/2 nearest on either side (a Harary
graph), so every site shares keys and masks with k = O(log n) others, not n - 1.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from ..coordinator import Coordinator
from ..rounds.sync import run_rounds
from ..seeds import derived_seed
from ..types import FitRes, NodeRoundRecord, RoundRecord
from . import keys, shamir
from .masking import Ring
from .protocol import (
    SEALED_BYTES,
    SHARE_BYTES,
    MaskedInput,
    MaskInput,
    SealedShares,
    ShareKeys,
    Unmask,
    UnmaskShares,
    install,
)

log = logging.getLogger("fedtune")


def neighbour_count(n: int, asked: int) -> int:
    """k: ``asked`` (0: 4 ceil(log2 n)), even, at most n - 1."""
    k = asked or 4 * math.ceil(math.log2(max(n, 2)))
    if k >= n - 1:
        return n - 1
    return max(2, k - k % 2)


def neighbour_graph(ids: list[str], k: int, seed: int) -> dict[str, list[str]]:
    """Each site's k neighbours (symmetric), in the order of ``ids``."""
    n = len(ids)
    rank = {u: i for i, u in enumerate(ids)}
    if k >= n - 1:
        return {u: [v for v in ids if v != u] for u in ids}
    ring = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    out: dict[str, list[str]] = {}
    for i, u in enumerate(ring):
        near = {ring[(i + j) % n] for j in range(-(k // 2), k // 2 + 1) if j}
        out[u] = sorted(near, key=rank.__getitem__)
    return out


class _Round:
    """One secure-aggregation round's bookkeeping."""

    def __init__(self, coord: Coordinator, round_: int) -> None:
        self.coord, self.round = coord, round_
        self.ledger: list[NodeRoundRecord] = []
        self.failed: list[str] = []

    def stage_row(self, node_id: str, reply: Any, ok: bool, why: str = "") -> None:
        self.ledger.append(NodeRoundRecord(self.round, node_id, "secagg" if ok else "failed",
                                           0, 0, float("nan"), 0.0, 0.0, reply.bytes_down,
                                           reply.bytes_up, 0.0, 0.0, why[:200]))
        if not ok:
            self.failed.append(node_id)
            log.warning("round %d: secure aggregation dropped %s: %s", self.round, node_id, why)


def secagg_round(coord: Coordinator, round_: int) -> RoundRecord:
    """Run one secure-aggregation round and return its record."""
    wall0 = time.perf_counter()
    cfg, runtime, sa = coord.cfg, coord.runtime, coord.cfg.secagg
    r = _Round(coord, round_)
    res: Any  # each stage's reply, checked before use
    selected = coord.select(round_)
    order = {node_id: i for i, node_id in enumerate(selected)}
    ring = Ring(sa.bits, sa.clip_range, max(1, len(selected)))
    ins = coord.instruction(round_)
    ins.config.update({"secagg_bits": ring.bits, "secagg_clip": ring.clip,
                       "secagg_summands": ring.summands})
    public: dict[str, torch.Tensor] = {}
    examples: dict[str, int] = {}
    for reply in runtime.fit(selected, ins):
        res = reply.result
        why = _fit_problem(coord, res, round_, order, public)
        if why is not None:
            r.stage_row(getattr(res, "node_id", "?"), reply, False, why)
            continue
        public[res.node_id] = torch.cat([res.aux["secagg.c_pk"], res.aux["secagg.s_pk"]])
        examples[res.node_id] = res.num_examples
        m = res.meter
        r.ledger.append(NodeRoundRecord(round_, res.node_id, "fit", res.num_examples,
                                        res.num_steps, res.train_loss, m.wall_s, m.cpu_s,
                                        reply.bytes_down, reply.bytes_up, m.energy_j, m.co2_g,
                                        m.energy_method))
    u1 = sorted(public, key=order.__getitem__)
    need = max(2, cfg.strategy.min_nodes)
    if len(u1) < need:
        return _abort(r, wall0, f"{len(u1)} sites answered, secure aggregation needs {need}")
    k = neighbour_count(len(u1), sa.neighbours)
    if sa.neighbours > k and round_ == 1:
        log.warning("secagg.neighbours = %d but %d sites shared keys: every site has the other "
                    "%d as neighbours", sa.neighbours, len(u1), k)
    t = math.floor(sa.threshold * k) + 1
    graph = neighbour_graph(u1, k, derived_seed(cfg.run.seed, round_, "secagg-graph"))
    point = {u: i + 1 for i, u in enumerate(u1)}

    # 1: keys out, sealed shares back
    sealed_by: dict[str, SealedShares] = {}
    messages = {u: ShareKeys(round_, graph[u], [point[v] for v in graph[u]], point[u], t,
                             torch.stack([public[v] for v in graph[u]])) for u in u1}
    for reply in runtime.exchange_each(messages):
        res = reply.result
        ok = isinstance(res, SealedShares) and res.round == round_ and res.node_id in graph \
            and res.recipients == graph[res.node_id] \
            and tuple(res.sealed.shape) == (len(graph[res.node_id]), SEALED_BYTES)
        r.stage_row(res.node_id, reply, ok, "" if ok else _why(res, "sealed shares"))
        if ok:
            sealed_by[res.node_id] = res
    u2 = [u for u in u1 if u in sealed_by]
    asked = u2
    if sa.simulated_dropout:  # these sites shared their secrets, then drop: never asked again
        rng = np.random.default_rng(derived_seed(cfg.run.seed, round_, "secagg-dropout"))
        count = min(len(u2), math.ceil(sa.simulated_dropout * len(u2) - 1e-9))
        gone = set(rng.choice(u2, size=count, replace=False))
        asked = [u for u in u2 if u not in gone]
        r.failed.extend(u for u in u2 if u in gone)

    # 2: each site's sealed shares to it, masked inputs back, summed as they come
    total = ring.zeros(coord.numel)
    masked: set[str] = set()
    messages2 = {}
    for u in asked:
        senders = [v for v in graph[u] if v in sealed_by]
        rows = [sealed_by[v].sealed[sealed_by[v].recipients.index(u)] for v in senders]
        messages2[u] = MaskInput(round_, senders, torch.stack(rows) if rows else
                                 torch.zeros((0, SEALED_BYTES), dtype=torch.uint8))
    for reply in runtime.exchange_each(messages2):
        res = reply.result
        ok = isinstance(res, MaskedInput) and res.round == round_ and res.node_id in messages2 \
            and res.masked.dtype in (torch.int32, torch.int64) \
            and tuple(res.masked.shape) == (coord.numel,)
        r.stage_row(res.node_id, reply, ok, "" if ok else _why(res, "a masked input"))
        if ok:
            total = ring.add(total, ring.from_wire(res.masked))
            masked.add(res.node_id)
        del res, reply
    u3 = [u for u in u2 if u in masked]
    need = need if cfg.privacy.mode == "distributed" else 2
    if len(u3) < need:
        return _abort(r, wall0, f"{len(u3)} masked inputs arrived, secure aggregation needs "
                                f"{need}")
    dropped = [u for u in u2 if u not in masked]

    # 3: which neighbours survived; shares of their seeds and of the dropped ones' keys back
    seeds: dict[str, list[tuple[int, int]]] = {u: [] for u in u3}
    lost: dict[str, list[tuple[int, int]]] = {u: [] for u in dropped}
    messages3 = {u: Unmask(round_, [*(v for v in graph[u] if v in masked), u],
                           [v for v in graph[u] if v in lost]) for u in u3}
    for reply in runtime.exchange_each(messages3):
        res = reply.result
        ok = isinstance(res, UnmaskShares) and res.round == round_ and res.node_id in messages3 \
            and tuple(res.shares.shape) == (len(res.owners), SHARE_BYTES) \
            and len(res.kinds) == len(res.owners)
        r.stage_row(res.node_id, reply, ok, "" if ok else _why(res, "unmasking shares"))
        if not ok:
            continue
        told = messages3[res.node_id]
        for owner, kind, share in zip(res.owners, res.kinds, res.shares, strict=True):
            table = seeds if kind == "b" and owner in told.survivors else \
                lost if kind == "s" and owner in told.dropped else None
            if table is not None:
                table[owner].append((point[res.node_id], int.from_bytes(share.numpy().tobytes(),
                                                                        "big")))
    short = [u for u, s in {**seeds, **lost}.items() if len(s) < t]
    if short:
        return _abort(r, wall0, f"too many dropouts: site {short[0]}'s secret has fewer than "
                                f"t = {t} shares left ({len(short)} such sites)")

    # the sum of masked inputs, minus self masks, minus the dropped sites' pairwise masks
    for u in u3:
        seed = shamir.combine(seeds[u], length=32)
        total = ring.sub(total, keys.expand(seed, coord.numel, ring.bits))
    for v in dropped:
        s_sk = shamir.combine(lost[v], length=32)
        peers = [u for u in graph[v] if u in seeds]
        agreed = keys.agree_all(s_sk, [keys_of(public[u])[1] for u in peers], b"mask")
        for u, key in zip(peers, agreed, strict=True):
            mask = keys.expand(key, coord.numel, ring.bits)
            total = ring.sub(total, mask) if point[v] > point[u] else ring.add(total, mask)
    mean = ring.decode(total) / len(u3)
    fold = coord.new_fold()
    fold.append(mean.to(coord.device), float(len(u3)), 1.0)
    trained = sum(examples[u] for u in u3)
    r.ledger.append(coord.meter_server(round_, "aggregate",
                                       lambda: coord.step(fold, (), trained, min_updates=1)))
    return coord.close_round(round_, u3, r.failed, r.ledger, wall0)


def keys_of(public: torch.Tensor) -> tuple[bytes, bytes]:
    raw = bytes(public.numpy().tobytes())
    return raw[:32], raw[32:]


def _fit_problem(coord: Coordinator, res: Any, round_: int, order: dict[str, int],
                 seen: dict[str, Any]) -> str | None:
    if not isinstance(res, FitRes):
        return getattr(res, "reason", "answered with the wrong kind")
    if res.node_id not in order:
        return "was not asked"
    if res.node_id in seen:
        return "answered twice"
    if res.round != round_:
        return f"answered round {res.round} during round {round_}"
    for name in ("secagg.c_pk", "secagg.s_pk"):
        key = res.aux.get(name)
        if key is None or key.dtype != torch.uint8 or tuple(key.shape) != (32,):
            return f"sent no valid {name} (is the site a fedtune with secure aggregation?)"
    return coord.valid(res, masked=True)


def _why(res: Any, what: str) -> str:
    return getattr(res, "reason", f"sent no valid {what}")


def _abort(r: _Round, wall0: float, reason: str) -> RoundRecord:
    coord = r.coord
    coord.unchanged_because = f"secure aggregation aborted: {reason}"
    log.warning("round %d: secure aggregation aborted (%s); the global model is unchanged",
                r.round, reason)
    return coord.close_round(r.round, [], r.failed, r.ledger, wall0)


def run_secagg_rounds(coord: Coordinator, first_round: int) -> None:
    """Rounds ``first_round .. run.rounds`` by secure aggregation."""
    install()
    run_rounds(coord, first_round, lambda round_: secagg_round(coord, round_),
               max(2, coord.cfg.strategy.min_nodes))
