"""TrainConfig: every knob of training and publishing, from defaults < YAML < environment < CLI.

One pydantic model serves the `train` and `pipeline` subcommands and the trainer image, so the
same settings mean the same thing everywhere; the chart's schema of `retraining.models.<m>.settings`
is generated from it (`make schema`, ci/schema_gen.py). Keys are camelCase as in values.yaml
(snake_case works too). Validation errors name the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError
from pydantic.alias_generators import to_camel

from mlserving_common.configmodel import INT32_MAX, MODEL_CONFIG, Bound, ConfigError, YamlLoader, config_error, refuse
from mlserving_common.package import NAME_PATTERN
from mlserving_common.protocol import CLIENT_ID_SEPARATOR
from mlserving_training.timegrid import DUPLICATE_RULES, TIME_UNITS, CleaningError, parse_interval

__all__ = ["ConfigError", "TrainConfig", "load_config"]

#: `linear` is the linear autoregression baseline (one Dense layer, least squares), served like the others.
#: `hybrid`: that linear AR as a skip path plus a small network trained on its residual (models.py).
MODEL_KINDS = ("lstm", "ann", "linear", "hybrid")
#: When a retraining run trains: on every run, or only when a server reported drift for the model.
TRIGGERS = ("schedule", "drift")
ENV_PREFIX = "MLSERVING_TRAIN_"
#: Standard column names; `columns` maps each to the name used in the user's CSV.
STANDARD_COLUMNS = ("station_id", "parameter_id", "reading_time", "value")


def _items(raw: Any) -> Any:
    """'a, b' (environment, CLI) -> ['a', 'b']; blanks dropped."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return [i.strip() if isinstance(i, str) else i for i in items if str(i).strip()] if isinstance(items, list) else raw


def _pairs(raw: Any) -> Any:
    """'value=v, station_id=site' (environment, CLI) -> {'value': 'v', 'station_id': 'site'}."""
    if not isinstance(raw, str):
        return raw
    pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
    return {k.strip(): v.strip() for k, v in pairs}


def _none_is_empty(raw: Any) -> Any:
    return "" if raw is None else raw


def _interval(text: str) -> str:
    try:
        parse_interval(text)
    except CleaningError:
        raise refuse(f"{text!r} must be a duration >= 1s like 60s, 30min, 1h") from None
    return text


Text = Annotated[str, BeforeValidator(_none_is_empty)]
#: Rules across settings (JSON Schema cannot compare two values; the chart renders them as `fail`s).
RULES = (
    Bound("val_fraction", "<", 1, plus="train_fraction"),  # a test split is left
    Bound("synthetic_shift_days", "<", "synthetic_days"),
)
TenantName = Annotated[str, Field(pattern=r"^[^/+#\x00]+$")]


