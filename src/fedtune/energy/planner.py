"""Cost of a fine-tuning job on one hardware option: FLOPs, memory, time, energy, CO2, money,
bytes. Pure arithmetic on the tables of :mod:`.plan_data`; every formula is written here.

* **FLOPs.** Full training and pretraining: ``6 N D`` (Kaplan et al. 2020, "Scaling Laws
  for Neural Language Models", sec. 2.1: 2ND forward, 4ND backward). LoRA (Hu et al. 2021):
  the forward (2ND) and the backward through the frozen weights for the activations' gradients
  (2ND) remain, the frozen weights' own gradients (2ND) are skipped, and the adapters cost
  ``6 N_lora D``: ``4 N D + 6 N_lora D``. Activation recomputation adds one forward (2ND).
  ``D`` is tokens x epochs. A published total may replace the formula (``flops``).
* **Time.** device-hours = FLOPs / (peak(dtype) x MFU x goodput) / 3600, MFU being the model
  FLOPs utilisation (Chowdhery et al. 2022, PaLM, app. B) and goodput the share of wall time
  spent on useful steps (restarts and failures take the rest).
* **Memory** per device: mixed-precision AdamW holds 16 bytes per trained parameter (2 weights,
  2 gradients, 4 fp32 master, 8 Adam moments: Rajbhandari et al. 2020, ZeRO, sec. 3.1), sharded
  over the devices of one site (ZeRO-3 / FSDP); LoRA's frozen base holds base_bits/8 bytes per
  parameter (4 bits = QLoRA, Dettmers et al. 2023). Activations per device: ``34 s b h`` bytes
  per layer (Korthikanti et al. 2022, eq. 1, without the ``5 a s^2 b`` attention scores, which
  FlashAttention does not store), ``2 s b h`` per layer plus one layer's with recomputation.
  A device is usable to 90 % of its memory (runtime context and fragmentation).
* **Energy** = device-hours x power x PUE, power being the device's TDP unless a measured
  figure is given (the method of Touvron et al. 2023 and Luccioni et al. 2022).
  **CO2** = energy x the grid's location-based intensity (CodeCarbon's data) + the embodied
  carbon of the hardware amortised over its service life: embodied x device-hours /
  (life years x 8760 x share of life in use); 6 years and 85 % as in Luccioni et al. 2022.
* **Federated** over S sites: the same FLOPs spread over the sites that train each round;
  each round every taking part site downloads and uploads the trained parameters
  (``update_bits`` each) over its own link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .carbon import carbon_intensity
from .plan_data import Hardware, ModelPreset, hardware

USABLE_MEMORY = 0.9
ADAM_BYTES = 16  # per trained parameter, mixed precision (ZeRO sec. 3.1)
MAX_DEVICES = 16384


class Job(BaseModel):
    """What to train: the model, how many tokens, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelPreset
    tokens: float = Field(gt=0)  # per epoch
    epochs: float = Field(1.0, gt=0)
    method: Literal["full", "lora", "pretrain"] = "full"
    lora_rank: int = Field(16, ge=1)
    lora_targets: int = Field(2, ge=1)  # adapted h x h matrices per layer (q and v, Hu et al.)
    base_bits: Literal[4, 8, 16, 32] = 16  # LoRA's frozen base weights
    seq_len: int = Field(2048, ge=1)
    micro_batch: int = Field(1, ge=1)
    dtype: Literal["fp32", "tf32", "bf16", "fp16", "fp8"] = "bf16"
    recompute: bool = False
    flops: float | None = Field(None, gt=0)  # a published total replaces the formula
    deadline_hours: float | None = Field(None, gt=0)


