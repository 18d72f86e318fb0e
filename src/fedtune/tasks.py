"""Built-in tasks: a bundled dataset, cut into a federation, with an MLP or small CNN."""

from __future__ import annotations

import math
from functools import partial

from .config import RunConfig
from .data import build_federated_data
from .errors import ConfigError
from .models import mlp, small_cnn
from .task import Task


def build_task(cfg: RunConfig) -> Task:
    """The task a config describes (dataset, partition, model)."""
    d = cfg.data
    if d.files:
        from .data.files import load_file_federation

        data = load_file_federation(d, cfg.run.seed)
    else:
        options = dict(d.options)
        if d.dataset == "synthetic":
            options.setdefault("num_groups", float(d.num_nodes))
        data = build_federated_data(
            d.dataset, num_nodes=d.num_nodes, partition=d.partition, seed=cfg.run.seed,
            test_fraction=d.test_fraction, central_fraction=d.central_fraction,
            node_test_fraction=d.node_test_fraction, min_size=d.min_size,
            dataset_options=options, alpha=d.alpha, shards_per_node=d.shards_per_node)
    text = d.dataset == "rotten_tomatoes" and not d.files
    if text != cfg.model.kind.startswith("minilm"):
        raise ConfigError(f"model.kind = {cfg.model.kind!r} does not fit the data "
                          f"({'data.files' if d.files else repr(d.dataset)}): text needs a "
                          "minilm-* model, numbers mlp or cnn")
    if text:
        from .text.minilm import minilm_classifier

        factory = partial(minilm_classifier, data.num_classes, kind=cfg.model.kind,
                          rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha)
    elif cfg.model.kind == "cnn":
        if data.input_shape != (64,) or d.files:
            raise ConfigError(f"model.kind = 'cnn' needs 8x8 images (digits), not "
                              f"{'data.files' if d.files else repr(d.dataset)}; use "
                              "model.kind = 'mlp'")
        factory = partial(small_cnn, data.num_classes)
    else:
        factory = partial(mlp, math.prod(data.input_shape), tuple(cfg.model.hidden),
                          data.num_classes, cfg.model.norm)
    name = "files" if d.files else d.dataset
    return Task(model_factory=factory, data=data, name=f"{name}-{cfg.model.kind}")
