"""One round in a few words, for the live progress of ``fedtune run`` and ``fedtune serve``:
accuracy, privacy spent, bytes and energy so far."""

from __future__ import annotations

from typing import Any


class RoundStatus:
    """Accumulates the run's bytes and energy over the rounds it is shown."""

    def __init__(self) -> None:
        self.bytes, self.joules = 0, 0.0

    def __call__(self, rec: Any) -> str:
        self.bytes += rec.bytes_up + rec.bytes_down
        self.joules += rec.energy_j
        parts = [] if rec.test_accuracy is None else [f"acc {rec.test_accuracy:.4f}"]
        if rec.epsilon is not None:
            parts.append(f"ε {rec.epsilon:.3g}")
        parts.append(f"{self.bytes / 1e6:,.1f} MB")
        parts.append(f"{self.joules:,.3g} J")
        return " ".join(parts)
