"""Shamir secret sharing (Shamir 1979, "How to Share a Secret") over the prime field of
p = 2^521 - 1, a Mersenne prime larger than every secret shared here (32-byte seeds and
X25519 private keys).

A secret s is the constant term of a random polynomial f of degree t - 1; share i is
(x_i, f(x_i)) for x_i >= 1; any t shares give s back by Lagrange interpolation at 0, and
fewer reveal nothing about s. The coefficients are drawn from the OS CSPRNG (``secrets``).

Written here because no maintained package fits: the ones on PyPI are unmaintained or
share over GF(256) byte by byte (a share per byte); this is 40 lines of integer arithmetic
whose tests check the defining properties.
"""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1
SECRET_BYTES = 64  # secrets up to 512 bits


def split(secret: bytes, *, threshold: int, xs: list[int]) -> list[int]:
    """The shares ``f(x)`` of ``secret`` for each ``x`` in ``xs`` (distinct, >= 1)."""
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the shares)")
    if len(secret) > SECRET_BYTES:
        raise ValueError(f"a secret has at most {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or min(xs) < 1 or max(xs) >= PRIME:
        raise ValueError("share points must be distinct integers in 1..p-1")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner's rule
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


def combine(points: list[tuple[int, int]], *, length: int) -> bytes:
    """The secret (``length`` bytes) from ``threshold`` or more shares ``(x, f(x))``."""
    if len({x for x, _ in points}) != len(points):
        raise ValueError("shares must come from distinct points")
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret.to_bytes(length, "big")
