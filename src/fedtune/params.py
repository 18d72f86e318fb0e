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

Personalization (:mod:`fedtune.personal`): parameters named in ``local`` stay at each site.
The vector is laid out ``[shared | local]``, so the optimizer still steps one leaf; ``spec``
and ``shared`` are the prefix that travels, ``local`` the suffix a site keeps, and
``initial_local`` the model's own initial values of it (what a site starts from, and what
the coordinator's copy of the model holds). Floating-point buffers (BatchNorm statistics)
are read and written as two flat groups, ``"travel"`` and ``"local"``
(:meth:`FlatModel.buffers` and :meth:`FlatModel.load_buffers_`).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from .types import ParamSpec


class FlatModel:
    """A module whose trainable parameters live in one flat vector."""

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu", *,
                 local: Collection[str] = (), local_buffers: Collection[str] = ()) -> None:
        self.module = module.to(device)
        every = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not every:
            raise ValueError("the model has no trainable parameters: nothing to fine-tune")
        dtypes = {p.dtype for _, p in every}
        if dtypes != {torch.float32}:
            raise ValueError(f"trainable parameters must be float32, found {sorted(map(str, dtypes))}")
        named = [x for x in every if x[0] not in local] + [x for x in every if x[0] in local]
        shared = named[:len(every) - sum(1 for n, _ in every if n in local)]
        self.spec = ParamSpec(tuple(n for n, _ in shared), tuple(tuple(p.shape) for _, p in shared))
        self.local_names = tuple(n for n, _ in named[len(shared):])
        all_spec = ParamSpec(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))
        total = all_spec.numel
        device = named[0][1].device
        self.vector = torch.empty(total, dtype=torch.float32, device=device)
        self.grad = torch.empty(total, dtype=torch.float32, device=device)
        offset = 0
        for (_, p), size in zip(named, all_spec.sizes, strict=True):
            view = self.vector[offset:offset + size].view_as(p)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad[offset:offset + size].view_as(p)
            offset += size
        self._params = [p for _, p in named]
        self._sizes = all_spec.sizes
        self.shared = self.vector[:self.spec.numel]  # what travels (a view)
        self.local = self.vector[self.spec.numel:]  # what each site keeps (a view)
        self.initial_local = self.local.detach().clone()
        floats = [(n, b) for n, b in self.module.named_buffers() if b.is_floating_point()]
        self._buffers = {"travel": [b for n, b in floats if n not in local_buffers],
                         "local": [b for n, b in floats if n in local_buffers]}
        self.initial_buffers = {k: self.buffers(k) for k in self._buffers}
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
    def sizes(self) -> tuple[int, ...]:
        """Each trainable parameter's size, in the order of the flat vector (shared, local)."""
        return self._sizes

    @property
    def device(self) -> torch.device:
        return self.vector.device

    def load_(self, flat: torch.Tensor, *, with_grad: bool = True) -> None:
        """Copy the travelling parameters into the model (no allocation unless released;
        ``with_grad=False`` leaves a released gradient released: enough to evaluate). A
        site's own part (``local``) is left as it is."""
        if flat.shape != self.shared.shape:
            raise ValueError(f"parameter vector has {flat.numel()} values, the model has "
                             f"{self.shared.numel()}")
        _allocate(self.vector)
        if with_grad and _allocate(self.grad):
            self.grad.zero_()
        self.shared.copy_(flat)

    def buffers(self, group: str) -> torch.Tensor:
        """A copy of one group's floating-point buffers (``"travel"`` or ``"local"``) as one
        flat float32 vector (empty when the model has none)."""
        parts = [b.detach().reshape(-1).to(torch.float32) for b in self._buffers[group]]
        return torch.cat(parts) if parts else torch.zeros(0, device=self.vector.device)

    def load_buffers_(self, group: str, flat: torch.Tensor) -> None:
        """Write one group's buffers from a flat vector made by :meth:`buffers`."""
        offset = 0
        for b in self._buffers[group]:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
        if offset != flat.numel():
            raise ValueError(f"{flat.numel()} buffer values for {offset} {group} buffer values")

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
        for p, size in zip(self._params, self._sizes, strict=True):
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
