"""Run configuration: TOML files and ``--set key=value`` overrides, validated into frozen models.

Every section forbids unknown keys, so a typo is an error naming the key and the keys that
exist. :func:`load_config` turns any validation problem into one :class:`ConfigError` line.
The defaults of these models are the embedded default experiment (``fedtune run`` with no
file): digits over 10 non-IID nodes with FedAvg.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .attack.settings import AttackSection
from .catalog import (
    AGGREGATOR_NAMES,
    DATASET_NAMES,
    PARTITION_NAMES,
    SELECTOR_NAMES,
    STRATEGIES,
    STRATEGY_NAMES,
)
from .energy.settings import EnergySection, check_energy
from .equity.settings import FairnessSection, ScreeningSection, check_equity
from .errors import ConfigError
from .personal.settings import PersonalizationSection, check_personalization, personalization_defaults
from .privacy.settings import PrivacySection, check_privacy, privacy_defaults
from .secagg.settings import SecAggSection, check_secagg, secagg_defaults

if TYPE_CHECKING:
    from .algorithms.strategy import StrategyParams


def _one_of(value: str, names: tuple[str, ...], what: str) -> str:
    """``value`` if it is a registered name, else the error listing the names."""
    if value not in names:
        raise ValueError(f"unknown {what}; allowed: {', '.join(sorted(names))}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(Section):
    name: str = "digits-noniid"
    seed: int = 0
    rounds: int = Field(40, ge=1)
    device: str = "auto"
    eval_every: int = Field(1, ge=1)
    workspace: str = ".fedtune"
    checkpoint_every: int = Field(10, ge=0)
    # after a simulation: the same model on the pooled data, and each site alone
    baselines: list[Literal["pooled", "local", "probe"]] = Field(default_factory=list)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError("must be 'auto', 'cpu' or 'cuda[:N]'")
        return v


class DataSection(Section):
    dataset: str = "digits"
    num_nodes: int = Field(10, ge=1)
    partition: str = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    shards_per_node: int = Field(2, ge=1)
    min_size: int = Field(2, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    central_fraction: float = Field(0.0, ge=0, lt=1)
    node_test_fraction: float = Field(0.2, ge=0, lt=1)
    options: dict[str, float] = Field(default_factory=dict)
    # your own data (data/files.py): one file per site, or one table with a site column
    files: list[str] = Field(default_factory=list)
    site_column: str = ""
    label_column: str = "label"
    test_files: list[str] = Field(default_factory=list)
    test_file: str = ""
    standardize: bool = True  # data.files: features to mean 0, sd 1 (from per-site sums)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _one_of(v, DATASET_NAMES, "dataset")

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str) -> str:
        return _one_of(v, PARTITION_NAMES, "partition")


class ModelSection(Section):
    kind: Literal["mlp", "cnn", "minilm-lora", "minilm-ffa-lora", "minilm-full"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [128])
    norm: Literal["none", "batch", "layer"] = "none"  # mlp: a norm layer after each hidden
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


class StrategySection(Section):
    name: str = "fedavg"
    selection: str = "fixed"
    fraction: float = Field(1.0, gt=0, le=1)
    count: int = Field(0, ge=0)
    min_nodes: int = Field(1, ge=1)
    weighting: Literal["examples", "uniform"] = "examples"
    server_lr: float | None = Field(None, gt=0)
    server_momentum: float | None = Field(None, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    prox_mu: float = Field(0.01, ge=0)
    aggregator: str = "mean"
    trim: float = Field(0.1, ge=0, lt=0.5)
    # robust aggregators (fedtune.algorithms.robust): how many updates may be Byzantine,
    # Multi-Krum's picks (0: K - f), centered clipping's radius and the norm bound (0: the
    # median update norm of the round)
    byzantine: int = Field(0, ge=0)
    krum_m: int = Field(0, ge=0)
    clip_radius: float = Field(0.0, ge=0)
    norm_bound: float = Field(0.0, ge=0)
    mode: Literal["sync", "async", "secagg"] = "sync"
    async_buffer: int = Field(5, ge=1)
    async_concurrency: int = Field(10, ge=1)
    staleness_exponent: float = Field(0.5, ge=0)
    participation_floor: float = Field(0.0, ge=0, le=1)  # selection = "carbon"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _one_of(v, STRATEGY_NAMES, "strategy")

    @field_validator("selection")
    @classmethod
    def _selection(cls, v: str) -> str:
        return _one_of(v, SELECTOR_NAMES, "selection")

    @field_validator("aggregator")
    @classmethod
    def _aggregator(cls, v: str) -> str:
        return _one_of(v, AGGREGATOR_NAMES, "aggregator")

    def params(self) -> StrategyParams:
        from .algorithms.strategy import StrategyParams

        return StrategyParams(server_lr=self.server_lr, server_momentum=self.server_momentum,
                              beta1=self.beta1, beta2=self.beta2, tau=self.tau,
                              prox_mu=self.prox_mu, aggregator=self.aggregator, trim=self.trim,
                              byzantine=self.byzantine, krum_m=self.krum_m,
                              clip_radius=self.clip_radius, norm_bound=self.norm_bound)


class LocalSection(Section):
    epochs: float = Field(1.0, gt=0)
    steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(0.0, ge=0)


class CentralSection(Section):
    pretrain_steps: int = Field(0, ge=0)
    steps_between_rounds: int = Field(0, ge=0)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = Field(32, ge=1)


class EvaluationSection(Section):
    personalize_steps: int = Field(10, ge=0)
    personalize_lr: float | None = Field(None, gt=0)
    # the final per-site evaluation visits at most this many sites (a seeded sample)
    max_sites: int = Field(1000, ge=1)


class CompressionSection(Section):
    """Update compression, e.g. uplink = "topk:0.01" with error feedback, or "topk:0.1+q4"."""

    uplink: str = ""
    downlink: str = ""
    error_feedback: bool = True
    block: int = Field(256, ge=1)

    @field_validator("uplink", "downlink")
    @classmethod
    def _spec(cls, v: str) -> str:
        from .algorithms.compression import CompressionSpec

        CompressionSpec.parse(v)
        return v


class ServerSection(Section):
    """The coordinator's gRPC endpoint (``fedtune serve``) and its fault handling."""

    address: str = "127.0.0.1:7070"
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    tokens: str = ""
    insecure_no_auth: bool = False
    round_deadline_s: float = Field(600.0, gt=0)
    stragglers: Literal["drop", "stale"] = "drop"
    staleness_exponent: float = Field(0.5, ge=0)
    wait_for_sites_s: float = Field(600.0, gt=0)
    chunk_kb: int = Field(4096, ge=16, le=16384)
    max_concurrent_uploads: int = Field(0, ge=0)
    max_concurrent_downloads: int = Field(0, ge=0)
    park_model: bool = False
    max_message_mb: int = Field(8192, ge=1)
    # hardening against sites that are authenticated but misbehave
    hello_timeout_s: float = Field(10.0, gt=0)
    upload_idle_s: float = Field(30.0, gt=0)
    stale_memory_mb: int = Field(1024, ge=0)
    max_site_examples: int = Field(100_000_000, ge=1, le=2**53)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:7070")
        return v