class Option(BaseModel):
    """Where and how to train it. ``sites = 0``: central; ``sites = S``: federated over S
    sites with ``devices`` each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware: str
    acquire: Literal["rent", "own", "buy"] = "rent"
    devices: int = Field(0, ge=0)  # 0: the fewest (a power of two) that fit and meet the deadline
    sites: int = Field(0, ge=0)
    fraction: float = Field(1.0, gt=0, le=1)  # sites taking part in each round
    rounds: int = Field(100, ge=1)
    link_mbps: float = Field(100.0, gt=0)
    update_bits: Literal[8, 16, 32] = 32
    country: str = "USA"
    g_per_kwh: float | None = Field(None, ge=0)  # replaces the country's grid intensity
    pue: float | None = Field(None, ge=1)
    mfu: float | None = Field(None, gt=0, le=1)
    goodput: float = Field(1.0, gt=0, le=1)
    power_watts: float | None = Field(None, gt=0)
    price_per_hour: float | None = Field(None, ge=0)
    electricity_usd_per_kwh: float = Field(0.15, ge=0)
    life_years: float = Field(6.0, gt=0)
    life_use: float = Field(0.85, gt=0, le=1)
    label: str = ""


DEFAULT_MFU = {"gpu": 0.40, "tpu": 0.40, "cpu": 0.20, "laptop": 0.20}
DEFAULT_PUE = {"rent": 1.1, "own": 1.55, "buy": 1.55, "site": 1.0}
ASSUMPTIONS = [
    "MFU 40 % on GPUs and TPUs (Llama 3 405B reached 38-43 %, Llama Team 2024, table 4), "
    "20 % on CPUs and laptops; small models reach far less: measure yours",
    "PUE 1.1 for rented cloud (Patterson et al. 2021), 1.55 for one's own data centre (Uptime "
    "Institute 2022 survey average), 1.0 for a site's own machine (no cooling counted)",
    "power = the device's TDP for the whole run unless a measured figure is given",
    "electricity USD 0.15 per kWh for owned hardware; rented prices include it",
    "embodied carbon amortised over 6 years at 85 % use (Luccioni et al. 2022)",
    "memory: mixed-precision AdamW, 16 bytes per trained parameter, sharded over one site's "
    "devices (ZeRO-3); activations for micro-batch 1 unless set; 90 % of memory usable",
    "federated: every taking part site sends and receives the trained parameters each round; "
    "the links' time adds to the compute (no overlap); the coordinator's link is not the limit",
]


@dataclass
class Estimate:
    label: str
    hardware: str
    where: str
    acquire: str
    devices: int  # per site when federated
    sites: int
    fits: bool
    memory_gb_per_device: float
    memory_gb_available: float
    flops: float
    device_hours: float
    wall_hours: float
    energy_kwh: float
    co2_kg: float  # operational, location-based
    embodied_co2_kg: float
    money_usd: float | None
    bytes_per_round: float
    bytes_total: float
    comm_hours: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_co2_kg(self) -> float:
        return self.co2_kg + self.embodied_co2_kg


def trained_params(job: Job) -> float:
    """Parameters with gradients: all of them, or LoRA's adapters (2 r h per h x h matrix)."""
    m = job.model
    if job.method == "lora":
        return float(m.layers * job.lora_targets * 2 * job.lora_rank * m.hidden)
    return m.params


def training_flops(job: Job) -> tuple[float, str]:
    """Total training FLOPs and the formula used."""
    if job.flops is not None:
        return job.flops, "published total"
    n, d = job.model.params, job.tokens * job.epochs
    extra = 2 * n * d if job.recompute else 0.0
    tail = " + 2ND (recompute)" if job.recompute else ""
    if job.method == "lora":
        return 4 * n * d + 6 * trained_params(job) * d + extra, "4ND + 6 N_lora D" + tail
    return 6 * n * d + extra, "6ND" + tail


def memory_bytes(job: Job, devices: int) -> dict[str, float]:
    """Bytes per device: model states sharded over ``devices``, activations per device."""
    m = job.model
    act_scale = 2.0 if job.dtype in ("fp32", "tf32") else 1.0
    sbh = job.seq_len * job.micro_batch * m.hidden * act_scale
    if job.method == "lora":
        frozen = m.params * job.base_bits / 8
        states = frozen + ADAM_BYTES * trained_params(job)
    else:
        states = ADAM_BYTES * m.params
    activations = (2 * sbh * m.layers + 34 * sbh) if job.recompute else 34 * sbh * m.layers
    return {"states": states / devices, "activations": activations,
            "total": states / devices + activations}


def fits(job: Job, hw: Hardware, devices: int) -> bool:
    return memory_bytes(job, devices)["total"] <= hw.memory_gb * 1e9 * USABLE_MEMORY


def fewest_devices(job: Job, hw: Hardware, *, cap: int = MAX_DEVICES) -> int | None:
    """The fewest devices (a power of two) that hold the job, or None up to ``cap``."""
    d = 1
    while d <= cap:
        if fits(job, hw, d):
            return d
        d *= 2
    return None


