"""Seeds derived from names: every random draw of a run (selection, batches, compression,
dropout) is seeded by the run seed and what the draw is for, so the same config gives the
same numbers in every runtime and on every machine."""

from __future__ import annotations

import zlib


def derived_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (same on every machine and runtime)."""
    text = ":".join(map(str, parts)).encode()
    return (zlib.crc32(text) << 31) ^ zlib.crc32(text[::-1])
