"""Server configuration: the YAML the Helm chart renders, plus a few deploy-time env overrides.

Every value is validated once at start; errors name the field (`tenants.tenant-a.models.lstm: ...`)
so a bad values.yaml is fixed from the message alone. This module is the only place that reads
the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from mlserving_common import protocol
from mlserving_common.package import NAME_PATTERN, VERSION_PATTERN

CURRENT = "current"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_OVERRIDES = {
    "MLSERVING_BROKER_HOST": "broker.host",
    "MLSERVING_BROKER_PORT": "broker.port",
    "MLSERVING_BROKER_USERNAME": "broker.username",
    "MLSERVING_HTTP_PORT": "http.port",
    "MLSERVING_REGISTRY_PATH": "registry.path",
    "MLSERVING_LOG_LEVEL": "log_level",
}
PASSWORD_ENV = "MLSERVING_BROKER_PASSWORD"


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the dotted path of the field at fault."""


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = "ml-server"
    password_file: str | None = None
    keepalive: int = 30
    tls: TlsConfig = field(default_factory=TlsConfig)
    #: Never in YAML: from MLSERVING_BROKER_PASSWORD or password_file.
    password: str | None = field(default=None, repr=False)


REGISTRY_KINDS = ("filesystem", "broker")


@dataclass(frozen=True)
class RegistryConfig:
    #: filesystem: `path` is the registry. broker: the packages are retained messages on the broker
    #: this server already uses (common/mlserving_common/broker_registry.py); `path` is then the
    #: read-only seed (the image's baked packages) and `cache_dir` where fetched packages are unpacked.
    kind: str = "filesystem"
    path: str = "/models"
    poll_seconds: float = 2.0
    cache_dir: str = "/var/cache/ml-serving/registry"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 64
    max_wait_ms: float = 2.0


@dataclass(frozen=True)
class LimitsConfig:
    """What bounds the server's memory whatever the load offered (docs/server.md, "Overload").

    Worst case held at once: per tenant max_pending requests / max_pending_bytes of payload
    queued; max_outgoing answers (plus what the queues held when that bound was reached) waiting
    for the broker's PUBACK; and the requests held unacknowledged meanwhile, receive_maximum of
    them by MQTT, in practice up to the broker's per-session queue (Mosquitto 2.0.11 delivers
    past Receive Maximum, see transport.Transport._receive).
    """

    max_payload_bytes: int = 262144
    max_instances: int = 1024
    #: Per tenant: requests queued for the worker; beyond it they are answered `overloaded`.
    max_pending: int = 5000
    #: Per tenant: payload bytes queued for the worker (a flood of large batched requests).
    max_pending_bytes: int = 16 * 1024 * 1024
    #: Largest Correlation Data accepted (it is echoed in every answer); larger: `invalid_request`.
    max_correlation_bytes: int = 256
    #: MQTT v5 Receive Maximum sent in CONNECT: QoS 1 requests the broker may have in flight to us.
    receive_maximum: int = 256
    #: Answers handed to the MQTT client and not yet acknowledged by the broker beyond which the
    #: server stops taking (and acknowledging) new requests until the broker catches up.
    max_outgoing: int = 10000


@dataclass(frozen=True)
class HttpConfig:
    host: str = "0.0.0.0"
    port: int = 8080


@dataclass(frozen=True)
class RateLimitConfig:
    per_second: float = 0.0
    burst: int = 0

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


@dataclass(frozen=True)
class LiveAccuracyConfig:
    """Scoring of past forecasts against the readings later requests reveal (docs/lifecycle.md)."""

    enabled: bool = True
    window: int = 500  # scored forecasts per live MAE (sliding)
    max_series: int = 10000  # series remembered for scoring (least recently used evicted)


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = True
    error_factor: float = 1.5  # error drift: live MAE > factor x the package's test MAE
    min_scored: int = 100  # scored forecasts before the error rule may fire
    psi_threshold: float = 0.25  # input drift: PSI of the last input_window values vs training inputs
    input_window: int = 6000  # normalised input values in the PSI window
    publish_events: bool = True  # publish transitions on <prefix>/_events/drift (not retained)


