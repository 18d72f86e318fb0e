from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("data", "first", "kind", "last", "round", "schema_version", "site", "task_id", "total_bytes")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    task_id: int
    round: int
    total_bytes: int
    first: bool
    last: bool
    schema_version: int
    site: str
    data: bytes
    def __init__(self, kind: str | None = ..., task_id: int | None = ..., round: int | None = ..., total_bytes: int | None = ..., first: bool | None = ..., last: bool | None = ..., schema_version: int | None = ..., site: str | None = ..., data: bytes | None = ...) -> None: ...
