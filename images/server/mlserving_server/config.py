"""Server configuration: the YAML the Helm chart renders, plus a few deploy-time env overrides.

Declared once, as pydantic models: the checks at start, the field descriptions and the chart's
values.schema.json (`make schema`, ci/schema_gen.py) all come from these classes, so the chart
cannot accept a value the server refuses. Keys are camelCase as in values.yaml (snake_case
works too); errors name the field (`tenants.tenant-a.models.lstm: ...`). This module is the only
place that reads the environment.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlserving_common import protocol
from mlserving_common.configmodel import (
    INT32_MAX,
    MODEL_CONFIG,
    Bound,
    ConfigError,
    Needs,
    Rule,
    YamlLoader,
    config_error,
    refuse,
)
from mlserving_common.mosquitto import SERVER_MAX_PAYLOAD
from mlserving_common.package import NAME_PATTERN, VERSION_PATTERN

__all__ = ["ConfigError", "ServerConfig", "load_config", "parse_config", "summary"]

CURRENT = "current"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
RegistryKind = Literal["filesystem", "broker"]
LOG_LEVELS = get_args(LogLevel)
REGISTRY_KINDS = get_args(RegistryKind)
TENANT_PATTERN = NAME_PATTERN
ENV_PREFIX = "MLSERVING_"
#: The broker password, never in a file (DeployEnv.broker_password).
PASSWORD_ENV = f"{ENV_PREFIX}BROKER_PASSWORD"


class _Model(BaseModel):
    model_config = {**MODEL_CONFIG, "frozen": True, "strict": True}


def _plain_topic(value: str) -> str:
    if not value:
        raise refuse("must be a non-empty string")
    if any(ch in value for ch in "+#\0") or value.startswith(("$", "/")) or value.endswith("/"):
        raise refuse(f"{value!r} must be a plain topic (no wildcards, no leading $ or /, no trailing /)")
    if len(value.encode()) > 1024:
        raise refuse("topic is too long")
    return value


Topic = Annotated[str, AfterValidator(_plain_topic)]
NonEmpty = Annotated[str, Field(min_length=1)]


def _version(version: Any, at: str) -> None:
    if not isinstance(version, str) or not (version == CURRENT or VERSION_PATTERN.match(version)):
        raise refuse(f"version {version!r} must be '{CURRENT}' or vN", at=at)


class TlsConfig(_Model):
    enabled: bool = False
    """Connect to the broker with TLS."""
    ca_file: str | None = None
    """CA certificate the broker's certificate is verified with."""

    @model_validator(mode="after")
    def _ca_file_exists(self) -> TlsConfig:
        if self.enabled and self.ca_file and not Path(self.ca_file).is_file():
            raise refuse(f"{self.ca_file} is not a file", at="ca_file")
        return self


