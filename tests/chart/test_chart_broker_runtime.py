"""The rendered broker config, users file and ACL run in a real Mosquitto (2.0, as in the image).

The chart's files are used as rendered; only paths and the listener address are rewritten for a
loopback broker, the way the pod's mounts would place them. Proves: the config parses, the
init container's `mosquitto_passwd -U` step yields working credentials, anonymous and wrong
passwords are refused, and a tenant sees only its own answers.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from mlserving_common import mqtt
from mlserving_common.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, auth_plugin, free_port, wait_for_port

from chart_support import COMBOS, RELEASE
from mqtt_support import connect_to

PASSWORDS = {"tenant-a": "pw-tenant-a", "tenant-b": "pw-tenant-b", "ml-server": "pw-server", "ml-trainer": "pw-trainer"}
SETS = [f"tenants.{t}.password={PASSWORDS[t]}" for t in ("tenant-a", "tenant-b")] + [
    f"broker.users.server.password={PASSWORDS['ml-server']}",
    f"broker.users.trainer.password={PASSWORDS['ml-trainer']}",
]


def rendered_files(render, sets=()):
    rendered = render(COMBOS["two-tenants"], sets=[*SETS, *sets])
    conf = rendered.one("ConfigMap", f"{RELEASE}-broker")["data"]["mosquitto.conf"]
    secret = rendered.one("Secret", f"{RELEASE}-broker-auth")["data"]
    return conf, {k: base64.b64decode(v).decode() for k, v in secret.items()}


class ChartBroker:
    """Mosquitto started from the chart's rendered files in a temp dir, as the pod would run it."""

    def __init__(self, conf: str, auth: dict[str, str], workdir: Path, tls_dir: Path | None = None) -> None:
        for tool in (MOSQUITTO, MOSQUITTO_PASSWD):
            if not Path(tool).is_file():
                pytest.fail(f"{tool} is missing: apt-get install mosquitto (the chart's broker image uses Debian's)")
        self.port = free_port()
        self.tls_port = free_port() if tls_dir else None
        auth_dir = workdir / "auth"
        auth_dir.mkdir()
        (auth_dir / "passwd").write_text(auth["passwd"])
        (auth_dir / "acl").write_text(auth["acl"])
        os.chmod(auth_dir / "passwd", 0o600)
        # The init container's step, verbatim.
        subprocess.run([MOSQUITTO_PASSWD, "-U", str(auth_dir / "passwd")], check=True, capture_output=True)
        assert "pw-server" not in (auth_dir / "passwd").read_text()
        (workdir / "data").mkdir()
        conf = conf.replace("/mosquitto/auth/", f"{auth_dir}/").replace("/mosquitto/data/", f"{workdir}/data/")
        conf = conf.replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
        # The image's copy of our plugin, built from the same source (images/mosquitto/Dockerfile).
        conf = conf.replace("/usr/lib/mosquitto/mlserving_auth.so", str(auth_plugin()))
        if tls_dir:
            conf = conf.replace("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n")
            conf = conf.replace("/mosquitto/tls/", f"{tls_dir}/")
        if os.getuid() == 0:  # keep root's access to the temp dir (mosquitto drops to `mosquitto` otherwise)
            conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(conf)
        self.log = workdir / "mosquitto.log"
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", self.port, 10, self.process)
            if self.tls_port:
                wait_for_port("127.0.0.1", self.tls_port, 10, self.process)
        except (RuntimeError, TimeoutError) as exc:  # exited early, or never listened
            self.stop()
            pytest.fail(f"mosquitto refused the rendered config: {exc}\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def broker_factory(tmp_path):
    brokers: list[ChartBroker] = []

    def make(conf, auth, tls_dir=None):
        workdir = tmp_path / f"broker-{len(brokers)}"
        workdir.mkdir()
        broker = ChartBroker(conf, auth, workdir, tls_dir)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


class Session:
    """A connected MQTT v5 client that records what it receives."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        tls_ca: str | None = None,
        expect_ok: bool = True,
        client_id: str = "",
    ) -> None:
        context = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        self.raw = connect_to("127.0.0.1", port, username, password, client_id, ssl_context=context)
        self.reason = self.raw.reason_code
        if expect_ok:
            assert not self.refused, f"{username}: {mqtt.reason_name('connack', self.reason)}"

    @property
    def refused(self) -> bool:
        return self.raw.refused

    @property
    def messages(self) -> list[tuple[str, bytes]]:
        return [(m.topic, m.payload) for m in list(self.raw.messages)]

    def subscribe(self, topic: str) -> int:
        """The SUBACK reason code (0x87: refused)."""
        return self.raw.subscribe(topic, qos=1)[0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.raw.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.raw.close()


def wait_for(predicate, timeout=5.0):
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        event.wait(0.05)
    return predicate()


def test_rendered_broker_authenticates_and_isolates_tenants(render, broker_factory):
    conf, auth = rendered_files(render)
    broker = broker_factory(conf, auth)

    anonymous = Session(broker.port, None, None, expect_ok=False)
    assert anonymous.refused
    anonymous.close()
    wrong = Session(broker.port, "tenant-a", "not-the-password", expect_ok=False)
    assert wrong.refused
    wrong.close()

    server = Session(broker.port, "ml-server", PASSWORDS["ml-server"])
    tenant_a = Session(broker.port, "tenant-a", PASSWORDS["tenant-a"])
    tenant_b = Session(broker.port, "tenant-b", PASSWORDS["tenant-b"])
    try:
        server.subscribe("$share/ml-serving/ml/tenant-a/requests")
        server.subscribe("$share/ml-serving/ml/tenant-b/requests")
        assert tenant_a.subscribe("ml/tenant-a/responses/#") == 1
        assert tenant_b.subscribe("ml/#") == 0x87  # tries to see everything: refused at subscribe time
        # A spy in tenant-a's share group would take turns of tenant-a's requests: refused.
        assert tenant_b.subscribe("$share/ml-serving/ml/tenant-a/requests") == 0x87

        tenant_a.publish("ml/tenant-a/requests", b"from-a")
        tenant_b.publish("ml/tenant-a/requests", b"b-posing-as-a")  # not allowed to write A's queue
        tenant_b.publish("ml/tenant-b/requests", b"from-b")
        assert wait_for(lambda: len(server.messages) >= 2)
        server.publish("ml/tenant-a/responses/client-1", b"answer-a")
        assert wait_for(lambda: tenant_a.messages)
        wait_for(lambda: False, timeout=0.5)  # give a leak the chance to show

        assert sorted(p for _, p in server.messages) == [b"from-a", b"from-b"]
        assert tenant_a.messages == [("ml/tenant-a/responses/client-1", b"answer-a")]
        assert tenant_b.messages == []
    finally:
        for session in (server, tenant_a, tenant_b):
            session.close()


def test_rendered_broker_refuses_client_ids_of_other_users_and_logs_refusals(render, broker_factory):
    """The chart's broker (with our plugin): tenant-a cannot connect with the serving pods' or the
    trainer's client ids (a takeover would kick them or resume their session); each refusal is in
    the broker log with the username, for the README's `kubectl logs | grep` query."""
    conf, auth = rendered_files(render)
    broker = broker_factory(conf, auth)
    trainer = Session(broker.port, "ml-trainer", PASSWORDS["ml-trainer"], client_id="ml-trainer:trainer-lstm")
    try:
        for stolen in ("ml-trainer:trainer-lstm", "ml-server:abc", "tenant-b:x"):
            intruder = Session(broker.port, "tenant-a", PASSWORDS["tenant-a"], expect_ok=False, client_id=stolen)
            assert intruder.refused, stolen
            intruder.close()
        assert trainer.raw.connection.connected  # not kicked
        own = Session(broker.port, "tenant-a", PASSWORDS["tenant-a"], client_id="tenant-a:mine")
        assert own.subscribe("$SYS/#") == 0x87
        own.close()
    finally:
        trainer.close()
    broker.stop()  # stdout to a file is block-buffered: stopping flushes it
    log = broker.log.read_text()
    for stolen in ("ml-trainer:trainer-lstm", "ml-server:abc", "tenant-b:x"):
        assert f'mlserving-auth: refused connect user="tenant-a" client="{stolen}"' in log, log
    assert 'mlserving-auth: refused subscribe user="tenant-a" client="tenant-a:mine" filter="$SYS/#"' in log


def test_rendered_broker_keeps_registry_messages_for_server_and_trainer_only(render, broker_factory):
    conf, auth = rendered_files(render, sets=["broker.persistence.enabled=true"])
    assert "persistence true" in conf
    broker = broker_factory(conf, auth)
    trainer = Session(broker.port, "ml-trainer", PASSWORDS["ml-trainer"])
    tenant_a = Session(broker.port, "tenant-a", PASSWORDS["tenant-a"])
    try:
        trainer.publish("ml/_registry/lstm/current", b"v2", retain=True)
        tenant_a.publish("ml/_registry/lstm/current", b"evil", retain=True)
        server = Session(broker.port, "ml-server", PASSWORDS["ml-server"])
        server.subscribe("ml/_registry/#")
        assert wait_for(lambda: server.messages)
        wait_for(lambda: False, timeout=0.3)
        assert server.messages == [("ml/_registry/lstm/current", b"v2")]
        assert tenant_a.subscribe("ml/_registry/#") == 0x87
        wait_for(lambda: False, timeout=0.3)
        assert tenant_a.messages == []
        server.close()
    finally:
        trainer.close()
        tenant_a.close()


def test_rendered_tls_listener_serves_clients_that_verify_the_ca(render, broker_factory, tmp_path):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test certificates (apt-get install openssl)")
    tls = tmp_path / "tls"
    tls.mkdir()

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tls)

    def self_signed_ca(name: str, common_name: str) -> None:
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-subj",
            f"/CN={common_name}",
        )

    self_signed_ca("ca", "test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1")
    (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
    )
    conf, auth = rendered_files(render, sets=["broker.tls.enabled=true", "broker.tls.secretName=broker-tls"])
    broker = broker_factory(conf, auth, tls_dir=tls)
    session = Session(broker.tls_port, "tenant-a", PASSWORDS["tenant-a"], tls_ca=str(tls / "ca.crt"))
    session.close()
    # A client that trusts another CA refuses the broker (no silent fallback to an unverified link).
    self_signed_ca("other", "another-ca")
    with pytest.raises(mqtt.ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):  # the TLS handshake's SSLError
        Session(broker.tls_port, "tenant-a", PASSWORDS["tenant-a"], tls_ca=str(tls / "other.crt"))