@dataclass(frozen=True)
class AutoRollbackConfig:
    enabled: bool = True
    margin: float = 0.2  # roll back when new live MAE > predecessor's x (1 + margin)
    min_scored: int = 100  # forecasts scored for the predecessor (baseline) and the new version (decision)
    window_seconds: float = 3600.0  # no decision within this long after the swap: keep the new version


@dataclass(frozen=True)
class LifecycleConfig:
    live_accuracy: LiveAccuracyConfig = field(default_factory=LiveAccuracyConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    auto_rollback: AutoRollbackConfig = field(default_factory=AutoRollbackConfig)


@dataclass(frozen=True)
class LegacyConfig:
    """How a tutorial client scales its legacy payload (norm_1..norm_6): `(value - mean) / scale`
    with the constants of ITS training file. The server turns such values back into readings,
    forecasts in readings, and answers in the same client units (docs/protocol.md)."""

    mean: float
    scale: float


@dataclass(frozen=True)
class TenantConfig:
    name: str
    models: dict[str, str]
    default_model: str
    request_topic: str
    response_topic: str
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    #: model -> version spec run in shadow on the same batches: scored, never answered
    shadow: dict[str, str] = field(default_factory=dict)
    #: publish the windows of requests with a series_id as live-traffic records for retraining
    record: bool = False
    #: the scaling of the tenant's legacy (tutorial) payload; None: such requests are refused
    legacy: LegacyConfig | None = None


@dataclass(frozen=True)
class ServerConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    topic_prefix: str = protocol.DEFAULT_PREFIX
    share_group: str = protocol.DEFAULT_SHARE_GROUP
    qos: int = 1
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    drain_seconds: float = 20.0
    log_level: str = "info"
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)

    def model_versions(self) -> set[tuple[str, str]]:
        """Every (model, version spec) some tenant needs."""
        return {(m, v) for t in self.tenants.values() for m, v in t.models.items()}

    def shadow_versions(self) -> set[tuple[str, str]]:
        """Every (model, version spec) some tenant runs in shadow (loaded, never required for readiness)."""
        return {(m, v) for t in self.tenants.values() for m, v in t.shadow.items()}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read YAML (if given), apply env overrides, validate; raise ConfigError naming the field."""
    env = os.environ if env is None else env
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    return parse_config(raw, env)


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Validate an already-parsed config mapping (what the YAML holds)."""
    env = {} if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a mapping")
    raw = _apply_env(_deep_copy(raw), env)
    tenants_raw = raw.pop("tenants", None)
    base = _build(ServerConfig, raw, "", skip={"tenants"})
    broker = base.broker
    password = _password(broker, env)
    broker = _replace(broker, password=password)
    prefix = _topic(base.topic_prefix, "topic_prefix", allow_empty=False)
    _check_name(base.share_group, "share_group", re.compile(r"^[^/+#$][^/+#]*$"))
    config = _replace(
        base,
        broker=broker,
        tenants=_tenants(tenants_raw, prefix),
    )
    _validate(config)
    return config


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for variable, dotted in ENV_OVERRIDES.items():
        value = env.get(variable)
        if value is None or value == "":
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{part}: must be a mapping")
            node = child
        node[leaf] = _coerce_env(value, dotted, variable)
    return raw


def _coerce_env(value: str, dotted: str, variable: str) -> Any:
    if dotted.endswith(".port"):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{dotted}: {variable}={value!r} is not an integer") from None
    return value


def _password(broker: BrokerConfig, env: Mapping[str, str]) -> str | None:
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    if broker.password_file:
        try:
            return Path(broker.password_file).read_text().strip("\r\n")
        except OSError as exc:
            raise ConfigError(f"broker.password_file: cannot read {broker.password_file} ({exc.strerror})") from None
    return None


def _replace(obj: Any, **changes: Any) -> Any:
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)




