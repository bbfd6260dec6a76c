"""Connection settings for the CLI: flags first, then environment, then defaults.

The environment is read here and only here, so a password can come from a flag, a file
(`--password-file`, Kubernetes-secret style) or MLSERVING_CLIENT_PASSWORD without any other
module looking at os.environ. Every field is also a variable by one rule, the prefix plus the
field's name (MLSERVING_CLIENT_TLS_CA), so the names need no table of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlserving_common import protocol
from mlserving_common.configmodel import ConfigError, config_error, refuse

__all__ = ["ENV_PREFIX", "ConfigError", "ConnectionConfig", "read_password_file", "resolve"]

ENV_PREFIX = "MLSERVING_CLIENT_"
#: One topic level: the tenant sits between slashes in every topic protocol.py builds.
TENANT_PATTERN = r"^[^/+#]+$"
#: A broker login that can own a client id: protocol.owned_client_id puts the separator after it,
#: and the id is a topic level too.
USERNAME_PATTERN = rf"^[^/+#{re.escape(protocol.CLIENT_ID_SEPARATOR)}]+$"
#: A topic (levels allowed) without wildcards: the first part of every topic.
PREFIX_PATTERN = r"^[^+#]+$"


def _is_file(path: str) -> str:
    if not Path(path).is_file():
        raise refuse(f"{path} is not a file")
    return path


class ConnectionConfig(BaseSettings):
    """Where the broker is and who we are. `username` defaults to the tenant's name.

    Not configmodel.MODEL_CONFIG: its camelCase aliases would become the variables' names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    username: str | None = Field(None, pattern=USERNAME_PATTERN)
    password: str | None = Field(None, repr=False)
    prefix: str = Field(protocol.DEFAULT_PREFIX, pattern=PREFIX_PATTERN)
    tls_ca: Annotated[str, AfterValidator(_is_file)] | None = None
    qos: int = Field(1, ge=0, le=1)

    @property
    def effective_username(self) -> str | None:
        return self.username if self.username is not None else self.tenant


def read_password_file(path: str) -> str:
    """The file's content without the trailing newline editors and `echo` add."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"password_file: cannot read {path} ({exc.strerror})") from None


def resolve(flags: Mapping[str, Any]) -> ConnectionConfig:
    """Merge CLI flags (None = not given) over the environment over the defaults, and validate."""
    given = {name: flags[name] for name in ConnectionConfig.model_fields if flags.get(name) is not None}
    if flags.get("password") is not None and flags.get("password_file") is not None:
        raise ConfigError("password: give --password or --password-file, not both")
    if flags.get("password_file") is not None:
        given["password"] = read_password_file(flags["password_file"])
    try:
        return ConnectionConfig(**given)
    except ValidationError as exc:
        error = config_error(exc)
        field = str(exc.errors(include_url=False)[0]["loc"][0])
        # Not a flag, and the defaults are valid: the value came from the field's variable.
        raise (error if field in given else ConfigError(f"{error} (from {ENV_PREFIX}{field.upper()})")) from None
