"""Messages as chunk streams: split a wire-encoded message into ``Chunk`` frames and
reassemble it on the other side into one preallocated buffer.

Frames are protobuf ``fedtune.v1.Chunk`` messages (any protobuf library parses them), but
fedtune writes and reads them by hand: the envelope fields are serialized by protobuf, the
``data`` field (field 9) is appended as raw bytes, and on receipt ``data`` becomes a
memoryview into the received frame. Protobuf's own path copies a chunk's payload twice more
on each side (into the message object, then into its serialization; on parsing, into a
``bytes`` field), which halved the throughput of one stream (measured with bench/transfer.py).

The sender never builds the whole message (it slices the tensors' own memory; each frame is
one join of envelope and payload pieces); the receiver holds exactly one buffer of the
declared size, checked against a limit before allocating, and decodes tensors from it
without copying. Both directions use this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ...errors import MessageError
from ...wire import decode, encode_views, iter_chunks
from . import SCHEMA_VERSION
from .fedtune_pb2 import Chunk
from .gate import SMALL_MESSAGE, BufferPool, Progress, ReceiveBuffer, new_buffer

_DATA_FIELD = 9
_DATA_TAG = bytes([_DATA_FIELD << 3 | 2])  # field 9, wire type 2 (length-delimited)
METHOD = "/fedtune.v1.Federation/Session"
MAX_CHUNK_KB = 16384  # a frame's payload limit (server.chunk_kb, join --chunk-kb)
MAX_FRAME_BYTES = MAX_CHUNK_KB * 1024 + 65536  # gRPC's per-message limit, both directions


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MessageError("frame is not a valid Chunk protobuf (truncated varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class Frame:
    """One received chunk: the envelope's fields and ``data`` as a view into the frame."""

    __slots__ = ("data", "first", "kind", "last", "problem", "round", "schema_version",
                 "site", "task_id", "total_bytes")

    def __init__(self, env: Chunk, data: memoryview, problem: str = "") -> None:
        self.kind, self.task_id, self.round = env.kind, env.task_id, env.round
        self.total_bytes, self.first, self.last = env.total_bytes, env.first, env.last
        self.schema_version, self.site = env.schema_version, env.site
        self.data = data
        self.problem = problem  # set when the frame could not be parsed

    @property
    def text(self) -> str:
        return bytes(self.data).decode(errors="replace")


def parse_frame(raw: bytes) -> Frame:
    """gRPC deserializer: never raises (an exception here would end the whole session);
    an unparsable frame comes back with ``problem`` set."""
    view = memoryview(raw)
    try:
        pos, span = 0, (0, 0, 0)  # (field start, data start, data end)
        while pos < len(view):
            start = pos
            tag, pos = _read_varint(view, pos)
            wire_type = tag & 7
            if wire_type == 0:
                _, pos = _read_varint(view, pos)
            elif wire_type == 2:
                length, pos = _read_varint(view, pos)
                if tag >> 3 == _DATA_FIELD:
                    span = (start, pos, pos + length)
                pos += length
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            else:
                raise MessageError(f"frame is not a valid Chunk protobuf (wire type {wire_type})")
            if pos > len(view):
                raise MessageError("frame is not a valid Chunk protobuf (field runs past its end)")
        head = bytes(view[:span[0]]) + bytes(view[span[2]:]) if span[2] else raw
        env = Chunk.FromString(head)
    except MessageError as exc:
        return Frame(Chunk(), view[:0], str(exc))
    except DecodeError as exc:
        return Frame(Chunk(), view[:0], f"frame is not a valid Chunk protobuf ({exc})")
    return Frame(env, view[span[1]:span[2]])


def frame(kind: str, pieces: list[memoryview] | list[bytes], *, task_id: int = 0,
          round_: int = 0, total_bytes: int = 0, first: bool = True, last: bool = True,
          site: str = "") -> bytes:
    """One frame: the protobuf envelope, then field 9 with the payload pieces (one copy)."""
    env = Chunk(kind=kind, task_id=task_id, round=round_, total_bytes=total_bytes,
                first=first, last=last, schema_version=SCHEMA_VERSION, site=site)
    size = sum(len(p) for p in pieces)
    return b"".join([env.SerializeToString(), _DATA_TAG, _varint(size), *pieces])


def open_session(channel: grpc.Channel) -> Any:
    """The Session call of a site's channel, sending and receiving hand-made frames."""
    return channel.stream_stream(METHOD, request_serializer=None,
                                 response_deserializer=parse_frame)