def _power(hw: Hardware, option: Option) -> float:
    if option.power_watts is not None:
        return option.power_watts
    if hw.tdp_w is None:
        raise ConfigError(f"{hw.name}: {hw.power_note or 'no power figure'}")
    return hw.tdp_w


def estimate(job: Job, option: Option) -> Estimate:
    """What ``job`` costs on ``option``."""
    hw = hardware(option.hardware)
    flops, _ = training_flops(job)
    peak, _ = hw.peak_flops(job.dtype)
    mfu = option.mfu if option.mfu is not None else DEFAULT_MFU[hw.kind]
    device_hours = flops / (peak * mfu * option.goodput) / 3600
    federated = option.sites > 0
    notes: list[str] = []
    if federated:
        devices = option.devices or 1
        taking_part = max(1, round(option.sites * option.fraction))
        per_update = trained_params(job) * option.update_bits / 8
        bytes_per_round = 2 * per_update * taking_part
        comm_hours = option.rounds * 2 * per_update * 8 / (option.link_mbps * 1e6) / 3600
        wall = device_hours / (devices * taking_part) + comm_hours
        if not fits(job, hw, devices):
            need = fewest_devices(job, hw)
            notes.append(f"does not fit one site's {devices} x {hw.name}"
                         + (f"; {need} per site would" if need else ""))
    else:
        taking_part, bytes_per_round, comm_hours = 1, 0.0, 0.0
        devices = option.devices or _auto_devices(job, hw, device_hours)
        wall = device_hours / devices
    mem = memory_bytes(job, devices)["total"]
    fit = fits(job, hw, devices)
    if not fit and not federated:
        notes.append(f"does not fit {devices} x {hw.name} ({mem / 1e9:,.1f} GB per device)")
    if job.deadline_hours is not None and wall > job.deadline_hours:
        notes.append(f"misses the {job.deadline_hours:g} h deadline")
    pue = option.pue if option.pue is not None else DEFAULT_PUE[
        "site" if federated and option.acquire == "own" else option.acquire]
    energy_kwh = device_hours * _power(hw, option) * pue / 1000
    grid = option.g_per_kwh if option.g_per_kwh is not None else carbon_intensity(option.country)
    co2_kg = energy_kwh * grid / 1000
    embodied = 0.0
    if hw.embodied_kg is None:
        notes.append(f"embodied carbon of {hw.name} unknown, not counted")
    else:
        embodied = hw.embodied_kg * device_hours / (option.life_years * 8760 * option.life_use)
    money = _money(hw, option, device_hours, energy_kwh,
                   devices * option.sites if federated else devices, notes)
    return Estimate(
        label=option.label or _label(option), hardware=hw.name,
        where="federated" if federated else "central", acquire=option.acquire,
        devices=devices, sites=option.sites, fits=fit, memory_gb_per_device=mem / 1e9,
        memory_gb_available=hw.memory_gb, flops=flops, device_hours=device_hours,
        wall_hours=wall, energy_kwh=energy_kwh, co2_kg=co2_kg, embodied_co2_kg=embodied,
        money_usd=money, bytes_per_round=bytes_per_round,
        bytes_total=bytes_per_round * option.rounds if federated else 0.0,
        comm_hours=comm_hours, notes=notes)


def _auto_devices(job: Job, hw: Hardware, device_hours: float) -> int:
    """The fewest devices (a power of two) that hold the job and meet its deadline."""
    d = fewest_devices(job, hw) or 1
    if job.deadline_hours is not None:
        while d < MAX_DEVICES and device_hours / d > job.deadline_hours:
            d *= 2
    return d


def _money(hw: Hardware, option: Option, device_hours: float, energy_kwh: float,
           devices_bought: int, notes: list[str]) -> float | None:
    power_bill = energy_kwh * option.electricity_usd_per_kwh
    if option.acquire == "own":
        return power_bill
    if option.acquire == "buy":
        if hw.purchase_usd is None:
            notes.append(f"no purchase price for {hw.name} in the table")
            return None
        return hw.purchase_usd * devices_bought + power_bill
    price = option.price_per_hour if option.price_per_hour is not None else hw.price_per_hour
    if price is None:
        notes.append(f"no rental price for {hw.name}: give price_per_hour, or acquire own/buy")
        return None
    return device_hours * price


def _label(option: Option) -> str:
    if option.sites:
        return f"federated: {option.sites} sites x {option.hardware} ({option.acquire})"
    return f"{option.acquire} {option.hardware}"
