"""A local Mosquitto 2.0 broker with passwords and per-user ACLs, for tests, demo and benchmarks.

Production brokers are configured by the Helm chart; this module renders the same policy for a
broker on loopback so that everything we test runs against real authentication and ACLs.
Defaults follow the lessons recorded in issues 3 and 7: `set_tcp_nodelay` (QoS 1 collapses to
~1,000 msg/s under Nagle) and a large `max_queued_messages` (the default of 1000 silently
drops messages, even QoS 0 ones, for a consumer that falls behind).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserving_common import protocol

MOSQUITTO = os.environ.get("MLSERVING_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get("MLSERVING_MOSQUITTO_PASSWD", "/usr/bin/mosquitto_passwd")

#: Broker limits rendered into the config; any of them can be overridden via LocalBroker(**limits).
DEFAULT_LIMITS: dict[str, int] = {
    "max_queued_messages": 100_000,
    "max_queued_bytes": 0,  # 0 = no byte limit; the message count bounds the queue
    "max_inflight_messages": 1000,
    # Above the server's own max_payload_bytes so oversize requests reach the server and get an
    # error answer instead of vanishing at the broker.
    "message_size_limit": 2 * 1024 * 1024,
    "max_keepalive": 300,
}


@dataclass(frozen=True)
class BrokerUser:
    """One broker account: its password and its ACL lines (`topic read|write|readwrite <filter>`)."""

    username: str
    password: str
    acl: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener: the CA that clients verify against, the broker's cert and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_test_certificates(directory: str | Path, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A throw-away CA and a broker certificate for `hosts` (IPs and DNS names), via openssl.

    For tests and the demo only; production certificates come from a Secret (cert-manager).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.crt"
    san = ",".join(
        f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
    )
    extensions = directory / "broker.ext"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    commands = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ml-serving test CA",
         "-keyout", str(ca_key), "-out", str(ca_cert)],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={next(iter(hosts))}",
         "-keyout", str(key), "-out", str(csr)],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "2", "-extfile", str(extensions), "-out", str(cert)],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    return TlsFiles(ca_cert, cert, key)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tenant_topics(tenant: str, prefix: str = protocol.DEFAULT_PREFIX) -> tuple[str, str]:
    """(request topic, response topic) a tenant uses when its config sets neither."""
    return protocol.request_topic(tenant, prefix), protocol.response_topic(tenant, prefix)


def tenant_acl(request_topic: str, response_topic: str) -> list[str]:
    """A tenant publishes its requests and reads its answers (incl. per-client subtopics) only."""
    return [
        f"topic write {request_topic}",
        f"topic read {response_topic}",
        f"topic read {response_topic}/#",
    ]


def server_acl(
    tenants: Iterable[tuple[str, str]],
    share_group: str = protocol.DEFAULT_SHARE_GROUP,
    prefix: str = protocol.DEFAULT_PREFIX,
) -> list[str]:
    """Servers read every tenant's requests (also via $share), answer in their namespaces, read the registry.

    `tenants` holds (request topic, response topic) pairs.
    """
    lines: list[str] = []
    for request, response in tenants:
        lines += [
            f"topic read {request}",
            f"topic read {protocol.shared_subscription(request, share_group)}",
            f"topic write {response}",
            f"topic write {response}/#",
        ]
    lines.append(f"topic read {prefix}/_registry/#")
    # Live-traffic records for retraining and lifecycle events (drift, rollback): docs/lifecycle.md.
    lines.append(f"topic write {prefix}/_records/#")
    lines.append(f"topic write {prefix}/_events/#")
    return lines


def trainer_acl(prefix: str = protocol.DEFAULT_PREFIX) -> list[str]:
    """The trainer publishes packages and moves `current` pointers in the broker-backed registry,
    drains the servers' records and events, and keeps its live history under `_trainer/`."""
    return [
        f"topic readwrite {prefix}/_registry/#",
        f"topic read {prefix}/_records/#",
        f"topic read {prefix}/_events/#",
        f"topic readwrite {prefix}/_trainer/#",
    ]


