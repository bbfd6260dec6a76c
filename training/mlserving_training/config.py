"""TrainConfig: every knob of training and publishing, from defaults < YAML < environment < CLI.

One dataclass serves the `train` and `pipeline` subcommands and the trainer image, so the
same settings mean the same thing everywhere. Validation errors name the field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlserving_common.package import NAME_PATTERN
from mlserving_training.timegrid import DUPLICATE_RULES, TIME_UNITS, CleaningError, parse_interval
from mlserving_common.protocol import CLIENT_ID_SEPARATOR

#: `linear` is the linear autoregression baseline (one Dense layer, least squares), served like the others.
MODEL_KINDS = ("lstm", "ann", "linear")
#: When a retraining run trains: on every run, or only when a server reported drift for the model.
TRIGGERS = ("schedule", "drift")
ENV_PREFIX = "MLSERVING_TRAIN_"
#: Standard column names; `columns` maps each to the name used in the user's CSV.
STANDARD_COLUMNS = ("station_id", "parameter_id", "reading_time", "value")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message starts with the field name."""


@dataclass
class TrainConfig:
    # What to train
    model: str = "lstm"
    name: str = ""  # registry model name; empty means the same as `model`
    data: str = ""  # CSV path; empty means: generate synthetic BTS-like data (pipeline/demo)
    series: str = ""  # "station_id/parameter_id"; empty means the first series in the file
    columns: dict[str, str] = field(default_factory=dict)
    # Features
    window: int = 6
    horizon: int = 1  # readings forecast per inference (48 = day-ahead on half-hourly data)
    calendar: bool = False  # add time-of-day / day-of-week inputs (sin/cos) computed from timestamps
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    # Cleaning
    sentinels: list[float] = field(default_factory=lambda: [999999.0, -999999.0])
    max_gap_fill: int = 3
    interval: str = ""  # sampling grid, e.g. "60s", "30min", "1h"; empty = the most common step
    resample: str = "last"  # with an interval: one value per interval, "last" or "mean"
    time_unit: str = "auto"  # reading_time unit: auto, s, ms, us, ns or iso (ISO 8601 text)
    duplicates: str = "last"  # readings sharing a second: "last" (re-sent corrections) or "mean" (distinct readings)
    min_windows: int = 30  # fewer windows than this in a split: warned as too few to judge
    backtest_folds: int = 5  # rolling-origin folds over the test split (docs/training.md)
    # Which baselines the gate requires beating: "all" (naive, seasonal naives, linear ARs) or
    # "naive" only (lifecycle tests and bootstraps whose subject is not forecast quality).
    gate_baselines: str = "all"
    # Optimisation
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 42
    units: int = 32
    # Export and publishing
    tolerance: float = 1e-4
    out: str = ""  # package directory; empty means ./packages/<name>
    plot: str = ""  # PNG path; empty means <out>-forecast.png, "none" disables
    registry: str = ""
    promote: bool = False
    # Synthetic data used when `data` is empty
    synthetic_stations: int = 3
    synthetic_days: int = 120
    synthetic_shift: float = 0.0  # level shift (fraction of the level) over the newest synthetic_shift_days
    synthetic_shift_days: int = 0
    # Quality gate of `retrain` / `pipeline` (docs/lifecycle.md)
    gate: bool = True  # false: publish without comparing (e.g. the very first version)
    gate_margin: float = 0.0  # candidate MAE must be <= serving MAE x (1 - margin) and < naive MAE x (1 - margin)
    trigger: str = "schedule"  # schedule: train every run; drift: only after a server's drift event for this model
    # Live-traffic records drained from the broker (servers publish windows of requests with a series_id)
    records: bool = False
    # Tenants whose live records and drift events this trainer uses; required with records or
    # trigger: drift, never "every tenant" (one tenant's traffic must not retrain another's model).
    tenants: list[str] = field(default_factory=list)
    records_max: int = 20000  # readings of the live history kept per series (older ones rotate out)
    records_idle_seconds: float = 2.0  # the drain ends when no message came for this long
    records_interval_s: int = 3600  # spacing given to live readings (requests carry their order, not their times)
    # Broker connection for records and drift events (persistent session; docs/lifecycle.md)
    broker_host: str = ""
    broker_port: int = 1883
    broker_username: str = "ml-trainer"
    broker_password_file: str = ""
    broker_tls_ca_file: str = ""  # set = TLS, verified against this CA
    topic_prefix: str = "ml"
    client_id: str = ""  # persistent session id; empty = <broker_username>:trainer-<name> (owned by that login)
    session_expiry_s: int = 1_209_600  # how long the broker keeps the session (and its queue) between runs

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

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first bad field; return self for chaining."""
        checks: list[tuple[bool, str]] = [
            (self.model in MODEL_KINDS, f"model: {self.model!r} is not one of {list(MODEL_KINDS)}"),
            (bool(NAME_PATTERN.match(self.model_name)), f"name: {self.model_name!r} must match {NAME_PATTERN.pattern}"),
            (not self.series or self.series.count("/") == 1, f"series: {self.series!r} must be 'station_id/parameter_id'"),
            (set(self.columns) <= set(STANDARD_COLUMNS), f"columns: keys must be among {list(STANDARD_COLUMNS)}"),
            (2 <= self.window <= 4096, f"window: {self.window} must be 2..4096"),
            (1 <= self.horizon <= 4096, f"horizon: {self.horizon} must be 1..4096"),
            (0 < self.train_fraction < 1, f"train_fraction: {self.train_fraction} must be in (0, 1)"),
            (0 < self.val_fraction < 1, f"val_fraction: {self.val_fraction} must be in (0, 1)"),
            (self.test_fraction > 0.0, "val_fraction: train_fraction + val_fraction must leave a test split (< 1)"),
            (self.max_gap_fill >= 0, f"max_gap_fill: {self.max_gap_fill} must be >= 0"),
            (_interval_ok(self.interval), f"interval: {self.interval!r} must be a duration >= 1s like 60s, 30min, 1h"),
            (self.resample in ("last", "mean"), f"resample: {self.resample!r} is not one of ['last', 'mean']"),
            (self.time_unit in TIME_UNITS, f"time_unit: {self.time_unit!r} is not one of {list(TIME_UNITS)}"),
            (self.duplicates in DUPLICATE_RULES, f"duplicates: {self.duplicates!r} is not one of {list(DUPLICATE_RULES)}"),
            (self.min_windows >= 1, f"min_windows: {self.min_windows} must be >= 1"),
            (1 <= self.backtest_folds <= 50, f"backtest_folds: {self.backtest_folds} must be 1..50"),
            (self.gate_baselines in ("all", "naive"), f"gate_baselines: {self.gate_baselines!r} is not one of ['all', 'naive']"),
            (self.epochs >= 1, f"epochs: {self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size: {self.batch_size} must be >= 1"),
            (self.learning_rate > 0, f"learning_rate: {self.learning_rate} must be > 0"),
            (self.patience >= 0, f"patience: {self.patience} must be >= 0"),
            (self.seed >= 0, f"seed: {self.seed} must be >= 0"),
            (1 <= self.units <= 1024, f"units: {self.units} must be 1..1024"),
            (self.tolerance > 0, f"tolerance: {self.tolerance} must be > 0"),
            (self.synthetic_stations >= 1, f"synthetic_stations: {self.synthetic_stations} must be >= 1"),
            (self.synthetic_days >= 2, f"synthetic_days: {self.synthetic_days} must be >= 2"),
            (-0.9 <= self.synthetic_shift <= 10, f"synthetic_shift: {self.synthetic_shift} must be -0.9..10"),
            (0 <= self.synthetic_shift_days < self.synthetic_days,
             f"synthetic_shift_days: {self.synthetic_shift_days} must be 0..synthetic_days-1"),
            (0 <= self.gate_margin < 1, f"gate_margin: {self.gate_margin} must be in [0, 1)"),
            (self.trigger in TRIGGERS, f"trigger: {self.trigger!r} is not one of {list(TRIGGERS)}"),
            (isinstance(self.tenants, list)
             and all(isinstance(t, str) and t and not any(c in t for c in "/+#\0") for t in self.tenants),
             f"tenants: {self.tenants!r} must be tenant names (no '/', '+', '#')"),
            (self.records_max >= 100, f"records_max: {self.records_max} must be >= 100"),
            (self.records_idle_seconds > 0, f"records_idle_seconds: {self.records_idle_seconds} must be > 0"),
            (self.records_interval_s >= 1, f"records_interval_s: {self.records_interval_s} must be >= 1"),
            (not self.uses_broker or bool(self.broker_host),
             "broker_host: required when records are on or trigger is 'drift'"),
            (not self.uses_broker or bool(self.tenants),
             "tenants: required when records are on or trigger is 'drift' (the tenants whose live traffic"
             " this trainer may use; none is used unless named)"),
            (1 <= self.broker_port <= 65535, f"broker_port: {self.broker_port} must be 1..65535"),
            (bool(self.topic_prefix) and not any(c in self.topic_prefix for c in "+#")
             and not self.topic_prefix.endswith("/"), f"topic_prefix: {self.topic_prefix!r} must be a plain topic"),
            (len(self.session_client_id) <= 64, f"client_id: {self.session_client_id!r} must be at most 64 characters"),
            (self.session_client_id.startswith(self.broker_username + CLIENT_ID_SEPARATOR),
             f"client_id: {self.session_client_id!r} must start with '{self.broker_username}{CLIENT_ID_SEPARATOR}'"
             " (the broker refuses ids its login does not own)"),
            (self.session_expiry_s >= 60, f"session_expiry_s: {self.session_expiry_s} must be >= 60"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, updates: Mapping[str, Any], source: str) -> TrainConfig:
        """Copy with `updates` applied after type coercion; unknown keys are errors."""
        known = {f.name: f for f in fields(self)}
        values = self.to_dict()
        for key, raw in updates.items():
            if key not in known:
                raise ConfigError(f"{key}: unknown setting (from {source}); known: {sorted(known)}")
            values[key] = _coerce(key, raw, known[key].type, source)
        return TrainConfig(**values)


def _interval_ok(text: str) -> bool:
    try:
        parse_interval(text)
    except CleaningError:
        return False
    return True


def _coerce(key: str, raw: Any, type_name: Any, source: str) -> Any:
    """Turn YAML/env/CLI values into the field's type, or ConfigError naming the field."""
    kind = str(type_name)
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind == "str":
            return "" if raw is None else str(raw)
        if kind == "list[str]":
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return [str(item).strip() for item in items if str(item).strip()]
        if kind.startswith("list"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return [float(item) for item in items if str(item).strip()]
        if kind.startswith("dict"):
            if isinstance(raw, str):
                pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
                raw = {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(raw, Mapping):
                raise ValueError(raw)
            return {str(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {raw!r} (from {source}) is not a valid {kind}") from None
    raise ConfigError(f"{key}: unsupported type {kind}")


def load_yaml(path: Path | str) -> dict[str, Any]:
    try:
        body = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config: file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML ({exc})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings")
    return body


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """MLSERVING_TRAIN_EPOCHS=5 -> {"epochs": "5"}; MLSERVING_TRAIN_CONFIG is the YAML path, not a field."""
    names = {f.name for f in fields(TrainConfig)}
    found = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX):].lower()
            if name not in names:
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
    config = TrainConfig()
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        config = config.merged(load_yaml(config_file), source=str(config_file))
    config = config.merged(env_overrides(environ), source="environment")
    if overrides:
        config = config.merged({k: v for k, v in overrides.items() if v is not None}, source="command line")
    return config.validate()
