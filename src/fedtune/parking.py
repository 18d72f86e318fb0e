"""A model-size vector kept in a temporary file while nobody needs it.

A coordinator needs its global parameters to broadcast them and again for the server step,
but not while it collects updates. With ``server.park_model`` it writes them to an unnamed
temporary file (gone when closed, or when the process dies) and drops its own reference;
the memory is freed once the runtime has sent the last byte, and the coordinator holds the
running sum and the update being received instead of those two plus the model. The cost is
one sequential write and one read of the model per round, which the page cache usually
serves from memory the kernel may reclaim. When the model was just written anyway (the state
file `fedtune serve` keeps for --resume), :class:`SavedVector` reads it back from there and
parking writes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


class ParkedVector:
    """A 1-D tensor's bytes in a temporary file; :meth:`load` gives the tensor back."""

    def __init__(self, tensor: torch.Tensor, directory: Path | None = None) -> None:
        if tensor.dim() != 1:
            raise ValueError(f"only a flat vector can be parked, got shape {tuple(tensor.shape)}")
        self.numel, self.dtype, self.device = tensor.numel(), tensor.dtype, tensor.device
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        # unnamed, unbuffered; closed by close()
        self.file = tempfile.TemporaryFile(prefix="fedtune-park-", dir=directory,  # noqa: SIM115
                                           buffering=0)
        array = tensor.detach().cpu().contiguous().numpy()
        data = memoryview(array).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
        written = 0
        while written < len(data):
            written += self.file.write(data[written:])

    def load(self) -> torch.Tensor:
        """The parked tensor, in freshly allocated memory on its device."""
        out = torch.empty(self.numel, dtype=self.dtype)
        view = memoryview(out.numpy()).cast("B")  # type: ignore[arg-type]
        self.file.seek(0)
        got = 0
        while got < len(view):
            n = self.file.readinto(view[got:])
            if not n:
                raise OSError(f"parked model file ended after {got} of {len(view)} bytes")
            got += n
        return out.to(self.device)

    def close(self) -> None:
        self.file.close()


class SavedVector:
    """A vector already saved under ``name`` in a safetensors file; :meth:`load` reads it."""

    def __init__(self, path: Path, name: str, like: torch.Tensor) -> None:
        from safetensors import SafetensorError, safe_open

        try:  # fail now, not after the round
            with safe_open(str(path), framework="pt") as fh:
                shape = fh.get_slice(name).get_shape()
        except SafetensorError as exc:
            raise OSError(f"{path}: {exc}") from None
        if shape != [like.numel()]:
            raise ValueError(f"{path} holds {name} of shape {shape}, not ({like.numel()},)")
        self.path, self.name, self.device = path, name, like.device

    def load(self) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                tensor: torch.Tensor = fh.get_tensor(self.name)
        except SafetensorError as exc:
            raise OSError(f"{self.path}: {exc}") from None
        return tensor.to(self.device)

    def close(self) -> None:
        pass


def spill(vector: torch.Tensor, directory: Path | None = None) -> Callable[[], torch.Tensor]:
    """Park ``vector`` now; the returned function loads it back once (and frees the file).
    A coordinator with bounded uploads spills an update that arrives before its turn in the
    fold, so that its receive buffer (and upload slot) is freed at once."""
    parked = ParkedVector(vector, directory)

    def load() -> torch.Tensor:
        try:
            return parked.load()
        finally:
            parked.close()

    return load