class RuntimeSection(Section):
    """Where the nodes of ``fedtune run`` live: this process, or Ray actors."""

    kind: Literal["inprocess", "ray"] = "inprocess"
    ray_address: str = ""
    ray_actors: int = Field(2, ge=1)
    ray_cpus_per_actor: float = Field(1.0, gt=0)
    ray_gpus_per_actor: float = Field(0.0, ge=0)
    # async simulation in one process: node i takes steps x speed_i virtual seconds, with
    # log(speed_i) ~ N(0, simulated_speed_skew), seeded
    simulated_speed_skew: float = Field(1.0, ge=0)


class RunConfig(Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    strategy: StrategySection = StrategySection()
    local: LocalSection = LocalSection()
    central: CentralSection = CentralSection()
    evaluation: EvaluationSection = EvaluationSection()
    energy: EnergySection = EnergySection()
    compression: CompressionSection = CompressionSection()
    server: ServerSection = ServerSection()
    runtime: RuntimeSection = RuntimeSection()
    privacy: PrivacySection = PrivacySection()
    secagg: SecAggSection = SecAggSection()
    personalization: PersonalizationSection = PersonalizationSection()
    attack: AttackSection = AttackSection()
    fairness: FairnessSection = FairnessSection()
    screening: ScreeningSection = ScreeningSection()

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, data: Any) -> Any:
        """The strategy's own defaults for keys the user did not set (SCAFFOLD's plain local
        SGD). A stored config has every key set, so a resumed run keeps what it ran with."""
        if not isinstance(data, dict):
            return data
        strategy = data.get("strategy", {})
        name = strategy.get("name", "fedavg") if isinstance(strategy, dict) else \
            getattr(strategy, "name", "fedavg")
        if name not in STRATEGY_NAMES:
            return data  # the strategy section's own check names the problem
        out = personalization_defaults(secagg_defaults(privacy_defaults(dict(data))))
        run = out.get("run", {})
        if isinstance(run, dict) and "name" not in run:  # a name that says what runs
            d = out.get("data", {})
            d = d if isinstance(d, dict) else d.model_dump()
            skew = "iid" if d.get("partition", "dirichlet") == "iid" else "noniid"
            run_name = "own-data" if d.get("files") else f"{d.get('dataset', 'digits')}-{skew}"
            out["run"] = {**run, "name": run_name}
        for key, value in STRATEGIES.defaults(name).items():
            section_name, _, field = key.partition(".")
            section = out.get(section_name, {})
            if isinstance(section, dict):
                out[section_name] = {field: value, **section}
            elif isinstance(section, BaseModel) and field not in section.model_fields_set:
                out[section_name] = section.model_copy(update={field: value})
        return out

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.server.park_model and self.strategy.mode == "async":
            raise ValueError("server.park_model = true needs strategy.mode = \"sync\": "
                             "asynchronous rounds send the model at any time, so it is never "
                             "idle; set server.park_model = false")
        if self.strategy.selection == "poisson" and self.strategy.count:
            raise ValueError("strategy.selection = \"poisson\" takes each node with "
                             "probability strategy.fraction; strategy.count must stay 0")
        check_energy(self)
        check_privacy(self)
        check_secagg(self)
        check_personalization(self)
        check_equity(self)  # robust aggregators, attacks, fair aggregation
        return self


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return ""
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    return ", ".join(model.model_fields)


