"""Feature shift per site: each site's inputs under its own fixed transform (FedBN's setting,
where sites differ in how they measure, not only in what they see).

``data.options.site_shift = s`` (0 < s <= 1) gives every site, seeded by the run seed and
its index, a rotation of up to ``45 s`` degrees (square images only, e.g. 8x8 digits), a
contrast factor ``exp(N(0, (0.5 s)^2))``, a brightness offset ``N(0, (0.5 s)^2)`` and pixel
noise of standard deviation up to ``0.5 s`` (the noise drawn per example, seeded). The
site's train and test splits share its transform; the coordinator's test set is left as it
is. Rotation uses ``scipy.ndimage.rotate`` (bilinear, the image's own size).

References:
    Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
    Normalization" (feature-shift non-IID).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import DataError
from .sites import HeldSites, NodeData


def _transform(x: torch.Tensor, rng: np.random.Generator, strength: float,
               angle: float, contrast: float, offset: float, noise: float) -> torch.Tensor:
    out = x.numpy().astype(np.float32, copy=True)
    side = math.isqrt(out.shape[1]) if out.ndim == 2 else 0
    if side * side == out.shape[1] and side >= 4 and angle:
        from scipy.ndimage import rotate

        images = out.reshape(-1, side, side)
        out = rotate(images, angle, axes=(1, 2), reshape=False, order=1,
                     mode="nearest").reshape(len(out), -1)
    out = out * contrast + offset
    out = out + rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def shift_sites(sites: HeldSites, strength: float, seed: int) -> HeldSites:
    """Every site's data under its own transform (see the module docstring)."""
    if not 0 < strength <= 1:
        raise DataError(f"data.options.site_shift = {strength} must be in (0, 1]")
    out = []
    for i, node in enumerate(sites):
        rng = np.random.default_rng([seed, i, 7919])
        angle = float(rng.uniform(-45, 45)) * strength
        contrast = float(np.exp(rng.normal(0.0, 0.5 * strength)))
        offset = float(rng.normal(0.0, 0.5 * strength))
        noise = float(rng.uniform(0.0, 0.5 * strength))
        args = (rng, strength, angle, contrast, offset, noise)
        out.append(NodeData(node.node_id, _transform(node.x_train, *args), node.y_train,
                            _transform(node.x_test, *args), node.y_test))
    return HeldSites(out)
