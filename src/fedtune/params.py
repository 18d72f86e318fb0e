"""A model's trainable parameters as one flat float32 vector.

:class:`FlatModel` re-seats every trainable parameter of a module as a view into one
contiguous buffer (``vector``) and every gradient as a view into a second one (``grad``).
Loading global parameters is one ``copy_``; an optimizer step, a proximal term, a SCAFFOLD
correction or a clip is one vector operation; an update is ``vector - global``. Frozen
parameters and buffers never travel: the :class:`ParamSpec` lists only what is trained.

Autograd accumulates into an existing ``.grad`` in place, so the gradient views stay views as
long as gradients are zeroed with :meth:`FlatModel.zero_grad` (never set to ``None``). The
gradient buffer is allocated by the first :meth:`FlatModel.zero_grad` or
:meth:`FlatModel.load_`; call one of them before the first backward pass.

A coordinator that holds its global vector elsewhere can :meth:`FlatModel.release` both
buffers between uses (as PyTorch FSDP frees its flat parameters: the storage is resized to
zero, the views stay); the next :meth:`FlatModel.load_` allocates them again.
"""

from __future__ import annotations

import torch
from torch import nn

from .types import ParamSpec


class FlatModel:
    """A module whose trainable parameters live in one flat vector."""

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu") -> None:
        self.module = module.to(device)
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters: nothing to fine-tune")
        dtypes = {p.dtype for _, p in named}
        if dtypes != {torch.float32}:
            raise ValueError(f"trainable parameters must be float32, found {sorted(map(str, dtypes))}")
        self.spec = ParamSpec(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))
        total = self.spec.numel
        device = named[0][1].device
        self.vector = torch.empty(total, dtype=torch.float32, device=device)
        self.grad = torch.empty(total, dtype=torch.float32, device=device)
        offset = 0
        for (_, p), size in zip(named, self.spec.sizes, strict=True):
            view = self.vector[offset:offset + size].view_as(p)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad[offset:offset + size].view_as(p)
            offset += size
        self._params = [p for _, p in named]
        # One leaf tensor sharing the flat storage: optimizers step it in one fused op.
        self.flat_param = nn.Parameter(self.vector, requires_grad=False)
        self.flat_param.grad = self.grad
        # no gradient memory until the first zero_grad() or load_(): a coordinator that
        # only evaluates never needs it
        self.grad.untyped_storage().resize_(0)

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order of the flat vector."""
        return list(self._params)

    @property
    def device(self) -> torch.device:
        return self.vector.device

    def load_(self, flat: torch.Tensor, *, with_grad: bool = True) -> None:
        """Copy a flat parameter vector into the model (no allocation unless released;
        ``with_grad=False`` leaves a released gradient released: enough to evaluate)."""
        if flat.shape != self.vector.shape:
            raise ValueError(f"parameter vector has {flat.numel()} values, the model has "
                             f"{self.vector.numel()}")
        _allocate(self.vector)
        if with_grad and _allocate(self.grad):
            self.grad.zero_()
        self.vector.copy_(flat)

    @property
    def released(self) -> bool:
        return self.vector.untyped_storage().nbytes() == 0

    def release(self) -> None:
        """Free the parameter and gradient memory until the next :meth:`load_` (the module
        must not be used in between)."""
        for buffer in (self.vector, self.grad):
            buffer.untyped_storage().resize_(0)

    def zero_grad(self) -> None:
        """Zero the flat gradient in place, keeping every ``.grad`` a view of it."""
        _allocate(self.grad)
        self.grad.zero_()

    def reseat_grads(self) -> None:
        """Make every ``.grad`` a view of the flat buffer again (after user code reset them)."""
        offset = 0
        for p, size in zip(self._params, self.spec.sizes, strict=True):
            p.grad = self.grad[offset:offset + size].view_as(p)
            offset += size

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Independent copies of the travelling parameters, by name (for checkpoints)."""
        out: dict[str, torch.Tensor] = {}
        offset = 0
        for name, size, shape in zip(self.spec.names, self.spec.sizes, self.spec.shapes,
                                     strict=True):
            out[name] = self.vector[offset:offset + size].view(shape).detach().cpu().clone()
            offset += size
        return out


def _allocate(buffer: torch.Tensor) -> bool:
    """Give a released buffer its memory back (uninitialized); True if it was released."""
    storage = buffer.untyped_storage()
    if storage.nbytes():
        return False
    storage.resize_(buffer.numel() * buffer.element_size())
    return True


def unflatten(flat: torch.Tensor, spec: ParamSpec) -> dict[str, torch.Tensor]:
    """Split a flat vector into named tensors shaped as in ``spec`` (views, no copies)."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, size, shape in zip(spec.names, spec.sizes, spec.shapes, strict=True):
        out[name] = flat[offset:offset + size].view(shape)
        offset += size
    return out
