"""The declared fields of every message, checked at the boundary before anything uses them.

A message's header (:mod:`fedtune.wire`) carries its scalar fields as JSON and a table of its
tensors. JSON alone admits anything: ``num_examples`` as a string, ``10**400``, ``1e400``
(infinity), a list where a dict belongs. Each message kind therefore has a pydantic model of
its scalar fields (strict types, ranges, finiteness, sizes) and a declaration of the tensors
it may carry (name, dtype, rank), so a decoded message is typed and bounded before the
coordinator or a node sees it, and a bad one is a :class:`MessageError` naming the field.

The models list exactly the scalar fields of the dataclasses in :mod:`fedtune.types`; a test
checks that the two agree, so a field added to a message cannot skip its check.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import MessageError

MAX_COUNT = 2**53  # beyond this an integer count is not exact as a float weight
MAX_TENSORS = 64
MAX_RANK = 8


class MessageFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Round = Annotated[int, Field(ge=0, le=2**31 - 1)]
NodeId = Annotated[str, Field(min_length=1, max_length=128)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Loss = float  # a measurement: NaN (none measured) and infinity (diverged) are reported as they are
Encoding = Annotated[str, Field(max_length=128)]
Key = Annotated[str, Field(min_length=1, max_length=64)]
ConfigValue = int | float | bool | Annotated[str, Field(max_length=512)]
Config = Annotated[dict[Key, ConfigValue], Field(max_length=64)]
Metrics = Annotated[dict[Key, Loss], Field(max_length=64)]


class MeterFields(MessageFields):
    energy_method: Annotated[str, Field(max_length=64)] = ""


class FitInsFields(MessageFields):
    round: Round
    config: Config = {}
    encoding: Encoding = ""


class FitResFields(MessageFields):
    node_id: NodeId
    round: Round
    num_examples: Annotated[int, Field(ge=1, le=MAX_COUNT)]
    num_steps: Count
    train_loss: Loss
    meter: MeterFields = MeterFields()
    encoding: Encoding = ""


class EvalInsFields(MessageFields):
    round: Round
    config: Config = {}


class EvalResFields(MessageFields):
    node_id: NodeId
    round: Round
    num_examples: Count
    metrics: Metrics
    meter: MeterFields = MeterFields()


FIELDS: dict[str, type[MessageFields]] = {"FitIns": FitInsFields, "FitRes": FitResFields,
                                    "EvalIns": EvalInsFields, "EvalRes": EvalResFields}

# The tensors each message may carry: name -> (dtype, rank) with None for "any of the wire's
# dtypes" (compressed payloads choose theirs) and rank None for any rank. Parameter vectors
# and updates are float32, the ParamSpec's dtype.
_PACKED = "aux.packed."
TENSORS: dict[str, dict[str, tuple[torch.dtype | None, int | None]]] = {
    "FitIns": {"params": (torch.float32, 1), "aux.scaffold_c": (torch.float32, 1),
               "aux.buffers": (torch.float32, 1), "aux.fedex_theta": (torch.float32, 1),
               "aux.site_steps": (torch.uint8, 1), "aux.site_uplink": (torch.uint8, 1),
               "aux.attack_sites": (torch.uint8, 1)},
    "FitRes": {"update": (torch.float32, 1), "meter": (torch.float64, 1),
               "aux.scaffold_dc": (torch.float32, 1), "aux.dp_clip_bit": (torch.float32, 1),
               "aux.buffers": (torch.float32, 1), "aux.fedex_choice": (torch.float32, 1),
               "aux.fedex_loss": (torch.float32, 1), "aux.fedex_val": (torch.float32, 1),
               "aux.dp_sample_epsilon": (torch.float64, 1), "aux.start_loss": (torch.float32, 1),
               "aux.secagg.c_pk": (torch.uint8, 1), "aux.secagg.s_pk": (torch.uint8, 1)},
    "EvalIns": {"params": (torch.float32, 1), "aux.buffers": (torch.float32, 1)},
    "EvalRes": {"meter": (torch.float64, 1), "aux.bias_counts": (torch.float64, 2)},
}
REQUIRED = {"FitIns": {"params"}, "FitRes": {"update", "meter"}, "EvalIns": {"params"},
            "EvalRes": {"meter"}}


class TableRow(BaseModel):
    """One tensor of the header's table: name, dtype name, shape, byte length."""

    model_config = ConfigDict(strict=True, frozen=True)
    name: Annotated[str, Field(min_length=1, max_length=128)]
    dtype: Annotated[str, Field(max_length=16)]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=2**40)]], Field(max_length=MAX_RANK)]
    nbytes: Annotated[int, Field(ge=0, le=2**50)]


