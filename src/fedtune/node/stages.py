"""What a node answers: one handler per kind of instruction. :mod:`fedtune.node.node` adds
fit and evaluate; a new protocol stage (secure aggregation's key exchange, ...) adds its own
with :func:`register_stage`, without importing the Node class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Stage = Callable[[Any, Any, Any], Any]  # (node, instruction, workbench) -> reply
STAGES: dict[type, Stage] = {}


def register_stage(instruction: type, handler: Stage) -> None:
    """Let nodes answer one more kind of instruction (a protocol stage of a new round
    driver): ``handler(node, instruction, bench)`` returns the reply message. Register the
    messages with :func:`fedtune.wire.register_message` too."""
    STAGES[instruction] = handler
