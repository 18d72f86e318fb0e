from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("kind", "task_id", "round", "total_bytes", "first", "last", "schema_version", "site", "data")
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
    def __init__(self, kind: _Optional[str] = ..., task_id: _Optional[int] = ..., round: _Optional[int] = ..., total_bytes: _Optional[int] = ..., first: _Optional[bool] = ..., last: _Optional[bool] = ..., schema_version: _Optional[int] = ..., site: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