class TrainConfig(BaseModel):
    model_config = {**MODEL_CONFIG, "coerce_numbers_to_str": True}

    # What to train
    model: Literal[MODEL_KINDS] = "lstm"  # type: ignore[valid-type]
    """Model kind (linear: the linear AR baseline)."""
    name: Text = ""
    """Registry model name; empty means the same as `model`."""
    data: Text = ""
    """CSV path; empty means: generate synthetic BTS-like data (pipeline/demo)."""
    series: Text = Field("", pattern=r"^([^/]*/[^/]*)?$")
    """'station_id/parameter_id'; empty means the first series in the file."""
    columns: Annotated[dict[Literal[STANDARD_COLUMNS], str], BeforeValidator(_pairs)] = {}  # type: ignore[valid-type]
    """The user's CSV column name of each standard column."""
    # Features
    window: int = Field(6, ge=2, le=4096)
    """Readings per input window."""
    horizon: int = Field(1, ge=1, le=4096)
    """Readings forecast per inference (48 = day-ahead on half-hourly data)."""
    calendar: bool = False
    """Add time-of-day / day-of-week inputs (sin/cos) computed from timestamps."""
    train_fraction: float = Field(0.7, gt=0, lt=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    """Validation share; train_fraction + val_fraction must leave a test split."""
    # Cleaning
    sentinels: Annotated[list[float], BeforeValidator(_items)] = [999999.0, -999999.0]
    """Values that mean "no reading"."""
    max_gap_fill: int = Field(3, ge=0, le=INT32_MAX)
    """Longest run of missing readings filled by interpolation."""
    interval: Annotated[Text, AfterValidator(_interval)] = Field(
        "",
        json_schema_extra={"pattern": r"^$|^[1-9][0-9]*(\.[0-9]+)?(s|sec|m|min|h|d)?$|^[1-9][0-9]{3,}(\.[0-9]+)?ms$"},
    )
    """Sampling grid, e.g. 60s, 30min, 1h; empty = the most common step."""
    resample: Literal["last", "mean"] = "last"
    """With an interval: one value per interval, last or mean."""
    time_unit: Literal[TIME_UNITS] = "auto"  # type: ignore[valid-type]
    """reading_time unit: auto, s, ms, us, ns or iso (ISO 8601 text)."""
    duplicates: Literal[DUPLICATE_RULES] = "last"  # type: ignore[valid-type]
    """Readings sharing a second: last (re-sent corrections) or mean (distinct readings)."""
    min_windows: int = Field(30, ge=1, le=INT32_MAX)
    """Fewer windows than this in a split: warned as too few to judge."""
    backtest_folds: int = Field(5, ge=1, le=50)
    """Rolling-origin folds over the test split (docs/training.md)."""
    gate_baselines: Literal["all", "naive"] = "all"
    """Baselines the gate requires beating: all (naive, seasonal naives, linear ARs) or naive only."""
    # Optimisation
    epochs: int = Field(30, ge=1, le=INT32_MAX)
    batch_size: int = Field(64, ge=1, le=INT32_MAX)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=0, le=INT32_MAX)
    """Epochs without validation improvement before training stops."""
    seed: int = Field(42, ge=0, le=INT32_MAX)
    units: int = Field(32, ge=1, le=1024)
    """Hidden units of the network."""
    # Export and publishing
    tolerance: float = Field(1e-4, gt=0)
    """Largest difference between the Keras and the TFLite model's forecasts."""
    out: Text = ""
    """Package directory; empty means ./packages/<name>."""
    plot: Text = ""
    """PNG path; empty means <out>-forecast.png, none disables."""
    registry: Text = ""
    promote: bool = False
    # Synthetic data used when `data` is empty
    synthetic_stations: int = Field(3, ge=1, le=INT32_MAX)
    synthetic_days: int = Field(120, ge=2, le=INT32_MAX)
    synthetic_shift: float = Field(0.0, ge=-0.9, le=10)
    """Level shift (fraction of the level) over the newest synthetic_shift_days."""
    synthetic_shift_days: int = Field(0, ge=0, le=INT32_MAX)
    """Days of the level shift (below synthetic_days)."""
    # Quality gate of `retrain` / `pipeline` (docs/lifecycle.md)
    gate: bool = True
    """False: publish without comparing (e.g. the very first version)."""
    gate_margin: float = Field(0.0, ge=0, lt=1)
    """Candidate MAE must be <= serving MAE x (1 - margin) and < naive MAE x (1 - margin)."""
    trigger: Literal[TRIGGERS] = "schedule"  # type: ignore[valid-type]
    """schedule: train every run; drift: only after a server's drift event for this model."""
    # Live-traffic records drained from the broker (servers publish windows of requests with a series_id)
    records: bool = False
    tenants: Annotated[list[TenantName], BeforeValidator(_items)] = []
    """Tenants whose live records and drift events this trainer uses; required with records or
    trigger: drift, never "every tenant" (one tenant's traffic must not retrain another's model)."""
    records_max: int = Field(20000, ge=100, le=INT32_MAX)
    """Readings of the live history kept per series (older ones rotate out)."""
    records_idle_seconds: float = Field(2.0, gt=0)
    """The drain ends when no message came for this long."""
    records_interval_s: int = Field(3600, ge=1, le=INT32_MAX)
    """Spacing given to live readings (requests carry their order, not their times)."""
    # Broker connection for records and drift events (persistent session; docs/lifecycle.md)
    broker_host: Text = ""
    broker_port: int = Field(1883, ge=1, le=65535)
    broker_username: Text = "ml-trainer"
    broker_password_file: Text = ""
    broker_tls_ca_file: Text = ""
    """Set: TLS, verified against this CA."""
    topic_prefix: str = Field("ml", pattern=r"^[^+#]*[^+#/]$")
    client_id: Text = ""
    """Persistent session id; empty = <broker_username>:trainer-<name> (owned by that login)."""
    session_expiry_s: int = Field(1_209_600, ge=60, le=INT32_MAX)
    """How long the broker keeps the session (and its queue) between runs."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(exc) from None

    def validate(self) -> TrainConfig:  # type: ignore[override]
        """The rules between fields (each field was checked when set); return self for chaining.

        Not a model validator: a layer of settings (`merged`) may need a later one to complete it."""
        TrainConfig(**self.to_dict())  # fields set after construction (quick.py's out) are checked too
        checks: list[tuple[bool, str, str]] = [
            (
                bool(NAME_PATTERN.match(self.model_name)),
                "name",
                f"{self.model_name!r} must match {NAME_PATTERN.pattern}",
            ),
            *((not rule.broken(self), rule.field, rule.describe(*rule.sides(self), str)) for rule in RULES),
            (
                not self.uses_broker or bool(self.broker_host),
                "broker_host",
                "required when records are on or trigger is 'drift'",
            ),
            (
                not self.uses_broker or bool(self.tenants),
                "tenants",
                "required when records are on or trigger is 'drift' (the tenants whose live traffic"
                " this trainer may use; none is used unless named)",
            ),
            (
                len(self.session_client_id) <= 64,
                "client_id",
                f"{self.session_client_id!r} must be at most 64 characters",
            ),
            (
                self.session_client_id.startswith(self.broker_username + CLIENT_ID_SEPARATOR),
                "client_id",
                f"{self.session_client_id!r} must start with '{self.broker_username}{CLIENT_ID_SEPARATOR}'"
                " (the broker refuses ids its login does not own)",
            ),
        ]
        for ok, field, message in checks:
            if not ok:
                raise ConfigError(f"{field}: {message}")
        return self

    @property
    def model_name(self) -> str:
        return self.name or self.model

    @property
    def session_client_id(self) -> str:
        """Stable, so the session (and its queued records) is resumed; the broker plugin lets only
        `broker_username` use it, so nobody else can resume, wipe or kick it."""
        return self.client_id or f"{self.broker_username}{CLIENT_ID_SEPARATOR}trainer-{self.model_name}"

    @property
    def uses_broker(self) -> bool:
        """Records and drift triggers both come from the trainer's persistent broker session."""
        return self.records or self.trigger == "drift"

    @property
    def test_fraction(self) -> float:
        return 1.0 - self.train_fraction - self.val_fraction

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("packages") / self.model_name

    @property
    def plot_path(self) -> Path | None:
        if self.plot.lower() == "none":
            return None
        if self.plot:
            return Path(self.plot)
        out = self.out_dir
        return out.parent / f"{out.name}-forecast.png"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def merged(self, updates: Mapping[str, Any], source: str) -> TrainConfig:
        """Copy with `updates` applied and type-checked (camelCase or snake_case keys); unknown keys
        are errors; the rules between fields wait for validate()."""
        return _build([(self.to_dict(), "defaults"), (updates, source)])


