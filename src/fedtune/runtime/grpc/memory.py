"""Process memory settings for a coordinator that moves large messages.

glibc gives threads their own malloc arenas (up to 8 per core). gRPC and the coordinator
allocate and free chunk-sized blocks (a few MiB) from many threads, and each arena keeps its
freed blocks, so a coordinator's resident memory grows by tens to hundreds of MB beyond what
it holds (measured with bench/transfer.py: 4.6x the model instead of 3.5x at 100 MB). Two
arenas keep that in check; Python holds the interpreter lock for most of this work anyway,
so the arenas' locks are not contended.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process; False where there is no glibc."""
    try:
        return _LIBC is not None and bool(_LIBC.mallopt(M_ARENA_MAX, count))
    except AttributeError:  # not glibc
        return False


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim), e.g. after a large
    message: without it the arenas keep the chunk buffers a transfer went through."""
    try:
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
