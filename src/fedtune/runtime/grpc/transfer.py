"""Messages as chunk streams: split a wire-encoded message into :class:`Chunk` protos and
reassemble it on the other side into one preallocated buffer.

The sender never builds the whole message (it slices the tensors' own memory); the receiver
holds exactly one buffer of the declared size, checked against a limit before allocating,
and decodes tensors from it without copying. Both directions use this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import MessageError
from ...wire import decode, encode_views, iter_chunks
from . import SCHEMA_VERSION
from .fedtune_pb2 import Chunk


def message_chunks(kind: str, msg: Any, *, task_id: int, round_: int, chunk_bytes: int,
                   site: str = "", views: list[memoryview] | None = None) -> Iterator[Chunk]:
    """Chunks of one message. Pass ``views`` to stream one encoding to many receivers."""
    views = views if views is not None else encode_views(msg)
    total = sum(len(v) for v in views)
    first = True
    sent = 0
    for data in iter_chunks(views, chunk_bytes):
        sent += len(data)
        yield Chunk(kind=kind, task_id=task_id, round=round_, total_bytes=total if first else 0,
                    first=first, last=sent == total, schema_version=SCHEMA_VERSION, site=site,
                    data=data)
        first = False


def control_chunk(kind: str, *, text: str = "", task_id: int = 0, round_: int = 0,
                  site: str = "") -> Chunk:
    data = text.encode()
    return Chunk(kind=kind, task_id=task_id, round=round_, total_bytes=len(data), first=True,
                 last=True, schema_version=SCHEMA_VERSION, site=site, data=data)


@dataclass
class Assembly:
    """A message being received."""

    kind: str
    task_id: int
    round: int
    buffer: bytearray
    filled: int = 0


class Assembler:
    """Reassembles chunk streams; raises :class:`MessageError` on anything malformed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.current: Assembly | None = None

    def add(self, chunk: Chunk) -> Assembly | None:
        """Feed one chunk; returns the finished message when ``chunk`` was its last."""
        if chunk.schema_version != SCHEMA_VERSION:
            raise MessageError(f"schema version {chunk.schema_version} is not supported; this "
                               f"coordinator speaks version {SCHEMA_VERSION}: upgrade fedtune")
        if chunk.first:
            if chunk.total_bytes > self.max_bytes:
                self.current = None
                raise MessageError(f"message of {chunk.total_bytes} bytes exceeds the limit of "
                                   f"{self.max_bytes} (server.max_message_mb)")
            self.current = Assembly(chunk.kind, chunk.task_id, chunk.round,
                                    bytearray(chunk.total_bytes))
        cur = self.current
        if cur is None or chunk.task_id != cur.task_id:
            raise MessageError("chunk of a message whose first chunk never came")
        end = cur.filled + len(chunk.data)
        if end > len(cur.buffer):
            self.current = None
            raise MessageError(f"message is longer than its declared {len(cur.buffer)} bytes")
        cur.buffer[cur.filled:end] = chunk.data
        cur.filled = end
        if not chunk.last:
            return None
        self.current = None
        if cur.filled != len(cur.buffer):
            raise MessageError(f"message ended after {cur.filled} of {len(cur.buffer)} bytes")
        return cur


def decode_assembly(done: Assembly, *, require_finite: bool = True) -> Any:
    return decode(done.buffer, require_finite=require_finite)