def _explain(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    if not loc:  # a rule across sections: its message names the keys
        return f"config: {first['msg'].removeprefix('Value error, ')}"
    if first["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in loc[:-1]) or "top level"
        return (f"unknown config key '{key}'; keys allowed in [{section}]: "
                f"{_allowed_keys(loc)}")
    value = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"config key '{key}' = {value!r}: {msg}{more}"


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override to a raw config dict (TOML value syntax)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value, "
                          "e.g. --set strategy.name=fedprox")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set {key!r}: keys are section.key, e.g. local.lr; sections: "
                          f"{', '.join(RunConfig.model_fields)}")
    raw.setdefault(parts[0], {})
    if not isinstance(raw[parts[0]], dict):
        raise ConfigError(f"config key '{parts[0]}' must be a [section]")
    raw[parts[0]][parts[1]] = _parse_value(text.strip())


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def read_toml(path: str | Path, *, what: str, fix: str) -> dict[str, Any]:
    """A TOML file as a dict, or a :class:`ConfigError` naming ``what``, the path and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist; {fix}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or the embedded default), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, what="config file",
                        fix="pass a TOML file, or no file to run the embedded default experiment")
        data = raw.get("data")
        if isinstance(data, dict):  # data files are named relative to the config file
            for key in ("files", "test_files", "test_file"):
                value = data.get(key)
                if isinstance(value, str) and value:
                    data[key] = str(Path(path).parent / value)
                elif isinstance(value, list):
                    data[key] = [str(Path(path).parent / v) if isinstance(v, str) else v
                                 for v in value]
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return config_from_dict(raw)
