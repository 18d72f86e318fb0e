"""The :class:`Dataset` record every loader returns (bundled tables, generated data, text)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dataset:
    """Features, integer labels and (when the data has one) a natural node id per sample."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    groups: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])
