"""The synchronous round driver: every selected node trains on the same global model, the
coordinator waits for all of them (or the deadline), then takes one server step.

Replies arrive in the runtime's order; the coordinator's fold sums them in selection order,
so every runtime sums the same numbers in the same order (bitwise-equal results) and holds
one accumulator, not K updates. With ``server.park_model`` the driver lets go of the global
model while updates are collected (:class:`ModelParking`), and with bounded uploads it moves
an update that arrives before its turn to a temporary file so that its upload slot is free.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..coordinator import Coordinator
from ..errors import StoreError
from ..parking import ParkedVector, SavedVector, spill
from ..types import NodeRoundRecord, RoundRecord
from .late import late_updates

log = logging.getLogger("fedtune")
SPILL_BYTES = 1 << 20  # the upload gate's threshold: smaller updates never hold a slot


class ModelParking:
    """Holds the global parameters outside memory between dispatch and the server step.

    While updates are collected the coordinator then holds the running sum and the update
    being received, not the model as well. They are read back from the state file of the
    last round when there is one (serve writes it for --resume), else from a temporary file.
    """

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.parked: ParkedVector | SavedVector | None = None

    @property
    def directory(self) -> Path | None:
        store = self.coord.store
        return store.workspace / "tmp" if store is not None else None

    def park(self) -> None:
        st, coord = self.coord.state, self.coord
        coord.writer.wait()  # the last round's state file is complete
        if coord.saved_params is not None:  # the last round's state file holds them
            try:
                self.parked = SavedVector(coord.saved_params, "params", st.params)
            except (OSError, ValueError) as exc:
                log.info("round %d: parking in a temporary file: %s", st.round + 1, exc)
        try:
            if self.parked is None:
                self.parked = ParkedVector(st.params, self.directory)
        except OSError as exc:  # a full or unwritable disk costs memory, not the run
            log.warning("round %d: cannot park the model in %s (%s); it stays in memory "
                        "this round", st.round + 1, self.directory or "the temporary directory",
                        exc)
            return
        st.params = st.params.new_empty(0)

    def unpark(self) -> None:
        if self.parked is None:
            return
        try:
            self.coord.state.params = self.parked.load()
        except OSError as exc:
            raise StoreError(f"the parked global model could not be read back ({exc}); "
                             "continue from the last completed round with "
                             "`fedtune serve --resume`") from None
        finally:
            self.parked.close()
            self.parked = None

    def spilled(self, update: torch.Tensor) -> Callable[[], torch.Tensor]:
        """An update that arrived before its turn in the fold, moved to a temporary file so
        its receive buffer (and upload slot) is free until then."""
        return spill(update, self.directory)


def sync_round(coord: Coordinator, round_: int,
               parking: ModelParking | None = None) -> RoundRecord:
    """Run one synchronous round and return its record."""
    wall0 = time.perf_counter()
    cfg = coord.cfg
    parking = parking or ModelParking(coord)
    selected = coord.select(round_)
    order = {node_id: i for i, node_id in enumerate(selected)}
    ins = coord.instruction(round_)
    fold = coord.new_fold()
    fold_cpu = 0.0
    taken: dict[str, int] = {}  # node -> examples of its folded update
    failed: list[str] = []
    ledger: list[NodeRoundRecord] = []
    replies = coord.runtime.fit(selected, ins)
    del ins  # the runtime holds the broadcast until its last byte is sent
    if cfg.server.park_model:
        parking.park()
    try:
        for reply in replies:
            res, row = coord.screen(reply, round_, expected_round=round_, allowed=order,
                                    seen=taken)
            del reply
            ledger.append(row)
            if res is None:
                failed.append(row.node_id)
                if row.node_id in order:
                    fold.skip(order[row.node_id])
                continue
            taken[res.node_id] = res.num_examples
            position = order[res.node_id]
            spill = cfg.server.max_concurrent_uploads and position != fold.next \
                and "scaffold_dc" not in res.aux \
                and res.update.numel() * res.update.element_size() >= SPILL_BYTES
            fold_cpu += coord.fold_in(fold, res, 1.0, position=position,
                                      update=parking.spilled(res.update) if spill else None)
            del res  # a large update's receive buffer is freed once it is folded
        fold.close()
        late = late_updates(coord, round_, ledger)
    finally:
        parking.unpark()
    examples = sum(taken.values())
    ledger.append(coord.meter_server(round_, "aggregate",
                                     lambda: coord.step(fold, late, examples),
                                     extra_cpu=fold_cpu))
    nodes = sorted(taken, key=order.__getitem__)
    return coord.close_round(round_, nodes, failed, ledger, wall0)


def run_sync_rounds(coord: Coordinator, first_round: int) -> None:
    """Run rounds ``first_round .. run.rounds``, each after enough nodes are ready."""
    parking = ModelParking(coord)
    run_rounds(coord, first_round, lambda round_: sync_round(coord, round_, parking),
               coord.cfg.strategy.min_nodes)


def run_rounds(coord: Coordinator, first_round: int, one_round: Callable[[int], object],
               ready: int) -> None:
    """Rounds ``first_round .. run.rounds`` by ``one_round``, each once ``ready`` nodes are
    (where nodes join over time), until a round part stops the run (a privacy budget)."""
    for round_ in range(first_round, coord.cfg.run.rounds + 1):
        if coord.stop_reason(round_) is not None:
            log.warning("run stops before round %d: %s", round_, coord.stopped)
            return
        if coord.runtime.capabilities.nodes_join:
            coord.runtime.wait_for_nodes(ready)
        one_round(round_)
