"""The system under test: a private Mosquitto on loopback plus the servers a run starts against it.

The broker is `LocalBroker` with its defaults (passwords, ACLs, set_tcp_nodelay, a 100,000-message
queue limit) — the same configuration tests and the demo use. Each kind of server has its own
tenant (request topic), so all of them can stay up and be loaded in turns: `bench` is served by
our server (LSTM by default, ANN on request), `echo` by echo.py, `naive` by naive.py. All servers
log in as `server`.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from mlserving_bench import procs
from mlserving_bench.responder import PASSWORD_ENV
from mlserving_client.load import LoadResult, LoadSpec, TenantTarget, run_load
from mlserving_common import protocol
from mlserving_common.mosquitto import BrokerUser, LocalBroker, free_port, server_acl, tenant_acl, tenant_topics

TENANT = "bench"
ECHO_TENANT = "echo"
NAIVE_TENANT = "naive"
TENANTS = (TENANT, ECHO_TENANT, NAIVE_TENANT)
SERVER_USER = "server"


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """config["a"]["b"] = value for dotted "a.b", creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: {part} is not a mapping")
    node[leaf] = value


def parse_option(text: str) -> tuple[str, Any]:
    """`batching.max_batch=128` -> ("batching.max_batch", 128); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r}: expected KEY=VALUE, e.g. batching.max_batch=128")
    return key.strip(), yaml.safe_load(raw)


class Stack:
    """Context manager: broker up on enter; every child and the broker down on exit."""

    def __init__(
        self,
        workdir: Path,
        registry: Path,
        window: int,
        server_options: dict[str, Any] | None = None,
        server_command: list[str] | None = None,
        extra_tenants: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        #: How our server is started; `--config FILE` is appended. Another command = an A/B experiment.
        self.server_command = server_command or [sys.executable, "-m", "mlserving_server"]
        self.registry = Path(registry)
        self.window = window
        self.server_options = dict(server_options or {})
        # extra_tenants: more responders side by side (the MQTT layer comparison's, mqtt_layers.py).
        self.topics = {tenant: tenant_topics(tenant) for tenant in (*TENANTS, *extra_tenants)}
        self.users = {t: BrokerUser(t, uuid.uuid4().hex, tenant_acl(*self.topics[t])) for t in self.topics}
        self.users[SERVER_USER] = BrokerUser(
            SERVER_USER, uuid.uuid4().hex, server_acl(self.topics.values()), service=True
        )
        self.broker = LocalBroker(self.users.values(), workdir=self.workdir / "mosquitto")
        self.broker_pid: int | None = None
        self.children: list[procs.Child] = []

    def __enter__(self) -> Stack:
        self.broker.start()
        self.broker_pid = procs.find_pid(str(self.broker.config_path))
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.stop(timeout=15)
        self.broker.close()

    # -- processes ----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {**os.environ, PASSWORD_ENV: self.users[SERVER_USER].password}

    def server_config(self, http_port: int, **options: Any) -> dict[str, Any]:
        """The chart's YAML shape; batching and limits stay at the server's defaults unless overridden."""
        config: dict[str, Any] = {
            "broker": {"host": self.broker.host, "port": self.broker.port, "username": SERVER_USER},
            "qos": 1,
            "registry": {"path": str(self.registry)},
            "http": {"host": "127.0.0.1", "port": http_port},
            "drain_seconds": 5,
            "log_level": "info",
            "tenants": {TENANT: {"models": {"lstm": "current", "ann": "current"}, "default_model": "lstm"}},
        }
        for key, value in {**self.server_options, **options}.items():
            set_dotted(config, key, value)
        return config

    def start_server(self, name: str, timeout: float = 60.0, **options: Any) -> procs.Child:
        """`python -m mlserving_server` as deployed; returns once /readyz answers 200."""
        config = self.server_config(free_port(), **options)
        child = procs.start_server(name, config, self.workdir, self._env(), self.server_command)
        self.children.append(child)
        child.wait_ready(timeout)
        return child

    def start_responder(self, name: str, module: str, tenant: str, *extra: str, timeout: float = 60.0) -> procs.Child:
        """echo.py or naive.py serving `tenant`; returns once it is subscribed."""
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            module,
            "--host",
            self.broker.host,
            "--port",
            str(self.broker.port),
            "--username",
            SERVER_USER,
            "--topic",
            self.topics[tenant][0],
            "--ready-file",
            str(ready),
            *extra,
        ]
        child = procs.spawn(name, argv, self._env(), self.workdir / f"{name}.log")
        self.children.append(child)
        child.wait_file_ready(ready, timeout)
        return child

    def stop(self, child: procs.Child) -> None:
        child.stop()
        self.children.remove(child)

    # -- load ---------------------------------------------------------------------------------
    def load(
        self,
        *,
        duration: float,
        tenant: str = TENANT,
        concurrency: int | None = None,
        rate: float | None = None,
        batch: int = 1,
        grace: float = 10.0,
        model: str | None = None,
    ) -> LoadResult:
        """One run of the client library's load generator as `tenant` (default: our server's)."""
        user = self.users[tenant]
        spec = LoadSpec(
            host=self.broker.host,
            port=self.broker.port,
            targets=(TenantTarget(tenant, user.username, user.password),),
            rate=rate,
            concurrency=concurrency,
            duration=duration,
            batch=batch,
            window=self.window,
            model=model,
            qos=1,
            prefix=protocol.DEFAULT_PREFIX,
            grace=grace,
        )
        return run_load(spec)
