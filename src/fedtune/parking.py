"""A model-size vector kept in a temporary file while nobody needs it.

A coordinator needs its global parameters to broadcast them and again for the server step,
but not while it collects updates. With ``server.park_model`` it writes them to an unnamed
temporary file (gone when closed, or when the process dies) and drops its own reference;
the memory is freed once the runtime has sent the last byte, and the coordinator holds the
running sum and the update being received instead of those two plus the model. The cost is
one sequential write and one read of the model per round, which the page cache usually
serves from memory the kernel may reclaim.
"""

from __future__ import annotations

import tempfile
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