def render_acl(users: Iterable[BrokerUser]) -> str:
    """ACL file text: anything not granted is denied (Mosquitto's default with an acl_file)."""
    blocks = []
    for user in users:
        blocks.append("\n".join([f"user {user.username}", *user.acl]))
    return "\n\n".join(blocks) + "\n"


def render_config(
    *,
    host: str,
    port: int,
    password_file: Path,
    acl_file: Path,
    log_file: Path | None = None,
    persistence_dir: Path | None = None,
    limits: dict[str, Any] | None = None,
    tls: TlsFiles | None = None,
    tls_port: int | None = None,
) -> str:
    """mosquitto.conf: one authenticated plain listener, optionally a TLS one with the same
    users and ACLs. MQTT v5 is on by default in Mosquitto 2.0."""
    merged = {**DEFAULT_LIMITS, **(limits or {})}
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "set_tcp_nodelay true",
        *(f"{key} {value}" for key, value in merged.items()),
        f"listener {port} {host}",
        "protocol mqtt",
    ]
    if tls is not None and tls_port is not None:
        lines += [
            f"listener {tls_port} {host}",
            "protocol mqtt",
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
        ]
    if os.getuid() == 0:
        # Run as root only when started by root, so the broker can read our private work dir
        # instead of dropping to the `mosquitto` user.
        lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/", "autosave_interval 1"]
    else:
        lines.append("persistence false")
    if log_file is not None:
        lines += [f"log_dest file {log_file}", "log_type error", "log_type warning", "log_type notice"]
    else:
        lines.append("log_dest none")
    return "\n".join(lines) + "\n"


def write_password_file(path: Path, users: Iterable[BrokerUser]) -> None:
    """Hash passwords with mosquitto_passwd so the broker sees exactly what production uses."""
    path = Path(path)
    path.unlink(missing_ok=True)
    first = True
    for user in users:
        args = [MOSQUITTO_PASSWD, "-b"] + (["-c"] if first else []) + [str(path), user.username, user.password]
        subprocess.run(args, check=True, capture_output=True)
        first = False
    if first:
        path.write_text("")


def wait_for_port(host: str, port: int, timeout: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class LocalBroker:
    """A Mosquitto process on loopback; a context manager, restartable on the same port."""

    def __init__(
        self,
        users: Iterable[BrokerUser],
        port: int | None = None,
        workdir: str | Path | None = None,
        persistence: bool = False,
        host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
        **limits: Any,
    ) -> None:
        self.users = {user.username: user for user in users}
        self.host = host
        self.port = port or free_port(host)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.limits = limits
        self.tls = tls
        #: Port of the TLS listener (same users and ACLs), when `tls` is given.
        self.tls_port = free_port(host) if tls is not None else None
        self.config_path = self.workdir / "mosquitto.conf"
        self.password_path = self.workdir / "passwd"
        self.acl_path = self.workdir / "acl"
        self.log_path = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen | None = None
        self._write_files()

    def _write_files(self) -> None:
        write_password_file(self.password_path, self.users.values())
        self.acl_path.write_text(render_acl(self.users.values()))
        persistence_dir = None
        if self.persistence:
            persistence_dir = self.workdir / "data"
            persistence_dir.mkdir(exist_ok=True)
        self.config_path.write_text(
            render_config(
                host=self.host,
                port=self.port,
                password_file=self.password_path,
                acl_file=self.acl_path,
                log_file=self.log_path,
                persistence_dir=persistence_dir,
                limits=self.limits,
                tls=self.tls,
                tls_port=self.tls_port,
            )
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def credentials(self, username: str) -> tuple[str, str]:
        """(username, password) of a configured user."""
        return username, self.users[username].password

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self.running:
            return self
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.host, self.port, timeout, self._process)
            if self.tls_port is not None:
                wait_for_port(self.host, self.tls_port, timeout, self._process)
        except (RuntimeError, TimeoutError) as exc:
            stderr = b""
            if self._process.poll() is not None and self._process.stderr is not None:
                stderr = self._process.stderr.read()
            self.stop()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {exc}\n{stderr.decode(errors='replace')}\n{log}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crashing broker would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop and start again on the same port, optionally staying down for a while."""
        self.stop()
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
