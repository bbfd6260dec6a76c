"""A local Mosquitto 2.0 broker with passwords and per-user ACLs, for tests, demo and benchmarks.

Production brokers are configured by the Helm chart; this module renders the same policy for a
broker on loopback so that everything we test runs against real authentication and ACLs.
Defaults follow the lessons recorded in issues 3 and 7: `set_tcp_nodelay` (QoS 1 collapses to
~1,000 msg/s under Nagle) and a large `max_queued_messages` (the default of 1000 silently
drops messages, even QoS 0 ones, for a consumer that falls behind); and of issue 13: our broker
plugin (images/mosquitto/plugin: client ids owned by usernames, SUBSCRIBEs checked against the
ACL, refusals logged) and per-session memory bounds (DEFAULT_LIMITS, docs/security.md).
"""

from __future__ import annotations

import fcntl
import hashlib
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
from mlserving_common.devcache import cache_dir

MOSQUITTO = os.environ.get("MLSERVING_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get("MLSERVING_MOSQUITTO_PASSWD", "/usr/bin/mosquitto_passwd")
#: Source of our broker plugin (client ids owned by usernames, subscribe ACLs, refusal logs).
PLUGIN_SOURCE_DIR = Path(__file__).resolve().parents[2] / "images" / "mosquitto" / "plugin"
PLUGIN_NAME = "mlserving_auth.so"

#: The server's default limits.max_payload_bytes; the broker's packet limits sit just above it.
SERVER_MAX_PAYLOAD = 256 * 1024

#: Broker limits rendered into the config (the chart renders the same from broker.config); any
#: of them can be overridden via LocalBroker(**limits). They bound what one session can make the
#: broker hold, whatever the load offered; the arithmetic is in docs/security.md ("Broker memory").
DEFAULT_LIMITS: dict[str, int | str] = {
    # A whole MQTT packet (payload, topic, properties such as Correlation Data): a client that
    # sends more is disconnected before the broker buffers it.
    "max_packet_size": SERVER_MAX_PAYLOAD + 8 * 1024,
    # A payload over this is refused with PUBACK 0x95 (packet too large). Above the server's
    # max_payload_bytes, so a request a little too big gets the server's payload_too_large answer.
    "message_size_limit": SERVER_MAX_PAYLOAD + 4 * 1024,
    # Per session: QoS 1 messages queued beyond those in flight, and their payload bytes; both
    # bound its memory (~1.05 KiB a message). Above the plugin's tenant_backlog, so a tenant's
    # whole backlog fits in one server's session and the broker never drops it.
    "max_queued_messages": 20_000,
    "max_queued_bytes": 16 * 1024 * 1024,
    # Per session: QoS 1 messages (and their payload bytes) sent but not yet acknowledged.
    "max_inflight_messages": 100,
    "max_inflight_bytes": 2 * 1024 * 1024,
    "max_keepalive": 300,
    # Sessions of clients gone this long are dropped with their queues.
    "persistent_client_expiration": "1h",
    # Deliver at the subscription's QoS: a QoS 0 flood to a QoS 1 subscriber (the servers) is then
    # flow-controlled and queued within the byte limits above; at QoS 0 Mosquitto bounds a slow
    # subscriber's unsent packets by count only (max_queued_messages x max_packet_size).
    "upgrade_outgoing_qos": "true",
}


def plugin_source_hash() -> str:
    """Key of the compiled plugin in the cache; ci/bootstrap.sh computes the same
    (`cat mlserving_auth.c Makefile | sha256sum | cut -c1-12`)."""
    digest = hashlib.sha256()
    for name in ("mlserving_auth.c", "Makefile"):
        digest.update((PLUGIN_SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def auth_plugin() -> Path:
    """Path of mlserving_auth.so: $MLSERVING_MOSQUITTO_PLUGIN, else the build of the current
    source in the cache, compiled here (gcc + mosquitto-dev, installed by ci/bootstrap.sh) if a
    source change made it missing. Without it a local broker would not enforce what the chart's does."""
    override = os.environ.get("MLSERVING_MOSQUITTO_PLUGIN")
    if override:
        return Path(override)
    target = cache_dir() / "mosquitto-plugin" / plugin_source_hash() / PLUGIN_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs build it once
        if not target.exists():
            partial = target.with_suffix(".so.tmp")
            result = subprocess.run(
                ["make", "-s", "-C", str(PLUGIN_SOURCE_DIR), f"OUT={partial}"], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise RuntimeError(f"building the broker plugin failed (run ci/bootstrap.sh):\n{result.stderr}")
            partial.rename(target)
    return target


#: Options of our broker plugin (images/mosquitto/plugin/mlserving_auth.c), as the chart renders
#: them; publish_rate and publish_bytes_rate (per tenant username, 0 = unlimited) can be set per
#: broker. rate_exempt is rendered from the users marked `service`.
DEFAULT_PLUGIN_OPTIONS: dict[str, Any] = {
    "log_per_second": 20,
    # Correlation Data, Response Topic and User Properties of a tenant's PUBLISH: Mosquitto's
    # max_queued_bytes counts payload only, so this bounds the rest of a queued message. The
    # server echoes at most 256 bytes of Correlation Data (limits.max_correlation_bytes).
    "max_properties_bytes": 512,
    # Requests a tenant may have unanswered; over it the broker refuses them (PUBACK 0x87) rather
    # than let a flood's backlog outgrow a server's session queue (max_queued_messages), where
    # Mosquitto would drop it silently.
    "tenant_backlog": 16_000,
}


@dataclass(frozen=True)
class BrokerUser:
    """One broker account: its password and its ACL lines (`topic read|write|readwrite <filter>`).

    `service`: the serving pods' or the trainer's account, exempt from the per-tenant publish
    budget and property bound of the broker plugin (the chart's `plugin_opt_rate_exempt`)."""

    username: str
    password: str
    acl: list[str] = field(default_factory=list)
    service: bool = False


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
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    extensions = directory / "broker.ext"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ml-serving test CA",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_cert),
        ],
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={next(iter(hosts))}",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(extensions),
            "-out",
            str(cert),
        ],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    return TlsFiles(ca_cert, cert, key)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
    """ACL file text (Mosquitto's acl-file format, read by our plugin): anything not granted is
    denied, and a SUBSCRIBE must be covered by a read grant."""
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
    plugin: Path | None = None,
    plugin_options: dict[str, Any] | None = None,
    services: Iterable[str] = (),
) -> str:
    """mosquitto.conf: one authenticated plain listener, optionally a TLS one with the same
    users and ACLs. MQTT v5 is on by default in Mosquitto 2.0.

    The ACL is enforced by our plugin (`plugin_opt_acl_file`), not by `acl_file`: Mosquitto's
    acl_file grants every SUBSCRIBE and lets anyone use any client id (docs/security.md)."""
    merged = {**DEFAULT_LIMITS, **(limits or {})}
    options = {**DEFAULT_PLUGIN_OPTIONS, **(plugin_options or {}), "acl_file": acl_file}
    if services:
        options["rate_exempt"] = ",".join(services)
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"plugin {plugin or auth_plugin()}",
        *(f"plugin_opt_{key} {value}" for key, value in options.items()),
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


def wait_for_port(host: str, port: int, timeout: float = 10.0, process: subprocess.Popen[Any] | None = None) -> None:
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
        plugin_options: dict[str, Any] | None = None,
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
        self.plugin_options = plugin_options
        self.tls = tls
        #: Port of the TLS listener (same users and ACLs), when `tls` is given.
        self.tls_port = free_port(host) if tls is not None else None
        self.config_path = self.workdir / "mosquitto.conf"
        self.password_path = self.workdir / "passwd"
        self.acl_path = self.workdir / "acl"
        self.log_path = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
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
                plugin_options=self.plugin_options,
                services=[user.username for user in self.users.values() if user.service],
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