_UNION_MEMBERS = {"int", "float", "bool", "str", "constrained-str"}


def _describe(exc: ValidationError, what: str) -> str:
    errors = exc.errors()
    # a value of a union (a config value) fails once per member: the member of its own type
    # (a string too long, not "should be an integer") is the one that says what is wrong
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    loc = [p for p in first["loc"] if p not in _UNION_MEMBERS] if len(errors) > 1 \
        else first["loc"]
    where = ".".join(str(p) for p in loc) or what
    value = repr(first.get("input"))
    value = value if len(value) <= 40 else value[:37] + "..."
    return f"{what} field {where!r} = {value}: {first['msg']}"


def check_fields(kind: str, scalars: Any) -> dict[str, Any]:
    """The scalar fields of a ``kind`` message, typed and bounded (or a MessageError)."""
    if not isinstance(scalars, dict):
        raise MessageError(f"{kind} fields must be a JSON object, got {type(scalars).__name__}")
    try:
        return FIELDS[kind].model_validate(scalars).model_dump()
    except ValidationError as exc:
        raise MessageError(_describe(exc, kind)) from None


def check_table(kind: str, table: Any, dtypes: dict[str, torch.dtype]) -> list[TableRow]:
    """The header's tensor table, each row declared for ``kind`` (or a MessageError)."""
    if not isinstance(table, list) or len(table) > MAX_TENSORS:
        raise MessageError(f"{kind} tensor table must be a list of at most {MAX_TENSORS} rows")
    allowed, rows, names = TENSORS[kind], [], set[str]()
    for raw in table:
        if not isinstance(raw, list) or len(raw) != 4:
            raise MessageError(f"{kind} tensor table row {raw!r:.60} is not [name, dtype, "
                               "shape, bytes]")
        try:
            row = TableRow(name=raw[0], dtype=raw[1], shape=raw[2], nbytes=raw[3])
        except ValidationError as exc:
            raise MessageError(_describe(exc, f"{kind} tensor")) from None
        if row.dtype not in dtypes:
            raise MessageError(f"tensor {row.name!r} has unsupported dtype {row.dtype!r}")
        if row.name in names:
            raise MessageError(f"tensor {row.name!r} appears twice in a {kind}")
        names.add(row.name)
        rows.append(row)
        if row.name.startswith(_PACKED):
            continue  # compressed payloads: checked by the decompressor
        if row.name not in allowed:
            raise MessageError(f"a {kind} carries no tensor {row.name!r}; it may carry "
                               f"{', '.join(sorted(allowed))} and aux.packed.*")
        dtype, rank = allowed[row.name]
        if dtype is not None and dtypes[row.dtype] != dtype:
            raise MessageError(f"tensor {row.name!r} must be {str(dtype).split('.')[-1]}, "
                               f"got {row.dtype}")
        if rank is not None and len(row.shape) != rank:
            raise MessageError(f"tensor {row.name!r} must have rank {rank}, got shape "
                               f"{row.shape}")
    missing = REQUIRED[kind] - names
    if missing:
        raise MessageError(f"a {kind} must carry the tensor(s) {', '.join(sorted(missing))}")
    return rows


def declare(kind: str, fields: type[MessageFields],
            tensors: dict[str, tuple[torch.dtype | None, int | None]],
            required: set[str]) -> None:
    """Declare one more message kind's scalar fields and tensors (a new protocol stage);
    :func:`fedtune.wire.register_message` calls this."""
    FIELDS[kind], TENSORS[kind], REQUIRED[kind] = fields, dict(tensors), set(required)
