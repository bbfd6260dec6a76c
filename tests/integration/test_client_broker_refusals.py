"""Our clients turn a broker's refusal of a request into an explicit error for that request.

The broker (our plugin) refuses a tenant's QoS 1 request PUBLISH with PUBACK 0x87 when the
tenant is over its publish budget or backlog. No server ever sees such a request, so a client
that ignores PUBACK reason codes waits for an answer that cannot come: the request looks lost.
Here the broker's per-tenant budget is 20 publishes/s (a 1 s burst of 20) and a hostile-load
tenant offers 200/s: every refused request must be reported at once as `refused_by_broker`
(load generator: under errors, not lost; library: PredictionError long before its timeout;
CLI: the error printed, exit 1), and everything the broker let through is answered by the real
server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import orjson
import pytest

from mlserving_client import Client, LoadSpec, PredictionError, TenantTarget, run_load
from mlserving_common import protocol

from mqtt_support import client_cli

pytestmark = pytest.mark.broker_plugin_options(publish_rate=20)

REFUSED = protocol.ErrorCode.REFUSED_BY_BROKER
SERIES = [18.0, 19.5, 21.0, 22.5, 21.0, 19.5]
BUDGET_PER_S = 20


def served(server: Any, tenant: str) -> int:
    """Requests of `tenant` the server answered (any outcome): what reached it through the broker."""
    return int(server.metric("mlserving_requests_total", tenant=tenant))


@pytest.mark.parametrize("engine", ["lean", "reconnect"])
def test_load_generator_counts_refused_requests_as_errors_not_lost(broker: Any, server: Any, engine: str) -> None:
    """Open loop at 200 req/s for 2 s against a 20/s budget: the excess is refused_by_broker."""
    target = TenantTarget("tenant-a", *broker.credentials("tenant-a"))
    result = run_load(
        LoadSpec(host=broker.host, port=broker.port, targets=(target,), rate=200, count=400, grace=3, engine=engine)
    )
    c = result.counters
    refused = c.errors[REFUSED]
    print(
        f"\n{engine}: sent {c.sent} answered {c.answered} refused {refused} lost {c.lost} "
        f"in {result.send_seconds:.2f} s"
    )
    assert c.sent == 400 and c.lost == 0 and (c.duplicates, c.unexpected) == (0, 0)
    assert set(c.errors) == {REFUSED} and c.answered + refused == c.sent
    # the broker's budget (a 1 s burst plus 20/s) decides how many got through, and each reached the server
    assert 1 <= c.answered <= BUDGET_PER_S * (2 + result.elapsed_seconds)
    assert served(server, "tenant-a") == c.answered
    assert f"{REFUSED}={refused}" in result.format_text()
    assert result.to_dict()["errors"] == {REFUSED: refused}


def test_closed_loop_refusals_free_their_slots(broker: Any, server: Any) -> None:
    """Closed loop: a refused request gives its slot to the next one at once (no request_timeout wait)."""
    target = TenantTarget("tenant-a", *broker.credentials("tenant-a"))
    result = run_load(
        LoadSpec(
            host=broker.host,
            port=broker.port,
            targets=(target,),
            concurrency=8,
            count=300,
            duration=20,
            grace=3,
            request_timeout=60,
            engine="lean",
        )
    )
    c = result.counters
    print(f"\nclosed loop: sent {c.sent} answered {c.answered} refused {c.errors[REFUSED]} lost {c.lost}")
    assert c.sent == 300 and c.lost == 0
    assert c.errors[REFUSED] >= 1 and c.answered + c.errors[REFUSED] == 300
    assert served(server, "tenant-a") == c.answered


def _outcomes(futures: list[Future[Any]], wait_s: float) -> tuple[int, list[PredictionError]]:
    """(answered, refusals) once every future resolved, within `wait_s` seconds in all (far below
    the requests' own timeout: a request left to wait for it fails the test)."""
    _, unresolved = wait(futures, timeout=wait_s)
    assert not unresolved, f"{len(unresolved)} of {len(futures)} requests still waiting after {wait_s} s"
    answered, refusals = 0, []
    for future in futures:
        exc = future.exception()
        if exc is None:
            answered += 1
        else:
            assert isinstance(exc, PredictionError), exc
            refusals.append(exc)
    return answered, refusals


def test_library_request_over_budget_fails_at_once(connect: Callable[..., Client]) -> None:
    """With no retries and a 60 s timeout, requests the broker refuses resolve within the bounded
    wait as PredictionError refused_by_broker (reason code in the message); the rest are answered."""
    client = connect(attempts=1, timeout=60)
    futures = [client.submit(SERIES) for _ in range(80)]
    answered, refusals = _outcomes(futures, wait_s=20)
    stats = client.stats()
    print(f"\nlibrary: 80 requests, {answered} answered, {len(refusals)} refused; {refusals[:1]}")
    assert refusals and answered >= 1 and answered + len(refusals) == 80
    assert {e.code for e in refusals} == {REFUSED} and all("0x87" in e.message for e in refusals)
    assert all(e.retryable for e in refusals)
    assert stats.errors[REFUSED] == len(refusals) and stats.timeouts == 0 and client.in_flight == 0


def test_library_retries_refused_requests_with_its_backoff(connect: Callable[..., Client]) -> None:
    """refused_by_broker is retryable: resent (same id) after the backoff, like an error answer."""
    client = connect(attempts=3, backoff=0.05, timeout=60)
    futures = [client.submit(SERIES) for _ in range(80)]
    answered, refusals = _outcomes(futures, wait_s=20)
    stats = client.stats()
    print(
        f"\nlibrary with retries: {answered} answered, {len(refusals)} refused after 3 attempts, "
        f"{stats.retries} retries, {stats.errors[REFUSED]} refusals"
    )
    assert answered + len(refusals) == 80 and {e.code for e in refusals} <= {REFUSED}
    assert stats.retries >= 1 and stats.errors[REFUSED] >= stats.retries and stats.timeouts == 0


def test_cli_predict_prints_the_refusal_and_exits_1(broker: Any, connect: Callable[..., Client]) -> None:
    """While the tenant's budget is drained by its own flood, `predict` reports refused_by_broker."""
    flood = connect(attempts=1, timeout=60)
    stop = threading.Event()

    def drain_budget() -> None:
        while not stop.wait(0.002):
            flood.submit(SERIES)

    thread = threading.Thread(target=drain_budget, daemon=True)
    thread.start()
    env = {"MLSERVING_CLIENT_PASSWORD": broker.credentials("tenant-a")[1]}
    runs = []
    try:
        for _ in range(5):  # the CLI may win one of the budget's 20 tokens a second; a refusal must come
            result = client_cli(
                broker.host,
                broker.port,
                "predict",
                *("--tenant", "tenant-a", "--attempts", "1", "--timeout", "60"),
                *map(str, SERIES),
                env=env,
                timeout=40,
            )
            runs.append(result)
            if result.returncode == 1:
                break
    finally:
        stop.set()
        thread.join(timeout=10)
    last = runs[-1]
    assert last.returncode == 1, (last.returncode, last.stdout, last.stderr)
    body = orjson.loads(last.stdout)
    assert body["error"]["code"] == REFUSED and "0x87" in body["error"]["message"]
    assert all(r.returncode == 0 and "prediction" in orjson.loads(r.stdout) for r in runs[:-1])
