"""The user's contract: what to train, on whose data, judged how.

A :class:`Task` holds a model factory, the federation's data (per-node tensors plus a central
test set and an optional central training split), a loss, a metrics function and, optionally,
a custom local training function that replaces the built-in loop. :func:`node_data` turns
tensors or any map-style ``torch.utils.data.Dataset`` into node data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .data.federated import FederatedData, NodeData

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
# train_fn(model, x, y, plan, generator) -> number of optimizer steps taken
TrainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, torch.Generator], int]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy."""
    return {"accuracy": float((logits.argmax(dim=1) == y).float().mean())}


@dataclass
class Task:
    """Everything a run needs to know about the model and the data."""

    model_factory: Callable[[], nn.Module]
    data: FederatedData
    loss_fn: LossFn = F.cross_entropy
    metrics_fn: MetricsFn = accuracy
    train_fn: TrainFn | None = None
    name: str = "custom"


def _as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, tuple) and len(data) == 2:
        return torch.as_tensor(data[0], dtype=torch.float32), torch.as_tensor(data[1])
    if isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        return (torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in items]),
                torch.as_tensor([int(y) for _, y in items]))
    raise TypeError("node data must be a (features, labels) tuple or a map-style Dataset")


def node_data(node_id: str, train: Any, test: Any) -> NodeData:
    """Node data from ``(x, y)`` tuples or datasets; kept as tensors for fast batching."""
    xtr, ytr = _as_tensors(train)
    xte, yte = _as_tensors(test)
    return NodeData(node_id, xtr, ytr.long(), xte, yte.long())


def make_task(model_factory: Callable[[], nn.Module], nodes: Mapping[str, tuple[Any, Any]],
              test: Any, *, central: Any | None = None, num_classes: int | None = None,
              loss_fn: LossFn = F.cross_entropy, metrics_fn: MetricsFn = accuracy,
              train_fn: TrainFn | None = None, name: str = "custom") -> Task:
    """Build a :class:`Task` from your own model and per-site ``(train, test)`` data."""
    node_list: Sequence[NodeData] = [node_data(k, tr, te) for k, (tr, te) in nodes.items()]
    xte, yte = _as_tensors(test)
    if central is not None:
        xc, yc = _as_tensors(central)
    else:
        xc, yc = xte[:0], yte[:0]
    classes = num_classes or int(max(int(n.y_train.max()) for n in node_list) + 1)
    fd = FederatedData(name, classes, tuple(xte.shape[1:]), list(node_list), xte, yte.long(),
                       xc, yc.long())
    return Task(model_factory, fd, loss_fn, metrics_fn, train_fn, name)


def load_task_factory(spec: str) -> Callable[[Any], Task]:
    """``module:function`` -> the function, which takes the run config and returns a Task.

    Sites and the coordinator of a custom deployment name the same factory, so both build
    the same model."""
    import importlib

    from .errors import ConfigError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--task {spec!r}: expected module:function")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--task {spec!r} cannot be loaded: {exc}") from None
    return factory  # type: ignore[no-any-return]
