"""Update transforms: parts that change an update on its way out, with explicit state.

optax-shaped: ``state = t.init()`` and ``update, state = t.apply(update, state, ctx)``.
:func:`chain` runs transforms left to right and keeps a tuple of their states. The context
carries what a transform needs besides the vector (the seed both sides derive for this
message) and collects what it adds to the message (``aux`` tensors, an ``encoding``).

An *encoder* (:class:`Compress`) ends a chain: it writes the packed tensors into
``ctx.aux``, names its format in ``ctx.encoding`` and returns an empty vector (the update no
longer travels dense). :class:`ErrorFeedback` wraps an encoder and keeps what the encoding
left out, to add it to the next round's update. The compression strings of the config
(``"topk:0.1+q8"``) are sugar for these parts: :func:`uplink_chain` parses them.

References:
    McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"
    (per-update L2 clipping); Stich et al. 2018, "Sparsified SGD with Memory" (top-k,
    random-k, error feedback);
    Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient Compression
    Schemes"; Alistarh et al. 2017, "QSGD" (stochastic quantization).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .compression import CompressionSpec, compress, decompress


@dataclass
class TransformContext:
    """What a transform reads besides the vector, and what it adds to the message."""

    seed: int
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    encoding: str = ""


class UpdateTransform(Protocol):
    def init(self) -> Any: ...

    def apply(self, update: torch.Tensor, state: Any,
              ctx: TransformContext) -> tuple[torch.Tensor, Any]: ...


@dataclass(frozen=True)
class Chain:
    """Transforms applied left to right; the state is the tuple of theirs."""

    parts: tuple[UpdateTransform, ...]

    def init(self) -> tuple[Any, ...]:
        return tuple(p.init() for p in self.parts)

    def apply(self, update: torch.Tensor, state: tuple[Any, ...],
              ctx: TransformContext) -> tuple[torch.Tensor, tuple[Any, ...]]:
        out = []
        for part, s in zip(self.parts, state, strict=True):
            update, s = part.apply(update, s, ctx)
            out.append(s)
        return update, tuple(out)


def chain(*parts: UpdateTransform) -> Chain:
    return Chain(tuple(parts))


@dataclass(frozen=True)
class ClipByNorm:
    """u <- u * min(1, max_norm / ||u||_2); stateless. Bounds one contribution's L2 norm,
    the sensitivity that client-level DP calibrates its noise to."""

    max_norm: float

    def init(self) -> None:
        if not self.max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {self.max_norm}")

    def apply(self, update: torch.Tensor, state: None,
              ctx: TransformContext) -> tuple[torch.Tensor, None]:
        norm = float(update.norm())
        if norm <= self.max_norm:
            return update, None
        return update * (self.max_norm / norm), None


@dataclass(frozen=True)
class Compress:
    """Encodes the update as ``packed.*`` tensors (sparsify, then cast or quantize); stateless.

    ``unbiased_randk`` scales random-k's kept values by D / k so the decoded vector is
    unbiased; error feedback turns it off (it corrects the bias itself).
    """

    text: str
    block: int = 256
    unbiased_randk: bool = True

    @property
    def spec(self) -> CompressionSpec:
        return CompressionSpec.parse(self.text, block=self.block)

    def init(self) -> None:
        return None

    def encode(self, update: torch.Tensor, ctx: TransformContext) -> dict[str, torch.Tensor]:
        packed = compress(update, self.spec, seed=ctx.seed, unbiased_randk=self.unbiased_randk)
        ctx.aux.update({f"packed.{k}": v for k, v in packed.items()})
        ctx.encoding = f"{self.text}@{self.block}"
        return packed

    def apply(self, update: torch.Tensor, state: None,
              ctx: TransformContext) -> tuple[torch.Tensor, None]:
        self.encode(update, ctx)
        return update.new_zeros(0), None


@dataclass(frozen=True)
class ErrorFeedback:
    """Sends encode(update + residual) and keeps residual' = (update + residual) - sent."""

    inner: Compress

    def init(self) -> torch.Tensor | None:
        return None  # no residual before the first round

    def apply(self, update: torch.Tensor, state: torch.Tensor | None,
              ctx: TransformContext) -> tuple[torch.Tensor, torch.Tensor]:
        target = update if state is None else update + state
        biased = Compress(self.inner.text, self.inner.block, unbiased_randk=False)
        packed = biased.encode(target, ctx)
        sent = decompress(packed, biased.spec, numel=target.numel(), seed=ctx.seed)
        return update.new_zeros(0), target - sent


def uplink_chain(text: str, *, error_feedback: bool, block: int) -> Chain:
    """The parts a ``compression.uplink`` string stands for (empty text: no parts)."""
    if not text:
        return chain()
    encoder = Compress(text, block)
    return chain(ErrorFeedback(encoder) if error_feedback else encoder)