def _build(cls: type, raw: Any, path: str, skip: set[str] = frozenset()) -> Any:
    """Instantiate a config dataclass from a mapping, checking keys and scalar types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: must be a mapping")
    known = {f.name: f for f in fields(cls) if f.name not in skip and f.name != "password"}
    for key in raw:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            hint = " (use broker.password_file or MLSERVING_BROKER_PASSWORD)" if key == "password" else ""
            raise ConfigError(f"{where}: unknown field{hint}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        where = f"{path}.{name}" if path else name
        default = _default(spec)
        if name not in raw:
            continue
        value = raw[name]
        if is_dataclass(default):
            values[name] = _build(type(default), value, where)
        else:
            values[name] = _scalar(value, spec.type, where)
    return cls(**values)


def _default(spec: Any) -> Any:
    from dataclasses import MISSING

    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return None


def _scalar(value: Any, type_name: Any, where: str) -> Any:
    """Check a YAML scalar against a dataclass field's annotation (kept as a string)."""
    text = str(type_name)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if text.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} must be true or false")
        return value
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {value!r} must be an integer")
        return value
    if text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {value!r} must be a number")
        return float(value)
    if text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} must be a string")
        return value
    return value


def _check_name(value: str, where: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(f"{where}: {value!r} must match {pattern.pattern}")
    return value


def _topic(value: Any, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(f"{where}: must be a non-empty string")
    if any(ch in value for ch in "+#\0") or value.startswith("$") or value.startswith("/") or value.endswith("/"):
        raise ConfigError(f"{where}: {value!r} must be a plain topic (no wildcards, no leading $ or /, no trailing /)")
    if len(value.encode()) > 1024:
        raise ConfigError(f"{where}: topic is too long")
    return value


def _tenants(raw: Any, prefix: str) -> dict[str, TenantConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("tenants: at least one tenant is required")
    tenants: dict[str, TenantConfig] = {}
    for name, body in raw.items():
        where = f"tenants.{name}"
        if not isinstance(name, str) or not TENANT_PATTERN.match(name):
            raise ConfigError(f"{where}: tenant name must match {TENANT_PATTERN.pattern}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: must be a mapping")
        allowed = {"models", "default_model", "request_topic", "response_topic", "rate_limit", "shadow", "record", "legacy"}
        for key in body:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: unknown field")
        models_raw = body.get("models")
        if not isinstance(models_raw, dict) or not models_raw:
            raise ConfigError(f"{where}.models: at least one model is required (name: current or vN)")
        models: dict[str, str] = {}
        for model, version in models_raw.items():
            if not isinstance(model, str) or not NAME_PATTERN.match(model):
                raise ConfigError(f"{where}.models: model name {model!r} must match {NAME_PATTERN.pattern}")
            if not isinstance(version, str) or not (version == CURRENT or VERSION_PATTERN.match(version)):
                raise ConfigError(f"{where}.models.{model}: version {version!r} must be '{CURRENT}' or vN")
            models[model] = version
        default_model = body.get("default_model")
        if default_model is None:
            if len(models) != 1:
                raise ConfigError(f"{where}.default_model: required when a tenant has several models")
            default_model = next(iter(models))
        elif default_model not in models:
            raise ConfigError(f"{where}.default_model: {default_model!r} is not one of the tenant's models")
        request = body.get("request_topic")
        request = protocol.request_topic(name, prefix) if request is None else _topic(request, f"{where}.request_topic")
        response = body.get("response_topic")
        response = (
            protocol.response_topic(name, prefix) if response is None else _topic(response, f"{where}.response_topic")
        )
        rate = _build(RateLimitConfig, body.get("rate_limit"), f"{where}.rate_limit")
        if rate.per_second < 0:
            raise ConfigError(f"{where}.rate_limit.per_second: must be >= 0")
        if rate.burst < 0:
            raise ConfigError(f"{where}.rate_limit.burst: must be >= 0")
        shadow = _shadow(body.get("shadow"), models, where)
        record = _scalar(body.get("record", False), "bool", f"{where}.record")
        legacy = _legacy(body.get("legacy"), f"{where}.legacy")
        tenants[name] = TenantConfig(name, models, default_model, request, response, rate, shadow, record, legacy)
    _check_topics(tenants)
    return tenants


def _legacy(raw: Any, where: str) -> LegacyConfig | None:
    """{mean, scale} of a tenant's legacy payload; both required, scale a positive finite number."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping {{mean: <number>, scale: <number>}}")
    for key in ("mean", "scale"):
        if key not in raw:
            raise ConfigError(f"{where}.{key}: required (the client's `(value - mean) / scale` constants)")
    legacy = _build(LegacyConfig, raw, where)
    if not (math.isfinite(legacy.mean) and abs(legacy.mean) <= protocol.FLOAT32_MAX):
        raise ConfigError(f"{where}.mean: {legacy.mean!r} must be a finite float32")
    if not (math.isfinite(legacy.scale) and 0 < legacy.scale <= protocol.FLOAT32_MAX):
        raise ConfigError(f"{where}.scale: {legacy.scale!r} must be a positive finite float32")
    return legacy


def _shadow(raw: Any, models: dict[str, str], where: str) -> dict[str, str]:
    """{model: version spec} of shadow versions; each must shadow one of the tenant's models."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.shadow: must be a mapping of model to version (e.g. {{lstm: v3}})")
    shadow: dict[str, str] = {}
    for model, version in raw.items():
        if model not in models:
            raise ConfigError(f"{where}.shadow.{model}: not one of the tenant's models {sorted(models)}")
        if not isinstance(version, str) or not (version == CURRENT or VERSION_PATTERN.match(version)):
            raise ConfigError(f"{where}.shadow.{model}: version {version!r} must be '{CURRENT}' or vN")
        if version == models[model]:
            raise ConfigError(f"{where}.shadow.{model}: {version!r} is the version the tenant already serves")
        shadow[model] = version
    return shadow


def _check_topics(tenants: dict[str, TenantConfig]) -> None:
    """Topics must not collide: a request would reach two tenants or answers leak across them."""
    seen_requests: dict[str, str] = {}
    for tenant in tenants.values():
        other = seen_requests.setdefault(tenant.request_topic, tenant.name)
        if other != tenant.name:
            raise ConfigError(
                f"tenants.{tenant.name}.request_topic: {tenant.request_topic!r} is also tenant {other}'s request topic"
            )
    for tenant in tenants.values():
        namespace = tenant.response_topic
        for other in tenants.values():
            if other.name == tenant.name:
                continue
            theirs = other.response_topic
            if theirs == namespace or theirs.startswith(namespace + "/") or namespace.startswith(theirs + "/"):
                raise ConfigError(
                    f"tenants.{tenant.name}.response_topic: {namespace!r} overlaps tenant {other.name}'s {theirs!r}"
                )
        for other in tenants.values():
            if other.request_topic == namespace or other.request_topic.startswith(namespace + "/"):
                raise ConfigError(
                    f"tenants.{tenant.name}.response_topic: {namespace!r} overlaps the request topic of {other.name}"
                )


def _validate(config: ServerConfig) -> None:
    checks: list[tuple[bool, str]] = [
        (bool(config.broker.host), "broker.host: must not be empty"),
        (1 <= config.broker.port <= 65535, f"broker.port: {config.broker.port} must be 1..65535"),
        (5 <= config.broker.keepalive <= 65535, f"broker.keepalive: {config.broker.keepalive} must be 5..65535 s"),
        (config.qos in (0, 1), f"qos: {config.qos} must be 0 or 1"),
        (config.registry.poll_seconds > 0, f"registry.poll_seconds: {config.registry.poll_seconds} must be > 0"),
        (bool(config.registry.path), "registry.path: must not be empty"),
        (config.registry.kind in REGISTRY_KINDS, f"registry.kind: {config.registry.kind!r} is not one of {list(REGISTRY_KINDS)}"),
        (bool(config.registry.cache_dir), "registry.cache_dir: must not be empty"),
        (1 <= config.batching.max_batch <= 4096, f"batching.max_batch: {config.batching.max_batch} must be 1..4096"),
        (
            0 <= config.batching.max_wait_ms <= 1000,
            f"batching.max_wait_ms: {config.batching.max_wait_ms} must be 0..1000",
        ),
        (
            config.limits.max_payload_bytes >= 64,
            f"limits.max_payload_bytes: {config.limits.max_payload_bytes} must be >= 64",
        ),
        (config.limits.max_instances >= 1, f"limits.max_instances: {config.limits.max_instances} must be >= 1"),
        (config.limits.max_pending >= 1, f"limits.max_pending: {config.limits.max_pending} must be >= 1"),
        (
            config.limits.max_pending_bytes >= config.limits.max_payload_bytes,
            f"limits.max_pending_bytes: {config.limits.max_pending_bytes} must be >= limits.max_payload_bytes "
            f"({config.limits.max_payload_bytes})",
        ),
        (
            0 <= config.limits.max_correlation_bytes <= 65535,
            f"limits.max_correlation_bytes: {config.limits.max_correlation_bytes} must be 0..65535",
        ),
        (
            1 <= config.limits.receive_maximum <= 65535,
            f"limits.receive_maximum: {config.limits.receive_maximum} must be 1..65535",
        ),
        (
            1 <= config.limits.max_outgoing <= 50000,
            f"limits.max_outgoing: {config.limits.max_outgoing} must be 1..50000",
        ),
        (0 <= config.http.port <= 65535, f"http.port: {config.http.port} must be 0..65535"),
        (config.drain_seconds >= 0, f"drain_seconds: {config.drain_seconds} must be >= 0"),
        (config.log_level in LOG_LEVELS, f"log_level: {config.log_level!r} must be one of {', '.join(LOG_LEVELS)}"),
        *_lifecycle_checks(config.lifecycle),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if config.broker.tls.enabled and config.broker.tls.ca_file and not Path(config.broker.tls.ca_file).is_file():
        raise ConfigError(f"broker.tls.ca_file: {config.broker.tls.ca_file} is not a file")


def _lifecycle_checks(lc: LifecycleConfig) -> list[tuple[bool, str]]:
    live, drift, rollback = lc.live_accuracy, lc.drift, lc.auto_rollback
    return [
        (10 <= live.window <= 100_000, f"lifecycle.live_accuracy.window: {live.window} must be 10..100000"),
        (1 <= live.max_series <= 10_000_000, f"lifecycle.live_accuracy.max_series: {live.max_series} must be >= 1"),
        (drift.error_factor > 1.0, f"lifecycle.drift.error_factor: {drift.error_factor} must be > 1"),
        (1 <= drift.min_scored <= live.window,
         f"lifecycle.drift.min_scored: {drift.min_scored} must be 1..live_accuracy.window ({live.window})"),
        (drift.psi_threshold > 0, f"lifecycle.drift.psi_threshold: {drift.psi_threshold} must be > 0"),
        (100 <= drift.input_window <= 10_000_000, f"lifecycle.drift.input_window: {drift.input_window} must be >= 100"),
        (rollback.margin >= 0, f"lifecycle.auto_rollback.margin: {rollback.margin} must be >= 0"),
        (1 <= rollback.min_scored <= live.window,
         f"lifecycle.auto_rollback.min_scored: {rollback.min_scored} must be 1..live_accuracy.window ({live.window})"),
        (rollback.window_seconds > 0, f"lifecycle.auto_rollback.window_seconds: {rollback.window_seconds} must be > 0"),
        (not (rollback.enabled and not live.enabled),
         "lifecycle.auto_rollback.enabled: needs lifecycle.live_accuracy.enabled (it compares live errors)"),
    ]


def summary(config: ServerConfig) -> dict[str, Any]:
    """What --check-config prints: the effective config without secrets."""
    return {
        "broker": {
            "host": config.broker.host,
            "port": config.broker.port,
            "username": config.broker.username,
            "password": "set" if config.broker.password else "unset",
            "tls": config.broker.tls.enabled,
        },
        "registry": {"kind": config.registry.kind, "path": config.registry.path},
        "http_port": config.http.port,
        "lifecycle": dataclasses.asdict(config.lifecycle),
        "tenants": {
            name: {
                "models": t.models,
                "default_model": t.default_model,
                "request_topic": t.request_topic,
                "response_topic": t.response_topic,
                "rate_limit_per_second": t.rate_limit.per_second,
                "shadow": t.shadow,
                "record": t.record,
                "legacy": dataclasses.asdict(t.legacy) if t.legacy else None,
            }
            for name, t in config.tenants.items()
        },
    }