def session_handler(behaviour: Any) -> grpc.GenericRpcHandler:
    """Serves ``behaviour(frames, context) -> frames`` as the Session RPC."""
    service, method = METHOD.strip("/").split("/")
    return grpc.method_handlers_generic_handler(service, {method: grpc.stream_stream_rpc_method_handler(
        behaviour, request_deserializer=parse_frame, response_serializer=None)})


def message_chunks(kind: str, msg: Any, *, task_id: int, round_: int, chunk_bytes: int,
                   site: str = "", views: list[memoryview] | None = None) -> Iterator[bytes]:
    """Frames of one message. Pass ``views`` to stream one encoding to many receivers."""
    views = views if views is not None else encode_views(msg)
    total = sum(len(v) for v in views)
    first = True
    sent = 0
    for pieces in iter_chunks(views, chunk_bytes):
        sent += sum(len(p) for p in pieces)
        yield frame(kind, pieces, task_id=task_id, round_=round_,
                    total_bytes=total if first else 0, first=first, last=sent == total,
                    site=site)
        first = False


def control_chunk(kind: str, *, text: str = "", task_id: int = 0, round_: int = 0,
                  site: str = "") -> bytes:
    data = text.encode()
    return frame(kind, [data], task_id=task_id, round_=round_, total_bytes=len(data),
                 site=site)


@dataclass
class Assembly:
    """A message being received."""

    kind: str
    task_id: int
    round: int
    buffer: ReceiveBuffer
    filled: int = 0
    started: float = field(default_factory=time.perf_counter)  # when its buffer was ready


class Assembler:
    """Reassembles chunk streams; raises :class:`MessageError` on anything malformed."""

    def __init__(self, max_bytes: int,
                 admit: Callable[[int, int, Callable[[int], ReceiveBuffer], Progress],
                                 ReceiveBuffer] | None = None, *, reuse: bool = False,
                 on_stall: Callable[[], object] | None = None) -> None:
        """``admit(task_id, size, new_buffer, progress)`` may wait before allocating a
        message's buffer (see :class:`~fedtune.runtime.grpc.gate.UploadGate`); ``progress``
        tells it when this stream last brought a chunk, and ``on_stall`` ends the stream.

        With ``reuse`` (a site), the last large message's buffer is kept and received into
        again when the next message has the same size and nothing reads the old one any
        more (:class:`~fedtune.runtime.grpc.gate.BufferPool`, at most one spare): a site gets the
        model every round, and memory it already touched costs no page faults (fresh memory
        does: bench/transfer.py measures it).
        """
        self.max_bytes = max_bytes
        self.admit = admit
        self.pool = BufferPool(latest_only=True) if reuse else None
        self.current: Assembly | None = None
        self.progress = Progress(on_stall)

    def _buffer(self, task_id: int, size: int) -> ReceiveBuffer:
        if self.admit is not None:
            return self.admit(task_id, size, new_buffer, self.progress)
        if self.pool is not None and size >= SMALL_MESSAGE:
            return self.pool.lease(size)
        return new_buffer(size)

    def add(self, chunk: Frame) -> Assembly | None:
        """Feed one chunk; returns the finished message when ``chunk`` was its last."""
        self.progress.last = time.monotonic()
        if chunk.problem:
            self.current = None
            raise MessageError(chunk.problem)
        if chunk.schema_version != SCHEMA_VERSION:
            raise MessageError(f"schema version {chunk.schema_version} is not supported; this "
                               f"coordinator speaks version {SCHEMA_VERSION}: upgrade fedtune")
        if chunk.first:
            if chunk.total_bytes > self.max_bytes:
                self.current = None
                raise MessageError(f"message of {chunk.total_bytes} bytes exceeds the limit of "
                                   f"{self.max_bytes} (server.max_message_mb)")
            self.current = None  # an unfinished message's buffer is freed first
            buffer = self._buffer(chunk.task_id, chunk.total_bytes)
            self.current = Assembly(chunk.kind, chunk.task_id, chunk.round, buffer)
        cur = self.current
        if cur is None or chunk.task_id != cur.task_id:
            raise MessageError("chunk of a message whose first chunk never came")
        end = cur.filled + len(chunk.data)
        if end > len(cur.buffer):
            self.current = None
            raise MessageError(f"message is longer than its declared {len(cur.buffer)} bytes")
        cur.buffer[cur.filled:end] = np.frombuffer(chunk.data, dtype=np.uint8)
        cur.filled = end
        if not chunk.last:
            return None
        self.progress.last = math.inf  # received: whoever holds it now, this stream is idle
        self.current = None
        if cur.filled != len(cur.buffer):
            raise MessageError(f"message ended after {cur.filled} of {len(cur.buffer)} bytes")
        return cur


def decode_assembly(done: Assembly, *, require_finite: bool = True) -> Any:
    return decode(done.buffer, require_finite=require_finite)
