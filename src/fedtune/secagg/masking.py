"""Fixed-point updates in the ring Z_{2^bits}, and the masks that hide them.

Encoding (as in Bonawitz et al. 2017, section 3, and Bell et al. 2020): every coordinate is
clamped to [-B, B] (B = ``secagg.clip_range``) and scaled by s = M / B with
M = floor((2^(bits-1) - 1) / K), K the most updates a round sums, then rounded to an
integer in [-M, M] and taken mod 2^bits. The sum of K such integers stays in
[-(2^(bits-1) - 1), 2^(bits-1) - 1], so the coordinator reads it back exactly as a signed
integer and divides by s. Error bound: each update's rounding is at most 1/(2s) per
coordinate, so the decoded sum differs from the sum of the clamped updates by at most
K / (2s) = K B / (2M), about K^2 B / 2^bits, per coordinate (for K = 100, B = 1, bits = 32:
2.3e-6). Coordinates beyond B are clamped: the part of an update the sum cannot hold.

Masking: site u sends y_u = x_u + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv)
- sum_{v in N(u), v < u} PRG(s_uv) (mod 2^bits): the pairwise masks cancel in the sum over
all sites, the self mask PRG(b_u) is removed once b_u is reconstructed, and y_u alone is
uniform in the ring whatever x_u is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .keys import expand


@dataclass(frozen=True)
class Ring:
    """Z_{2^bits} with the fixed-point scale for ``summands`` updates bounded by ``clip``."""

    bits: int
    clip: float
    summands: int

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 62:
            raise ValueError(f"secagg.bits = {self.bits}: use 8..62")
        if not self.clip > 0 or not 1 <= self.summands < 1 << (self.bits - 2):
            raise ValueError(f"the clip range must be > 0 and 1 <= summands < 2^{self.bits - 2}")

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]] | type[np.signedinteger[Any]]:
        """How ring elements are held: uint32 up to 32 bits (at 32, numpy's wrap-around is
        the ring's own), int64 above."""
        return np.uint32 if self.bits <= 32 else np.int64

    @property
    def largest(self) -> int:
        """M: the largest encoded magnitude of one update's coordinate."""
        return ((1 << (self.bits - 1)) - 1) // self.summands

    @property
    def scale(self) -> float:
        return self.largest / self.clip

    @property
    def error_bound(self) -> float:
        """The most the decoded sum can differ from the sum of clamped updates, per
        coordinate."""
        return self.summands / (2 * self.scale)

    def encode(self, update: torch.Tensor) -> np.ndarray:
        x = update.detach().double().clamp(-self.clip, self.clip).cpu().numpy()
        m = self.largest
        wide = np.clip(np.rint(x * self.scale), -m, m).astype(np.int64) & self.mask
        out: np.ndarray = wide.astype(self.dtype)
        return out

    def decode(self, total: np.ndarray) -> torch.Tensor:
        """A sum in the ring as float32 (the centered lift, divided by the scale)."""
        t = total.astype(np.int64) & self.mask
        signed = np.where(t >= 1 << (self.bits - 1), t - (1 << self.bits), t)
        return torch.from_numpy(signed.astype(np.float64) / self.scale).to(torch.float32)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out: np.ndarray = a + b
        return out if self.bits == 32 else out & self.dtype(self.mask)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out: np.ndarray = a - b
        return out if self.bits == 32 else out & self.dtype(self.mask)

    def zeros(self, numel: int) -> np.ndarray:
        return np.zeros(numel, dtype=self.dtype)

    def to_wire(self, values: np.ndarray) -> torch.Tensor:
        """Ring elements as the smallest integer tensor that holds them (int32 up to 32
        bits: the bytes of a float32 update)."""
        if self.bits <= 32:
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.uint32).view(np.int32))
        return torch.from_numpy(values.astype(np.int64))

    def from_wire(self, tensor: torch.Tensor) -> np.ndarray:
        raw = tensor.numpy()
        wide = raw.view(np.uint32).astype(np.int64) if raw.dtype == np.int32 \
            else raw.astype(np.int64)
        out: np.ndarray = (wide & self.mask).astype(self.dtype)
        return out


def masked_input(ring: Ring, encoded: np.ndarray, self_seed: bytes,
                 pair_keys: dict[int, bytes], own_index: int) -> np.ndarray:
    """y_u: the encoded update plus the self mask and the pairwise masks (``pair_keys``:
    neighbour's index in the round -> the key both derive)."""
    y = ring.add(encoded, expand(self_seed, encoded.size, ring.bits))
    for other, key in pair_keys.items():
        mask = expand(key, encoded.size, ring.bits)
        y = ring.add(y, mask) if other > own_index else ring.sub(y, mask)
    return y
