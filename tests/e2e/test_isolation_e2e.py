"""Issue 13 on the real cluster: a hostile tenant with valid credentials, from outside the pods,
against the chart's broker (our plugin loaded from the image).

- Share-group spies: three tenant-a sessions asking for `$share/ml-serving/ml/tenant-b/requests`
  get SUBACK 0x87 and tenant-b loses nothing of a steady load.
- Takeover: tenant-a connecting with the serving pods' client ids (read from the broker's log,
  as an attacker who saw them would use them) and with the trainer's persistent-session ids is
  refused; tenant-b's steady load loses nothing and the servers stay connected.
- Every refusal is in `kubectl logs` with the username: the chart README's query counts them.
"""

from __future__ import annotations

import re
import time

import pytest

from mlserving_common import mqtt, protocol

from e2e_harness import RELEASE, Release, SteadyLoad
from mqtt_support import RawClient, connect_to

pytestmark = pytest.mark.e2e

NOT_AUTHORIZED = 0x87


def figure(scenario: str, **values: object) -> None:
    print(f"\nE2E {scenario}: " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def broker_log(release: Release) -> str:
    return release.kubectl("logs", f"{RELEASE}-broker-0", "-c", "mosquitto", timeout=60)


def connect(release: Release, username: str, client_id: str, timeout: float = 20.0) -> RawClient:
    """One CONNECT (no retries): `.reason_code` is the CONNACK's."""
    return connect_to(
        release.host, release.port, username, release.passwords[username], client_id, keepalive=30, timeout=timeout
    )


def test_share_group_spies_are_refused_and_tenant_b_loses_nothing(release: Release) -> None:
    group = protocol.shared_subscription(protocol.request_topic("tenant-b"))
    spies, codes = [], []
    for i in range(3):
        spy = connect(release, "tenant-a", protocol.owned_client_id("tenant-a", f"spy-{i}"))
        assert not spy.refused, spy.reason_code
        spies.append(spy)
        codes.append(spy.subscribe(group, qos=1, timeout=20))
    try:
        with release.client("tenant-b") as victim:
            outcome = SteadyLoad(victim, rate=20).start()
            time.sleep(15)
            result = outcome.stop(grace=60)
    finally:
        for spy in spies:
            spy.close()
    figure("share-group-spies", spies=3, suback=codes, tenant_b=result.summary())
    assert codes == [[NOT_AUTHORIZED]] * 3
    assert result.lost == 0 and not result.errors, result.summary()


def test_takeover_of_server_and_trainer_ids_is_refused(release: Release) -> None:
    server_user = "ml-server"
    seen = re.findall(
        rf"New client connected from \S+ as (\S+) \(p\d, c\d, k\d+, u'{server_user}'\)", broker_log(release)
    )
    server_ids = sorted(set(seen))
    assert server_ids, "no serving pod's login in the broker log"
    stolen = [*server_ids, "ml-trainer:trainer-lstm", "ml-trainer:trainer-ann", "mlserving-trainer-lstm"]
    attempts: list[tuple[str, object]] = []
    with release.client("tenant-b") as victim:
        load = SteadyLoad(victim, rate=20).start()
        for _ in range(3):
            for client_id in stolen:
                client = connect(release, "tenant-a", client_id)
                attempts.append((client_id, client.reason_code))
                client.close()
            time.sleep(1)
        result = load.stop(grace=60)
    figure("takeover", ids=len(stolen), attempts=len(attempts), tenant_b=result.summary())
    assert all(reason >= mqtt.REFUSED for _, reason in attempts), attempts
    assert result.lost == 0 and not result.errors, result.summary()
    log = broker_log(release)
    for client_id in server_ids:
        assert f'mlserving-auth: refused connect user="tenant-a" client="{client_id}"' in log
    # The chart README's query: refusals per user and kind.
    counted = re.findall(r'mlserving-auth: refused (\w+) user="tenant-a"', log)
    figure("refusals-logged", connect=counted.count("connect"), subscribe=counted.count("subscribe"))
    assert counted.count("connect") >= len(server_ids)
