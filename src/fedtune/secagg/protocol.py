"""The messages of a secure-aggregation round and the site's side of each stage.

SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning") over a sparse neighbour graph (SecAgg+, Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead"). A round is four exchanges:

0. **fit** (with ``secagg_*`` instructions): the site trains, encodes its update in the ring
   and keeps it; it answers with two fresh X25519 public keys (``c`` to encrypt shares,
   ``s`` to derive masks) and no update.
1. :class:`ShareKeys`: the site learns its neighbours' public keys and share points, draws a
   self-mask seed b, Shamir-shares b and its ``s`` private key among its neighbours and
   itself (threshold t), keeps its own share of b, and returns each neighbour's pair of
   shares encrypted for that neighbour.
2. :class:`MaskInput`: the site receives the shares its neighbours sealed for it (to keep)
   and sends its masked update y = x + PRG(b) +- PRG(s_uv).
3. :class:`Unmask`: told which neighbours' masked inputs arrived (survivors, itself among
   them) and which did not (dropped), it returns the share of b of each survivor and of the ``s`` key of each
   dropped one, never both for one site.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
import torch
from pydantic import Field

from ..errors import MessageError
from ..message_schema import MessageFields, NodeId, Round
from . import keys, shamir
from .masking import Ring, masked_input

if TYPE_CHECKING:
    from ..node.context import FitContext


class Site(Protocol):
    """What a stage handler uses of a node."""

    node_id: str
    state: dict[str, Any]

MAX_NEIGHBOURS = 4096
SHARE_BYTES = 66  # an element of the field of 2^521 - 1
SEALED_BYTES = 12 + 2 * SHARE_BYTES + 16  # nonce, two shares, Poly1305 tag
Ids = Annotated[list[NodeId], Field(max_length=MAX_NEIGHBOURS)]
Points = Annotated[list[Annotated[int, Field(ge=1, le=2**31)]], Field(max_length=MAX_NEIGHBOURS)]


@dataclass
class ShareKeys:
    round: int
    neighbours: list[str]
    points: list[int]  # each neighbour's share point
    own_point: int
    threshold: int
    public_keys: torch.Tensor  # uint8 [k, 64]: each neighbour's c key, then its s key


@dataclass
class SealedShares:
    node_id: str
    round: int
    recipients: list[str]
    sealed: torch.Tensor  # uint8 [k, SEALED_BYTES]


@dataclass
class MaskInput:
    round: int
    senders: list[str]
    sealed: torch.Tensor  # uint8 [m, SEALED_BYTES]: what each sender sealed for this site


@dataclass
class MaskedInput:
    node_id: str
    round: int
    masked: torch.Tensor  # the ring elements: int32 up to 32 bits, else int64


@dataclass
class Unmask:
    round: int
    survivors: list[str]  # neighbours whose masked input arrived
    dropped: list[str]  # neighbours that shared keys but whose masked input did not


@dataclass
class UnmaskShares:
    node_id: str
    round: int
    owners: list[str]
    kinds: list[str]  # "b": a survivor's self-mask seed; "s": a dropped site's mask key
    shares: torch.Tensor  # uint8 [m, SHARE_BYTES]


class ShareKeysFields(MessageFields):
    round: Round
    neighbours: Ids
    points: Points
    own_point: Annotated[int, Field(ge=1, le=2**31)]
    threshold: Annotated[int, Field(ge=1, le=MAX_NEIGHBOURS)]


class SealedSharesFields(MessageFields):
    node_id: NodeId
    round: Round
    recipients: Ids


class MaskInputFields(MessageFields):
    round: Round
    senders: Ids


class MaskedInputFields(MessageFields):
    node_id: NodeId
    round: Round


class UnmaskFields(MessageFields):
    round: Round
    survivors: Ids
    dropped: Ids


class UnmaskSharesFields(MessageFields):
    node_id: NodeId
    round: Round
    owners: Ids
    kinds: Annotated[list[Annotated[str, Field(pattern="^[bs]$")]],
                     Field(max_length=MAX_NEIGHBOURS)]


def _bytes(t: torch.Tensor) -> bytes:
    return bytes(t.numpy().tobytes())


def _state(node: Site, round_: int) -> dict[str, Any]:
    st: dict[str, Any] | None = node.state.get("secagg")
    if st is None or int(st["round"]) != round_:
        raise MessageError(f"secure aggregation: this site holds no input of round {round_}")
    return st


# -- the site's side ------------------------------------------------------------------------
class SecAggInput:
    """Fit hook: encode the update in the ring, keep it, send public keys instead."""

    mutable: tuple[str, ...] = ("secagg",)

    def __init__(self, ring: Ring) -> None:
        self.ring = ring

    def before_fit(self, ctx: FitContext) -> None:
        return None

    def after_fit(self, ctx: FitContext) -> None:
        assert ctx.update is not None
        c_sk, s_sk = keys.new_private_key(), keys.new_private_key()
        ctx.state["secagg"] = {
            "round": torch.tensor(ctx.round),
            "input": torch.from_numpy(self.ring.encode(ctx.update).astype(np.int64)),
            "ring": torch.tensor([self.ring.bits, self.ring.summands]),
            "clip": torch.tensor(self.ring.clip, dtype=torch.float64),
            "c_sk": torch.frombuffer(bytearray(c_sk), dtype=torch.uint8),
            "s_sk": torch.frombuffer(bytearray(s_sk), dtype=torch.uint8)}
        ctx.out_aux["secagg.c_pk"] = torch.frombuffer(bytearray(keys.public_key(c_sk)),
                                                      dtype=torch.uint8)
        ctx.out_aux["secagg.s_pk"] = torch.frombuffer(bytearray(keys.public_key(s_sk)),
                                                      dtype=torch.uint8)
        ctx.update = ctx.update.new_zeros(0)


def share_keys(node: Site, ins: ShareKeys, bench: Any) -> SealedShares:
    st = _state(node, ins.round)
    k = len(ins.neighbours)
    if ins.public_keys.shape != (k, 64) or len(ins.points) != k or not 1 <= ins.threshold <= k + 1:
        raise MessageError("secure aggregation: malformed key list")
    seed = secrets.token_bytes(32)
    holders = [*ins.points, ins.own_point]  # the site keeps a share of its own secrets too
    b_shares = shamir.split(seed, threshold=ins.threshold, xs=holders)
    s_shares = shamir.split(_bytes(st["s_sk"]), threshold=ins.threshold, xs=holders)
    share_keys = keys.agree_all(_bytes(st["c_sk"]), [_bytes(ins.public_keys[i, :32])
                                                     for i in range(k)], b"shares")
    sealed = np.zeros((k, SEALED_BYTES), dtype=np.uint8)
    for i, peer in enumerate(ins.neighbours):
        key = share_keys[i]
        plain = b_shares[i].to_bytes(SHARE_BYTES, "big") + s_shares[i].to_bytes(SHARE_BYTES,
                                                                                 "big")
        context = f"{ins.round}|{node.node_id}|{peer}".encode()
        sealed[i] = np.frombuffer(keys.seal(key, plain, context), dtype=np.uint8)
    st.update({"seed": torch.frombuffer(bytearray(seed), dtype=torch.uint8),
               "share_keys": torch.frombuffer(bytearray(b"".join(share_keys)),
                                              dtype=torch.uint8).reshape(k, 32),
               "own_share": torch.frombuffer(bytearray(b_shares[-1].to_bytes(SHARE_BYTES,
                                                                            "big")),
                                             dtype=torch.uint8),
               "neighbours": list(ins.neighbours), "points": list(ins.points),
               "own_point": ins.own_point, "public_keys": ins.public_keys.clone()})
    return SealedShares(node.node_id, ins.round, list(ins.neighbours), torch.from_numpy(sealed))


def mask_input(node: Site, ins: MaskInput, bench: Any) -> MaskedInput:
    st = _state(node, ins.round)
    if "neighbours" not in st or not set(ins.senders) <= set(st["neighbours"]):
        raise MessageError("secure aggregation: shares from sites that are not neighbours")
    st["received"] = (list(ins.senders), ins.sealed.clone())
    bits, summands = (int(v) for v in st["ring"])
    ring = Ring(bits, float(st["clip"]), summands)
    senders = set(ins.senders)  # the neighbours that shared their secrets: masks with them
    chosen = [(i, point) for i, (peer, point) in enumerate(zip(st["neighbours"], st["points"],
                                                                strict=True)) if peer in senders]
    agreed = keys.agree_all(_bytes(st["s_sk"]), [_bytes(st["public_keys"][i, 32:])
                                                 for i, _ in chosen], b"mask")
    pairs = {point: key for (_, point), key in zip(chosen, agreed, strict=True)}
    encoded = st["input"].numpy().astype(ring.dtype)
    y = masked_input(ring, encoded, _bytes(st["seed"]), pairs, st["own_point"])
    return MaskedInput(node.node_id, ins.round, ring.to_wire(y))


def unmask(node: Site, ins: Unmask, bench: Any) -> UnmaskShares:
    st = _state(node, ins.round)
    if set(ins.survivors) & set(ins.dropped):
        raise MessageError("secure aggregation: a site cannot be both a survivor and dropped")
    if node.node_id in ins.dropped or "received" not in st:
        raise MessageError("secure aggregation: this site is not a survivor of the round")
    senders, sealed = st["received"]
    position = {peer: i for i, peer in enumerate(st["neighbours"])}
    owners, kinds, shares = [], [], []
    if node.node_id in ins.survivors:  # its own self-mask seed: the share it kept
        owners.append(node.node_id)
        kinds.append("b")
        shares.append(st["own_share"].numpy())
    for j, owner in enumerate(senders):
        if owner not in ins.survivors and owner not in ins.dropped:
            continue
        key = _bytes(st["share_keys"][position[owner]])  # agreed when the shares were made
        plain = keys.unseal(key, _bytes(sealed[j]), f"{ins.round}|{owner}|{node.node_id}"
                            .encode())
        kind = "b" if owner in ins.survivors else "s"
        part = plain[:SHARE_BYTES] if kind == "b" else plain[SHARE_BYTES:]
        owners.append(owner)
        kinds.append(kind)
        shares.append(np.frombuffer(part, dtype=np.uint8))
    del node.state["secagg"]  # answered once: the round's secrets are gone
    table = np.stack(shares) if shares else np.zeros((0, SHARE_BYTES), dtype=np.uint8)
    return UnmaskShares(node.node_id, ins.round, owners, kinds, torch.from_numpy(table))


def install() -> None:
    """Teach this process secure aggregation's messages and the site's stages (every
    process that sends or answers them calls this; calling it again changes nothing)."""
    from ..node.stages import register_stage
    from ..wire import MESSAGES, register_message

    if "ShareKeys" in MESSAGES:
        return
    u8, any_int = torch.uint8, None
    register_message(ShareKeys, fields=ShareKeysFields, tensors={"public_keys": (u8, 2)},
                     required={"public_keys"})
    register_message(SealedShares, fields=SealedSharesFields, tensors={"sealed": (u8, 2)},
                     required={"sealed"}, reply=True)
    register_message(MaskInput, fields=MaskInputFields, tensors={"sealed": (u8, 2)},
                     required={"sealed"})
    register_message(MaskedInput, fields=MaskedInputFields, tensors={"masked": (any_int, 1)},
                     required={"masked"}, reply=True)
    register_message(Unmask, fields=UnmaskFields, tensors={})
    register_message(UnmaskShares, fields=UnmaskSharesFields, tensors={"shares": (u8, 2)},
                     required={"shares"}, reply=True)
    register_stage(ShareKeys, share_keys)
    register_stage(MaskInput, mask_input)
    register_stage(Unmask, unmask)
