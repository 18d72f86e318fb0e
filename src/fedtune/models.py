"""Built-in models for the bundled datasets: an MLP and a small CNN for 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

NORMS = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(input_dim: int, hidden: Sequence[int], num_classes: int, norm: str = "none") -> nn.Module:
    """Fully connected ReLU network ``input_dim -> hidden... -> num_classes``; ``norm``
    puts a BatchNorm or LayerNorm after every hidden linear layer (FedBN's setting)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        layer = NORMS[norm]
        layers += [nn.Linear(width, h), *([layer(h)] if layer else []), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(num_classes: int, side: int = 8) -> nn.Module:
    """Two 3x3 convolutions and a 2x2 pool for ``side x side`` grey images (flat input)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (side // 2) ** 2, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )


MODELS = {"mlp": "fully connected ReLU network (model.hidden sets the widths)",
          "cnn": "small CNN for 8x8 images (digits only)"}
