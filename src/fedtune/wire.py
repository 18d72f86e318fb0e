"""The wire format of every message, and its exact size without building it.

Layout (little-endian)::

    b"FTW1" | u32 header length H | H bytes of UTF-8 JSON header | tensor payloads

The header (space-padded so payloads start 8-byte aligned) holds the message kind, its
scalar fields, and for each tensor its name, dtype,
shape and byte length, in payload order. Payloads are the tensors' raw bytes, back to back.
:func:`encoded_size` computes ``len(encode(msg))`` from the same header without copying any
tensor, so the in-process runtime reports exact bytes at no cost; :func:`decode` validates
the header against the declared schema of each message (:mod:`fedtune.message_schema`:
field types and ranges, which tensors with which dtypes), sizes and finiteness, and raises
:class:`MessageError` naming the problem.

Why not safetensors: its header has alignment padding we would have to re-derive to count
bytes without serializing, and it cannot carry the scalar fields beside the tensors.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import ConfigError, MessageError
from .message_schema import MessageFields, check_fields, check_table, declare
from .types import EvalIns, EvalRes, FitIns, FitRes, NodeMeter

MAGIC = b"FTW1"
M = TypeVar("M")
MESSAGES: dict[str, type] = {c.__name__: c for c in (FitIns, FitRes, EvalIns, EvalRes)}
REPLIES: set[type] = {FitRes, EvalRes}  # the kinds a node answers with (each has a node_id)
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 1 << 20


def register_message(cls: type, *, fields: type[MessageFields],
                     tensors: dict[str, tuple[torch.dtype | None, int | None]],
                     required: set[str] | None = None, reply: bool = False) -> None:
    """Make a dataclass travel as a message of its own kind (a new protocol stage, such as
    secure aggregation's key exchange): ``fields`` declares its scalar fields, ``tensors``
    its tensors (name -> (dtype, rank); ``aux.<key>`` for entries of an ``aux`` dict), and
    ``required`` the tensors it must carry; ``reply`` marks a node's answer (its fields
    include ``node_id``). Every runtime then moves it unchanged."""
    MESSAGES[cls.__name__] = cls
    if reply:
        REPLIES.add(cls)
    declare(cls.__name__, fields, tensors, required or set())


def _parts(msg: Any) -> tuple[bytes, list[torch.Tensor]]:
    kind = type(msg).__name__
    if kind not in MESSAGES:
        raise MessageError(f"cannot encode a {kind}; messages are {sorted(MESSAGES)}")
    scalars: dict[str, Any] = {}
    tensors: list[tuple[str, torch.Tensor]] = []
    for f in fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, torch.Tensor):
            tensors.append((f.name, value))
        elif f.name == "aux":
            tensors += [(f"aux.{k}", v) for k, v in sorted(value.items())]
        elif isinstance(value, NodeMeter):
            # measured numbers travel as a fixed-size float64 tensor, so a message's size
            # does not depend on how many digits a timing happens to print with
            scalars[f.name] = {"energy_method": value.energy_method}
            tensors.append((f.name, torch.tensor([value.wall_s, value.cpu_s, value.energy_j,
                                                  value.co2_g], dtype=torch.float64)))
        else:
            scalars[f.name] = value
    table = [[name, _DTYPE_NAMES[t.dtype], list(t.shape), t.numel() * t.element_size()]
             for name, t in tensors]
    header = json.dumps({"kind": kind, "fields": scalars, "tensors": table},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # JSON ignores trailing spaces; payloads stay aligned
    return header, [t for _, t in tensors]


def encoded_size(msg: Any) -> int:
    """Exactly ``len(encode(msg))``, computed without copying tensor data."""
    header, tensors = _parts(msg)
    return 8 + len(header) + sum(t.numel() * t.element_size() for t in tensors)


def sendable(msg: M) -> M:
    """``msg`` itself, once its fields and tensors pass the checks :func:`decode` applies on
    the other side (every runtime then refuses what one over the network would, up front)."""
    header, _ = _parts(msg)
    try:
        _checked_header(json.loads(header))
    except MessageError as exc:
        raise ConfigError(f"the configuration makes a {type(msg).__name__} that cannot be "
                          f"sent: {exc}") from None
    return msg


def encode(msg: Any) -> bytes:
    """Serialize a message to bytes."""
    return b"".join(bytes(piece) for piece in encode_views(msg))


def encode_views(msg: Any) -> list[memoryview]:
    """The message as a list of buffers (prefix, header, each tensor's bytes) without copying
    tensor data, for streaming a large message in chunks."""
    header, tensors = _parts(msg)
    views = [memoryview(MAGIC + struct.pack("<I", len(header)) + header)]
    for t in tensors:
        flat = t.detach().contiguous().cpu().reshape(-1)
        views.append(flat.view(torch.uint8).numpy().data)
    return views


def iter_chunks(views: list[memoryview], chunk_bytes: int) -> Any:
    """Yield each chunk of at most ``chunk_bytes`` over the concatenated views, as a list of
    memoryview pieces (no copy: the sender joins them once, with its framing)."""
    pending: list[memoryview] = []
    size = 0
    for view in views:
        pos = 0
        while pos < len(view):
            take = min(chunk_bytes - size, len(view) - pos)
            pending.append(view[pos:pos + take])
            size += take
            pos += take
            if size == chunk_bytes:
                yield pending
                pending, size = [], 0
    if pending:
        yield pending


def all_finite(t: torch.Tensor, block: int = 1 << 20) -> bool:
    """No NaN or infinity in ``t``, checked a block at a time (no mask as large as ``t``).
    CPU tensors are checked with numpy on a view (a tenth of torch's per-call cost on a
    small update, and faster on large ones)."""
    if not t.is_floating_point():
        return True
    flat = t.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_FLOATS:
        array = flat.numpy()
        return all(bool(np.isfinite(array[i:i + block]).all())
                   for i in range(0, array.size, block))
    return all(bool(torch.isfinite(flat[i:i + block]).all())
               for i in range(0, flat.numel(), block))


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def _tensor_at(data: Any, view: memoryview, offset: int, nbytes: int,
               dtype: torch.dtype) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    if isinstance(data, bytearray | np.ndarray) and offset % dtype.itemsize == 0:
        # zero-copy: the tensor shares the receive buffer, which stays alive with it
        return torch.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
    return torch.frombuffer(bytearray(view[offset:offset + nbytes]), dtype=dtype)


def _checked_header(header: Any) -> tuple[str, dict[str, Any], list[Any]]:
    """A parsed header's kind, typed scalar fields and tensor table (or a MessageError)."""
    if not isinstance(header, dict) or set(header) != {"kind", "fields", "tensors"}:
        raise MessageError("message header must be a JSON object with kind, fields, tensors")
    kind = header["kind"]
    if not isinstance(kind, str) or kind not in MESSAGES:
        raise MessageError(f"unknown message kind {kind!r:.60}")
    return kind, check_fields(kind, header["fields"]), check_table(kind, header["tensors"],
                                                                   DTYPES)


def decode(data: bytes | bytearray | memoryview | np.ndarray, *, max_bytes: int | None = None,
           require_finite: bool = True) -> Any:
    """Parse and validate bytes made by :func:`encode`."""
    view = memoryview(data)  # type: ignore[arg-type]  # numpy arrays are buffers
    if max_bytes is not None and len(view) > max_bytes:
        raise MessageError(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise MessageError("not a fedtune message (bad magic); is the peer a fedtune node?")
    (hlen,) = struct.unpack("<I", view[4:8])
    if hlen > MAX_HEADER or 8 + hlen > len(view):
        raise MessageError(f"message header length {hlen} is impossible for {len(view)} bytes")
    try:
        header = json.loads(bytes(view[8:8 + hlen]))
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message header is not valid JSON: {exc}") from None
    kind, scalars, table = _checked_header(header)
    offset, values, aux = 8 + hlen, dict(scalars), {}
    for row in table:
        name, tdtype, shape = row.name, DTYPES[row.dtype], row.shape
        numel = math.prod(shape)
        if numel * tdtype.itemsize != row.nbytes or offset + row.nbytes > len(view):
            raise MessageError(f"tensor {name!r} claims shape {shape} / {row.nbytes} bytes, "
                               "which does not fit the message")
        t = _tensor_at(data, view, offset, row.nbytes, tdtype).view(shape)
        if require_finite and name != "meter" and not all_finite(t):  # meter: range-checked
            raise MessageError(f"tensor {name!r} holds NaN or infinite values")
        offset += row.nbytes
        if name.startswith("aux."):
            aux[name[4:]] = t
        else:
            values[name] = t
    if offset != len(view):
        raise MessageError(f"{len(view) - offset} trailing bytes after the last tensor")
    cls = MESSAGES[kind]
    if "aux" in {f.name for f in fields(cls)}:
        values["aux"] = aux
    if "meter" in values:
        numbers = values["meter"]
        if numbers.shape != (4,):
            raise MessageError("a result's meter must be 4 float64 values")
        wall, cpu, energy, co2 = numbers.tolist()
        if not all(0.0 <= v < 1e18 for v in (wall, cpu, energy, co2)):
            raise MessageError(f"a result's meter holds impossible values {numbers.tolist()}")
        values["meter"] = NodeMeter(wall, cpu, energy, co2, scalars["meter"]["energy_method"])
    return cls(**values)
