"""The planner's tables, shipped in the package: hardware (``hardware.toml``) and well-known
open models (``models.toml``). Each is validated when loaded; every entry names its source."""

from __future__ import annotations

import difflib
import math
import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

HERE = Path(__file__).parent
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    kind: Literal["gpu", "tpu", "cpu", "laptop"]
    tflops: dict[str, float]
    memory_gb: float = Field(gt=0)
    tdp_w: float | None = Field(None, gt=0)
    spec_source: str
    power_note: str = ""
    die_mm2: float | None = None
    embodied_kg: float | None = Field(None, ge=0)
    embodied_source: str = ""
    embodied_note: str = ""
    price_per_hour: float | None = Field(None, ge=0)
    price_source: str = ""
    purchase_usd: float | None = Field(None, ge=0)
    purchase_source: str = ""

    def peak_flops(self, dtype: str) -> tuple[float, str]:
        """Peak FLOP/s for ``dtype`` and the dtype it runs in: 16-bit work on a device
        without bf16 runs in fp16; fp32 on a device without tf32 stays fp32."""
        order = {"bf16": ("bf16", "fp16"), "fp16": ("fp16", "bf16"), "tf32": ("tf32", "fp32"),
                 "fp8": ("fp8", "bf16", "fp16")}.get(dtype, (dtype,))
        for d in order:
            if d in self.tflops:
                return self.tflops[d] * 1e12, d
        raise ConfigError(f"{self.name} has no {dtype} rate (it has {sorted(self.tflops)}): "
                          "choose one of those with --dtype")


class ModelPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: float = Field(gt=0)
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    vocab: int = Field(0, ge=0)
    source: str


def _load(path: Path, kind: type[BaseModel]) -> dict[str, BaseModel]:
    raw = tomllib.loads(path.read_text())
    out: dict[str, BaseModel] = {}
    for name, entry in raw.items():
        try:
            out[name] = kind(name=name, **entry)
        except ValidationError as exc:
            raise ConfigError(f"{path.name} [{name}]: {exc.errors()[0]['msg']}") from None
    return out


@cache
def hardware_table() -> dict[str, Hardware]:
    return _load(HERE / "hardware.toml", Hardware)  # type: ignore[return-value]


@cache
def model_presets() -> dict[str, ModelPreset]:
    return _load(HERE / "models.toml", ModelPreset)  # type: ignore[return-value]


def _unknown(what: str, name: str, known: list[str]) -> ConfigError:
    near = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ConfigError(f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")


def hardware(name: str) -> Hardware:
    table = hardware_table()
    if name not in table:
        raise _unknown("hardware", name, sorted(table))
    return table[name]


def model_preset(name: str) -> ModelPreset:
    table = model_presets()
    if name not in table:
        raise _unknown("model", name, sorted(table))
    return table[name]


def shape_for(params: float) -> ModelPreset:
    """A decoder shape for a bare parameter count: N = 12 L h^2 with h = 128 L (the aspect
    ratio of the GPT-3 family, Kaplan et al. 2020 fig. 5 shows loss is flat around it) and
    heads of size 128. The planner lists this as an assumption."""
    if not math.isfinite(params) or params <= 0:
        raise ConfigError(f"model parameters must be a positive number, got {params!r}")
    layers = max(1, round((params / (12 * 128**2)) ** (1 / 3)))
    hidden = max(64, round(math.sqrt(params / (12 * layers)) / 64) * 64)
    return ModelPreset(name=f"{params:.3g} parameters", params=params, layers=layers,
                       hidden=hidden, heads=max(1, hidden // 128), vocab=0,
                       source="shape estimated from the parameter count (12 L h^2, h = 128 L)")