def _names(updates: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Keys as field names, whatever the spelling; an unknown key is an error naming its source."""
    by_alias = {to_camel(name): name for name in TrainConfig.model_fields}
    named = {}
    for key, value in updates.items():
        name = by_alias.get(key, key)
        if name not in TrainConfig.model_fields:
            raise ConfigError(f"{key}: unknown setting (from {source}); known: {sorted(TrainConfig.model_fields)}")
        named[name] = value
    return named


def _build(layers: list[tuple[Mapping[str, Any], str]]) -> TrainConfig:
    """One TrainConfig from layers, later ones winning; a bad value's error says which layer set it."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for updates, source in layers:
        for name, value in _names(updates, source).items():
            values[name], sources[name] = value, source
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        source = sources.get(str(error).split(":", 1)[0], "defaults")
        raise (ConfigError(f"{error} (from {source})") if source != "defaults" else error) from None


def load_yaml(path: Path | str) -> dict[str, Any]:
    try:
        body = yaml.load(Path(path).read_text(), Loader=YamlLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config: file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML ({exc})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings")
    return body


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """MLSERVING_TRAIN_EPOCHS=5 -> {"epochs": "5"}; MLSERVING_TRAIN_CONFIG is the YAML path, not a field."""
    found = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name not in TrainConfig.model_fields:
                raise ConfigError(f"{name}: unknown setting (from environment variable {key})")
            found[name] = value
    return found


def load_config(
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Defaults, then the YAML file (argument or MLSERVING_TRAIN_CONFIG), then env, then overrides."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[Mapping[str, Any], str]] = []
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        layers.append((load_yaml(config_file), str(config_file)))
    layers.append((env_overrides(environ), "environment"))
    layers.append(({k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    return _build(layers).validate()
