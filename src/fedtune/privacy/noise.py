"""Gaussian noise for differential privacy: cryptographically secure by default.

A DP guarantee assumes the noise cannot be predicted; noise from a seeded generator (the
run's seed is in its stored config) can be recomputed and subtracted. So private noise is
drawn from the operating system's CSPRNG (``os.urandom``): 53-bit uniforms turned into
normals by the Box-Muller transform in float64. Following Holohan and Braghin 2021 ("Secure
Random Sampling in Differential Privacy", the mitigation Opacus' ``secure_mode`` uses), each
value is the sum of two such normals scaled by 1/sqrt(2), which hides the lattice structure
of one floating-point draw. ``secure=False`` draws from a seeded torch generator instead: the
same numbers in every runtime, for tests and reproductions only; a run made so is recorded and
reported as not private.

torch has no CSPRNG of its own (``torchcsprng`` is unmaintained) and NumPy's generators are not
cryptographic, hence this module.
"""

from __future__ import annotations

import math
import os

import torch

_TWO_53 = float(2**53)


def _secure_uniform(n: int) -> torch.Tensor:
    """``n`` float64 uniforms in (0, 1] from the OS CSPRNG (never 0: log is safe)."""
    raw = torch.frombuffer(bytearray(os.urandom(8 * n)), dtype=torch.int64)
    return ((raw & (2**53 - 1)).to(torch.float64) + 1.0) / _TWO_53


def _box_muller(n: int) -> torch.Tensor:
    half = (n + 1) // 2
    u1, u2 = _secure_uniform(half), _secure_uniform(half)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2.0 * math.pi * u2
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]


def gaussian(numel: int, std: float, *, secure: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``numel`` draws of N(0, std^2) as float32: from the OS CSPRNG when ``secure``, else
    from ``generator`` (required then)."""
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"the noise standard deviation must be finite and >= 0, got {std}")
    if secure:
        both = (_box_muller(numel) + _box_muller(numel)) / math.sqrt(2.0)
        return (both * std).to(torch.float32)
    if generator is None:
        raise ValueError("seeded noise needs a generator")
    return torch.randn(numel, generator=generator, dtype=torch.float64).mul_(std).to(
        torch.float32)
