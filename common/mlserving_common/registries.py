"""Opening a registry by where it is: the one place that knows every backend.

Server, trainer CLI and the retraining job all open their registry here and close it when done
(`contextlib.closing`): a broker registry is an MQTT connection. The backends import only
mlserving_common.registry, so this module is what ties them together, and nothing imports it back.
"""

from __future__ import annotations

from pathlib import Path

from mlserving_common.broker_registry import SCHEMES, BrokerLocation, BrokerRegistry
from mlserving_common.registry import FilesystemRegistry, Registry, RegistryError


def open_registry(location: str | Path | BrokerLocation, client_id: str = "", password: str | None = None) -> Registry:
    """The registry at `location`: a path or file:// URL, or a broker (mqtt[s]:// or a BrokerLocation).

    The broker form is documented in BrokerLocation; it comes back connected, reading through to
    its `seed` directory until the broker holds a model. `client_id` names its MQTT session and
    `password` overrides the location's password_file (the server passes the one it resolved).
    """
    if isinstance(location, BrokerLocation):
        seed = FilesystemRegistry(location.seed) if location.seed else None
        return BrokerRegistry(location, seed=seed, password=password, client_id=client_id).connect()
    text = str(location)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme in SCHEMES:
            return open_registry(BrokerLocation.parse(text), client_id, password)
        if scheme != "file":
            raise RegistryError(
                f"registry {text!r}: scheme {scheme!r} is not supported (a path, file://, mqtt:// or mqtts://)"
            )
        text = rest
    if not text:
        raise RegistryError("registry location is empty")
    return FilesystemRegistry(Path(text))
