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

from .data.checks import check_federation, check_split, checked_labels
from .data.federated import FederatedData, HeldSites, NodeData
from .errors import DataError

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


def _as_tensors(data: Any, owner: str = "", split: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Features as float32 (token ids stay integers) and labels as given; a DataError names
    ``owner`` and ``split`` when the data is not (x, y) arrays."""
    where = f"{owner}: {split} data" if owner else "data"
    if isinstance(data, tuple) and len(data) == 2:
        try:
            x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{where} is not numeric arrays ({exc}); give (features, labels) "
                            "as numpy arrays or tensors") from None
        return x.to(torch.float32), y
    if isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        return (torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in items]),
                torch.as_tensor([y.item() if isinstance(y, torch.Tensor) else y
                                 for _, y in items]))
    raise DataError(f"{where} must be a (features, labels) tuple or a map-style Dataset, "
                    f"got {type(data).__name__}")


def node_data(node_id: str, train: Any, test: Any) -> NodeData:
    """Node data from ``(x, y)`` tuples or datasets; kept as tensors for fast batching.
    Checked at the door (:mod:`fedtune.data.checks`): one line names the site and the
    array."""
    owner = f"site {node_id!r}"
    xtr, ytr = _as_tensors(train, owner, "train")
    xte, yte = _as_tensors(test, owner, "test")
    ytr, yte = checked_labels(owner, "y_train", ytr), checked_labels(owner, "y_test", yte)
    check_split(owner, "train", xtr, ytr)
    check_split(owner, "test", xte, yte, allow_empty=True)
    return NodeData(node_id, xtr, ytr, xte, yte)


def make_task(model_factory: Callable[[], nn.Module], nodes: Mapping[str, tuple[Any, Any]],
              test: Any, *, central: Any | None = None, num_classes: int | None = None,
              loss_fn: LossFn = F.cross_entropy, metrics_fn: MetricsFn = accuracy,
              train_fn: TrainFn | None = None, name: str = "custom") -> Task:
    """Build a :class:`Task` from your own model and per-site ``(train, test)`` data."""
    node_list: Sequence[NodeData] = [node_data(k, tr, te) for k, (tr, te) in nodes.items()]
    xte, yte = _as_tensors(test, "the test set", "test")
    yte = checked_labels("the test set", "y_test", yte)
    if central is not None:
        xc, yc = _as_tensors(central, "the central split", "central")
        yc = checked_labels("the central split", "y", yc)
    else:
        xc, yc = xte[:0], yte[:0]
    classes = check_federation(
        [(n.node_id, n.x_train, n.y_train, n.x_test, n.y_test) for n in node_list], xte, yte,
        num_classes)
    fd = FederatedData(name, classes, tuple(xte.shape[1:]), HeldSites(node_list), xte, yte.long(),
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
