"""A custom task for `fedtune serve --task` / `fedtune join --task` tests: three clinics with
their own generated data and a model that is not one of the bundled ones."""

from __future__ import annotations

import torch
from torch import nn

import fedtune


def build(cfg: object) -> fedtune.Task:
    gen = torch.Generator().manual_seed(5)
    true_w = torch.randn(12, 3, generator=gen)

    def site(n: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 12, generator=gen) + shift
        return x, (x @ true_w).argmax(1)

    sites = {f"clinic-{i}": (site(120, 0.2 * i), site(40, 0.2 * i)) for i in range(3)}
    return fedtune.make_task(lambda: nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)),
                             sites, test=site(200, 0.3), name="clinics")
