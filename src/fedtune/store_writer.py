"""Each round's writes to the run store, on one background thread.

After a round, the coordinator writes the state file to resume from (fedtune serve), commits
the round's record and ledger, and now and then a checkpoint. None of it is needed for the
next round, so it runs on one writer thread while the next round's broadcast goes out and
the sites train: on two cores with a small model it was a tenth of the gRPC round time. The
writes stay in order (one thread), a round's record is committed only after its state file
is written (one job), and an error of a write (a full disk) is raised in the round loop at
the next round's write, or when the run waits for the writes at its end.

The job holds the round's tensors (the global parameters, the optimizer's moments) until it
is done; the coordinator replaces them with new tensors each round and never changes them in
place, so the job writes the round's own values. A coordinator that parks its model reads it
back from the state file, so it waits for the write before parking.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class RoundWriter:
    """Runs one round's store writes at a time, in order, on a background thread."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtune-store")
        self.pending: Future[None] | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start ``job`` once the previous one is done (raising its error, if it failed)."""
        self.wait()
        self.pending = self.pool.submit(job)

    def wait(self) -> None:
        """Until the last job is done; raises its error."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last job (raising its error) and stop the thread."""
        try:
            self.wait()
        finally:
            self.pool.shutdown()