class BrokerConfig(_Model):
    host: NonEmpty = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = "ml-server"
    password_file: str | None = None
    """File holding the broker password (MLSERVING_BROKER_PASSWORD wins)."""
    keepalive: int = Field(30, ge=5, le=65535)
    """MQTT keepalive in seconds."""
    tls: TlsConfig = TlsConfig()
    password: SkipJsonSchema[str | None] = Field(None, repr=False, exclude=True)
    """Never in YAML: from MLSERVING_BROKER_PASSWORD or password_file (parse_config)."""

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_files(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise refuse("unknown field (use broker.password_file or MLSERVING_BROKER_PASSWORD)", at="password")
        return data


class RegistryConfig(_Model):
    """filesystem: `path` is the registry. broker: the packages are retained messages on the broker
    this server already uses (common/mlserving_common/broker_registry.py); `path` is then the
    read-only seed (the image's baked packages) and `cache_dir` where fetched packages are unpacked."""

    kind: RegistryKind = "filesystem"
    path: NonEmpty = "/models"
    poll_seconds: float = Field(2.0, gt=0)
    """Seconds between checks of the registry's current pointers."""
    cache_dir: NonEmpty = "/var/cache/ml-serving/registry"


class BatchingConfig(_Model):
    max_batch: int = Field(64, ge=1, le=4096)
    """Most series windows in one inference."""
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    """Longest wait in milliseconds for a batch to fill."""


class LimitsConfig(_Model):
    """What bounds the server's memory whatever the load offered (docs/server.md, "Overload").

    Worst case held at once: per tenant max_pending requests / max_pending_bytes of payload
    queued; max_outgoing answers (plus what the queues held when that bound was reached) waiting
    for the broker's PUBACK; and the requests held unacknowledged meanwhile, receive_maximum of
    them by MQTT, in practice up to the broker's per-session queue (Mosquitto 2.0.11 delivers
    past Receive Maximum, see transport.Transport._receive).
    """

    max_payload_bytes: int = Field(SERVER_MAX_PAYLOAD, ge=64, le=INT32_MAX)
    """Largest request payload in bytes (larger ones are answered with `payload_too_large`)."""
    max_instances: int = Field(1024, ge=1, le=INT32_MAX)
    """Most series in one batched request."""
    max_pending: int = Field(5000, ge=1, le=INT32_MAX)
    """Per tenant: requests queued for the worker; beyond it they are answered `overloaded`."""
    max_pending_bytes: int = Field(16 * 1024 * 1024, ge=64, le=INT32_MAX)
    """Per tenant: payload bytes queued for the worker (at least maxPayloadBytes)."""
    max_correlation_bytes: int = Field(256, ge=0, le=65535)
    """Largest Correlation Data accepted (it is echoed in every answer); larger: `invalid_request`."""
    receive_maximum: int = Field(256, ge=1, le=65535)
    """MQTT v5 Receive Maximum sent in CONNECT: QoS 1 requests the broker may have in flight to us."""
    max_outgoing: int = Field(10000, ge=1, le=50000)
    """Answers not yet acknowledged by the broker beyond which the server stops taking new requests."""


class HttpConfig(_Model):
    host: str = "0.0.0.0"
    """Address of /healthz, /readyz and /metrics."""
    port: int = Field(8080, ge=0, le=65535)
    """Port of /healthz, /readyz and /metrics (0: any free port)."""


class RateLimitConfig(_Model):
    per_second: float = Field(0.0, ge=0)
    """Requests per second (token bucket; 0 = unlimited)."""
    burst: int = Field(0, ge=0, le=INT32_MAX)
    """Token bucket size (0 = one second's worth)."""

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


class LiveAccuracyConfig(_Model):
    """Scoring of past forecasts against the readings later requests reveal (docs/lifecycle.md)."""

    enabled: bool = True
    """Score past forecasts (`mlserving_live_mae`, `mlserving_live_scored_total`)."""
    window: int = Field(500, ge=10, le=100_000)
    """Scored forecasts per live MAE (sliding window)."""
    max_series: int = Field(10000, ge=1, le=10_000_000)
    """Series remembered for scoring (least recently used are forgotten)."""


class DriftConfig(_Model):
    enabled: bool = True
    """Compute drift signals (`mlserving_drift`, `mlserving_input_psi`)."""
    error_factor: float = Field(1.5, gt=1.0)
    """Error drift: live MAE above this factor x the package's test MAE."""
    min_scored: int = Field(100, ge=1, le=100_000)
    """Scored forecasts before the error rule may fire (at most liveAccuracy.window)."""
    psi_threshold: float = Field(0.25, gt=0)
    """Input drift: population stability index of recent inputs vs the training inputs above this."""
    input_window: int = Field(6000, ge=100, le=10_000_000)
    """Normalised input values in the PSI window (a window of 6 readings adds 6)."""
    publish_events: bool = True
    """Publish drift transitions on `<prefix>/_events/drift` (not retained)."""


class AutoRollbackConfig(_Model):
    enabled: bool = True
    """Swap a newly promoted version back to its predecessor when its live MAE is worse."""
    margin: float = Field(0.2, ge=0)
    """Roll back when the new version's live MAE > the predecessor's x (1 + margin)."""
    min_scored: int = Field(100, ge=1, le=100_000)
    """Forecasts scored for the predecessor (baseline) and the new version (decision), at most liveAccuracy.window."""
    window_seconds: float = Field(3600.0, gt=0)
    """Seconds after a swap during which the guard may decide; later, the new version is kept."""


class LifecycleConfig(_Model):
    live_accuracy: LiveAccuracyConfig = LiveAccuracyConfig()
    drift: DriftConfig = DriftConfig()
    auto_rollback: AutoRollbackConfig = AutoRollbackConfig()


class LegacyConfig(_Model):
    """How a tutorial client scales its legacy payload (norm_1..norm_6): `(value - mean) / scale`
    with the constants of ITS training file. The server turns such values back into readings,
    forecasts in readings, and answers in the same client units (docs/protocol.md)."""

    mean: float = Field(ge=-protocol.FLOAT32_MAX, le=protocol.FLOAT32_MAX, allow_inf_nan=False)
    """The client's `mean` (a finite float32)."""
    scale: float = Field(gt=0, le=protocol.FLOAT32_MAX, allow_inf_nan=False)
    """The client's `scale` (a positive finite float32)."""


class TenantConfig(_Model):
    name: SkipJsonSchema[str]
    """The tenant's key in `tenants` (set by ServerConfig, never in YAML)."""
    models: dict[str, str]
    """Models a request may name: {name: current or vN}."""
    default_model: str
    """Model of requests that name none (implied when the tenant has one model)."""
    request_topic: Topic
    response_topic: Topic
    rate_limit: RateLimitConfig = RateLimitConfig()
    shadow: dict[str, str] = {}
    """model -> version spec run in shadow on the same batches: scored, never answered."""
    record: bool = False
    """Publish the windows of requests with a series_id as live-traffic records for retraining."""
    legacy: LegacyConfig | None = None
    """The scaling of the tenant's legacy (tutorial) payload; None: such requests are refused."""

    @model_validator(mode="before")
    @classmethod
    def _implied_default_model(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        models = data.get("models")
        if not isinstance(models, dict) or not models:
            raise refuse("at least one model is required (name: current or vN)", at="models")
        for model, version in models.items():
            if not isinstance(model, str) or not NAME_PATTERN.match(model):
                raise refuse(f"model name {model!r} must match {NAME_PATTERN.pattern}", at="models")
            _version(version, f"models.{model}")
        given = data.get("default_model", data.get("defaultModel"))
        if given is None:
            if len(models) != 1:
                raise refuse("required when a tenant has several models", at="default_model")
            return {**data, "default_model": next(iter(models))}
        if given not in models:
            raise refuse(f"{given!r} is not one of the tenant's models", at="default_model")
        return data

    @model_validator(mode="after")
    def _shadow_shadows_a_served_model(self) -> TenantConfig:
        for model, version in self.shadow.items():
            if model not in self.models:
                raise refuse(f"not one of the tenant's models {sorted(self.models)}", at=f"shadow.{model}")
            _version(version, f"shadow.{model}")
            if version == self.models[model]:
                raise refuse(f"{version!r} is the version the tenant already serves", at=f"shadow.{model}")
        return self


#: Rules across fields (JSON Schema cannot compare two values; the chart renders them as `fail`s).
RULES: tuple[Rule, ...] = (
    Bound("limits.max_pending_bytes", ">=", "limits.max_payload_bytes"),
    Bound("lifecycle.drift.min_scored", "<=", "lifecycle.live_accuracy.window"),
    Bound("lifecycle.auto_rollback.min_scored", "<=", "lifecycle.live_accuracy.window"),
    Needs("lifecycle.auto_rollback.enabled", "lifecycle.live_accuracy.enabled", "it compares live errors"),
)


class ServerConfig(_Model):
    broker: BrokerConfig = BrokerConfig()
    topic_prefix: Topic = protocol.DEFAULT_PREFIX
    share_group: str = Field(protocol.DEFAULT_SHARE_GROUP, pattern=r"^[^/+#$][^/+#]*$")
    qos: int = Field(1, json_schema_extra={"enum": [0, 1]})
    """MQTT QoS of requests and answers."""
    registry: RegistryConfig = RegistryConfig()
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    drain_seconds: float = Field(20.0, ge=0)
    """Seconds the server takes on SIGTERM to unsubscribe, finish and answer in-flight requests."""
    log_level: LogLevel = "info"
    lifecycle: LifecycleConfig = LifecycleConfig()
    tenants: dict[str, TenantConfig]
    """The tenants this server answers, by name (at least one)."""

    @model_validator(mode="before")
    @classmethod
    def _name_tenants(cls, data: Any) -> Any:
        """Tenants are keyed by name; their topics default to the protocol's under the prefix."""
        if not isinstance(data, dict):
            return data
        tenants = data.get("tenants")
        if not isinstance(tenants, dict) or not tenants:
            raise refuse("at least one tenant is required", at="tenants")
        prefix = data.get("topic_prefix", data.get("topicPrefix", protocol.DEFAULT_PREFIX))
        named = {}
        for name, body in tenants.items():
            if not isinstance(name, str) or not TENANT_PATTERN.match(name):
                raise refuse(f"tenant name must match {TENANT_PATTERN.pattern}", at=f"tenants.{name}")
            if isinstance(body, dict):
                if "name" in body:
                    raise refuse("unknown field", at=f"tenants.{name}.name")
                body = {**body, "name": name}
                for key, alias, default in (
                    ("request_topic", "requestTopic", protocol.request_topic),
                    ("response_topic", "responseTopic", protocol.response_topic),
                ):
                    if body.get(key, body.get(alias)) is None and isinstance(prefix, str):
                        body.pop(alias, None)
                        body[key] = default(name, prefix)
            named[name] = body
        return {**data, "tenants": named}

    @model_validator(mode="after")
    def _rules_and_topics(self) -> ServerConfig:
        if self.qos not in (0, 1):
            raise refuse(f"{self.qos} must be 0 or 1", at="qos")
        for rule in RULES:
            if rule.broken(self):
                raise refuse(rule.describe(*rule.sides(self), str), at=rule.field)
        _check_topics(self.tenants)
        return self

    def model_versions(self) -> set[tuple[str, str]]:
        """Every (model, version spec) some tenant needs."""
        return {(m, v) for t in self.tenants.values() for m, v in t.models.items()}

    def shadow_versions(self) -> set[tuple[str, str]]:
        """Every (model, version spec) some tenant runs in shadow (loaded, never required for readiness)."""
        return {(m, v) for t in self.tenants.values() for m, v in t.shadow.items()}


def _check_topics(tenants: dict[str, TenantConfig]) -> None:
    """Topics must not collide: a request would reach two tenants or answers leak across them."""
    seen_requests: dict[str, str] = {}
    for tenant in tenants.values():
        other = seen_requests.setdefault(tenant.request_topic, tenant.name)
        if other != tenant.name:
            raise refuse(
                f"{tenant.request_topic!r} is also tenant {other}'s request topic",
                at=f"tenants.{tenant.name}.request_topic",
            )
    for tenant in tenants.values():
        namespace = tenant.response_topic
        for other_tenant in tenants.values():
            if other_tenant.name == tenant.name:
                continue
            theirs = other_tenant.response_topic
            if theirs == namespace or theirs.startswith(namespace + "/") or namespace.startswith(theirs + "/"):
                raise refuse(
                    f"{namespace!r} overlaps tenant {other_tenant.name}'s {theirs!r}",
                    at=f"tenants.{tenant.name}.response_topic",
                )
        for other_tenant in tenants.values():
            if other_tenant.request_topic == namespace or other_tenant.request_topic.startswith(namespace + "/"):
                raise refuse(
                    f"{namespace!r} overlaps the request topic of {other_tenant.name}",
                    at=f"tenants.{tenant.name}.response_topic",
                )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class DeployEnv(BaseSettings):
    """Deploy-time overrides from the environment, on top of the file (the chart sets a few).

    One rule names everything: MLSERVING_ + the field in upper case; a field `<section>_<name>`
    overrides `<section>.<name>` of the file when ServerConfig has such a section (broker_host ->
    broker.host), else the top-level field of that name (log_level). broker_password is no file
    field: it is the password itself.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    broker_host: str | None = None
    broker_port: int | None = None
    broker_username: str | None = None
    broker_password: str | None = Field(None, repr=False)
    http_port: int | None = None
    registry_path: str | None = None
    log_level: str | None = None

    @classmethod
    def read(cls, env: Mapping[str, str] | None) -> DeployEnv:
        """From `env` (a mapping, e.g. in tests) or, when None, from the process environment."""
        try:
            if env is None:
                return cls()
            fields = {f"{ENV_PREFIX}{name}".upper(): name for name in cls.model_fields}
            return cls.model_validate({fields[k]: v for k, v in env.items() if v != "" and k in fields})
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            name = str(error["loc"][0])
            variable = f"{ENV_PREFIX}{name}".upper()
            raise ConfigError(f"{config_path(name)}: {variable}={error['input']!r} is not an integer") from None

    def overrides(self) -> dict[str, Any]:
        """{dotted config path: value} of the variables set."""
        values = self.model_dump(exclude={"broker_password"}, exclude_none=True)
        return {config_path(name): value for name, value in values.items()}


def config_path(name: str) -> str:
    """The dotted config path a DeployEnv field overrides (see DeployEnv)."""
    section, _, rest = name.partition("_")
    nested = ServerConfig.model_fields.get(section)
    if rest and nested is not None and isinstance(nested.annotation, type) and issubclass(nested.annotation, BaseModel):
        return f"{section}.{rest}"
    return name


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read YAML (if given), apply env overrides (the process environment by default), validate."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.load(Path(path).read_text(), Loader=YamlLoader) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
    return _parse(raw, DeployEnv.read(os.environ if env is None else env))


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Validate an already-parsed config mapping (what the YAML holds); `env`: overrides, none by default."""
    return _parse(raw, DeployEnv.read(env or {}))


def _parse(raw: Any, env: DeployEnv) -> ServerConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a mapping")
    raw = _with_overrides(raw, env.overrides())
    try:
        config = ServerConfig.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc) from None
    password = env.broker_password or _read_password(config.broker.password_file)
    return config.model_copy(update={"broker": config.broker.model_copy(update={"password": password})})


def _with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with each dotted path set, under the spelling (camel or snake) the file uses."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            key = _spelling(node, part)
            if node.get(key) is None:
                node[key] = {}
            elif not isinstance(node[key], dict):
                raise ConfigError(f"{part}: must be a mapping")
            node = node[key]
        node[_spelling(node, leaf)] = value
    return raw


def _spelling(node: dict[str, Any], name: str) -> str:
    return to_camel(name) if to_camel(name) in node else name


def _read_password(password_file: str | None) -> str | None:
    if not password_file:
        return None
    try:
        return Path(password_file).read_text().strip("\r\n")
    except OSError as exc:
        raise ConfigError(f"broker.password_file: cannot read {password_file} ({exc.strerror})") from None


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
        "lifecycle": config.lifecycle.model_dump(),
        "tenants": {
            name: {
                "models": t.models,
                "default_model": t.default_model,
                "request_topic": t.request_topic,
                "response_topic": t.response_topic,
                "rate_limit_per_second": t.rate_limit.per_second,
                "shadow": t.shadow,
                "record": t.record,
                "legacy": t.legacy.model_dump() if t.legacy else None,
            }
            for name, t in config.tenants.items()
        },
    }
