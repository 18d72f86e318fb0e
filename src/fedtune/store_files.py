"""Files of the run store that must survive faults: written atomically with a checksum,
read back only when the checksum matches, and storage errors as one line naming the file.

The SHA-256 of every state file and checkpoint is taken from the file as written (the
temporary file, before it is renamed into place) and kept in the store's database, so a file
changed or damaged afterwards is detected before it is used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StoreError

if TYPE_CHECKING:  # torch is imported by what runs, not to list runs
    import torch

F = TypeVar("F", bound=Callable[..., Any])
IN_MEMORY_BYTES = 32 * 2**20  # files up to this size are built and hashed in memory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def database_errors(method: F) -> F:
    """A damaged database is a one-line StoreError naming the file, never a traceback."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the run store {self.path} failed ({exc}): if the disk is full, "
                             "free space and continue with `fedtune serve --resume`; if the "
                             "file is damaged, copy it aside and recover it with 'sqlite3 "
                             "runs.sqlite .recover', or point run.workspace elsewhere") from None
    return wrapper  # type: ignore[return-value]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      what: str) -> str:
    """Write ``path`` atomically (temporary file, then rename); its SHA-256."""
    from safetensors import SafetensorError
    from safetensors.torch import save, save_file

    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if sum(t.numel() * t.element_size() for t in tensors.values()) <= IN_MEMORY_BYTES:
            data = save(tensors, metadata=metadata)  # small: hash in memory, one write
            digest = hashlib.sha256(data).hexdigest()
            with tmp.open("wb") as fh:
                fh.write(data)
        else:  # large: no second copy in memory; the hash reads the file back
            save_file(tensors, str(tmp), metadata=metadata)
            digest = file_sha256(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        with contextlib.suppress(OSError):  # the write failed: this may fail too
            tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StoreError(f"cannot write the {what} {path} ({reason}); free "
                         f"space in {path.parent} or fix its permissions, then "
                         "continue with `fedtune serve --resume`") from None
    return digest


def read_verified(path: Path,
                  digest: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file whose bytes match ``digest``."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise StoreError(f"{path} is missing")
    try:
        if digest is not None and file_sha256(path) != digest:
            raise StoreError(f"{path} does not match the SHA-256 recorded when it was "
                             "written (changed or damaged since)")
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            return tensors, fh.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"{path} cannot be read ({exc})") from None
