"""The uplink's node part: the update through its transform chain (compression, error
feedback), the chain's state (the residual) kept with the node. Its own module so that a hook
defined elsewhere (a low-resource site's own compression) can use it without importing the
hook list."""

from __future__ import annotations

from ..algorithms.transforms import Chain, TransformContext
from .context import FitContext


class UplinkTransforms:
    """Runs the update through its transform chain (compression, error feedback); the
    chain's state (the residual) stays with the node."""

    mutable: tuple[str, ...] = ("uplink",)

    def __init__(self, transforms: Chain) -> None:
        self.transforms = transforms

    def before_fit(self, ctx: FitContext) -> None:
        return None

    def after_fit(self, ctx: FitContext) -> None:
        assert ctx.update is not None
        state = ctx.state.get("uplink")
        if state is None:
            state = self.transforms.init()
        tctx = TransformContext(seed=ctx.seed)
        ctx.update, state = self.transforms.apply(ctx.update, state, tctx)
        ctx.state["uplink"] = state
        ctx.out_aux.update(tctx.aux)
        ctx.encoding = tctx.encoding
