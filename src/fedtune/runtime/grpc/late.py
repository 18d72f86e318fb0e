"""Results a site no longer owes: which tasks were asked, and the late updates kept.

A result is "owed" while its task is the site's current one; anything else (an answer after
the round's deadline, a replay, a task never asked) is settled the moment it arrives, so its
receive buffer, and the upload slot it holds, is freed at once. With
``server.stragglers = "stale"`` a late *fit* result is copied for the next aggregation, but
only when its task was really asked of that site and not already answered (so a replay is
kept at most once), at most one per site (its newest), and only while all kept copies fit
in ``server.stale_memory_mb``. Everything else is dropped.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from ...types import FitRes

KEEP_ROUNDS = 8  # asked tasks older than this many rounds are forgotten


class LateUpdates:
    """The fit tasks asked and not yet settled, and the late updates kept from them."""

    def __init__(self, *, keep: bool, memory_bytes: int) -> None:
        self.keep, self.memory_bytes = keep, memory_bytes
        self.lock = threading.Lock()
        self.asked: dict[int, tuple[str, int]] = {}  # task -> (site, round)
        self.kept: dict[str, tuple[FitRes, int]] = {}  # site -> (copy, bytes up)

    def asked_now(self, round_: int, tasks: dict[int, str]) -> None:
        """A round's fit tasks were sent (task -> site)."""
        with self.lock:
            self.asked = {t: a for t, a in self.asked.items() if a[1] >= round_ - KEEP_ROUNDS}
            self.asked.update((t, (site, round_)) for t, site in tasks.items())

    def answered(self, task_id: int) -> None:
        """The task's result came in time: it can no longer come late."""
        with self.lock:
            self.asked.pop(task_id, None)

    def settle(self, site: str, task_id: int, result: Any, nbytes: int) -> bool:
        """A result ``site`` did not owe; True when a copy was kept."""
        with self.lock:
            asked = self.asked.pop(task_id, None)
            if not (self.keep and isinstance(result, FitRes) and asked == (site, result.round)):
                return False
            older = self.kept.pop(site, None)
            held = sum(n for _, n in self.kept.values())
            if held + nbytes > self.memory_bytes:
                if older is not None:
                    self.kept[site] = older
                return False
        copy = replace(result, update=result.update.clone(),
                       aux={k: v.clone() for k, v in result.aux.items()})
        with self.lock:
            self.kept[site] = (copy, nbytes)  # a site's newer late update replaces its older
        return True

    def take(self) -> list[tuple[FitRes, int]]:
        """The kept late updates (with their bytes up), at most one per site; forgets them."""
        with self.lock:
            kept, self.kept = list(self.kept.values()), {}
        return kept
