"""A protocol stage that is not fit or evaluate, added from outside fedtune's runtimes: the
coordinator asks each node for its training-label counts (what a hidden-bias audit reads).
:func:`register` teaches a process the stage; sites call it through ``--task``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from fedtune.message_schema import MessageFields, NodeId, Round
from fedtune.node.node import Node, Workbench, register_stage
from fedtune.task import Task
from fedtune.wire import register_message


@dataclass
class CountLabels:
    round: int
    num_classes: int


@dataclass
class LabelCounts:
    node_id: str
    round: int
    counts: torch.Tensor  # int64 [num_classes]


class CountLabelsFields(MessageFields):
    round: Round
    num_classes: Annotated[int, Field(ge=1, le=10_000)]


class LabelCountsFields(MessageFields):
    node_id: NodeId
    round: Round


def count_labels(node: Node, ins: CountLabels, bench: Workbench) -> LabelCounts:
    return LabelCounts(node.node_id, ins.round,
                       torch.bincount(node.data.y_train, minlength=ins.num_classes))


def register() -> None:
    """Teach this process the stage: its two messages and the node's handler."""
    register_message(CountLabels, fields=CountLabelsFields, tensors={})
    register_message(LabelCounts, fields=LabelCountsFields,
                     tensors={"counts": (torch.int64, 1)}, required={"counts"}, reply=True)
    register_stage(CountLabels, count_labels)


def build(cfg: object) -> Task:
    """The config's bundled task; a site given ``--task tests.stage_module:build`` learns the
    stage as it builds it."""
    from fedtune.tasks import build_task

    register()
    return build_task(cfg)  # type: ignore[arg-type]
