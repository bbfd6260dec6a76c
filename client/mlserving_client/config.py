"""Connection settings for the CLI: flags first, then environment, then defaults.

The environment is read here and only here, so a password can come from a flag, a file
(`--password-file`, Kubernetes-secret style) or MLSERVING_CLIENT_PASSWORD without any other
module looking at os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserving_common import protocol

ENV_PREFIX = "MLSERVING_CLIENT_"
#: Environment variables the CLI honours, and the field each one sets.
ENV_FIELDS = {
    "MLSERVING_CLIENT_HOST": "host",
    "MLSERVING_CLIENT_PORT": "port",
    "MLSERVING_CLIENT_USERNAME": "username",
    "MLSERVING_CLIENT_PASSWORD": "password",
    "MLSERVING_CLIENT_TENANT": "tenant",
    "MLSERVING_CLIENT_TLS_CA": "tls_ca",
}


class ConfigError(ValueError):
    """Invalid setting; the message starts with the name of the field at fault."""


@dataclass(frozen=True)
class ConnectionConfig:
    """Where the broker is and who we are. `username` defaults to the tenant's name."""

    host: str = "127.0.0.1"
    port: int = 1883
    tenant: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = protocol.DEFAULT_PREFIX
    tls_ca: str | None = None
    qos: int = 1

    @property
    def effective_username(self) -> str | None:
        return self.username if self.username is not None else self.tenant

    def validate(self) -> None:
        if not self.host:
            raise ConfigError("host: must not be empty")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} must be 1..65535")
        if self.qos not in (0, 1):
            raise ConfigError(f"qos: {self.qos} must be 0 or 1")
        if not self.prefix or any(ch in self.prefix for ch in "+#"):
            raise ConfigError(f"prefix: {self.prefix!r} must be a non-empty topic without wildcards")
        if self.tenant is not None and (not self.tenant or any(ch in self.tenant for ch in "/+#")):
            raise ConfigError(f"tenant: {self.tenant!r} must be one topic level (no '/', '+', '#')")
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise ConfigError(f"tls_ca: {self.tls_ca} is not a file")


def read_password_file(path: str) -> str:
    """The file's content without the trailing newline editors and `echo` add."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"password_file: cannot read {path} ({exc.strerror})") from None


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ConnectionConfig:
    """Merge CLI flags (None = not given) over environment over defaults, then validate."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for variable, name in ENV_FIELDS.items():
        if env.get(variable):
            values[name] = env[variable]
    if "port" in values:
        try:
            values["port"] = int(values["port"])
        except ValueError:
            raise ConfigError(f"port: MLSERVING_CLIENT_PORT={values['port']!r} is not an integer") from None
    for name in ("host", "port", "tenant", "username", "prefix", "tls_ca", "qos"):
        if flags.get(name) is not None:
            values[name] = flags[name]
    if flags.get("password") is not None and flags.get("password_file") is not None:
        raise ConfigError("password: give --password or --password-file, not both")
    if flags.get("password") is not None:
        values["password"] = flags["password"]
    elif flags.get("password_file") is not None:
        values["password"] = read_password_file(flags["password_file"])
    config = ConnectionConfig(**values)
    config.validate()
    return config
