"""A 4x flood against one tenant's pod on the real cluster, with the chart's limits (issue 13, finding 3).

Own module, so its own release (module-scoped fixture in conftest.py): the flood does not disturb
test_platform.py's scenarios. tenant-a is measured in closed loop from the host (NodePort), then
flooded at FLOOD_FACTOR x that from FLOOD_CONNECTIONS connections for FLOOD_SECONDS while
tenant-b sends a steady trickle. Checked: 0 OOM kills and 0 restarts of tenant-a's pods, every
tenant-a request answered, or refused `overloaded` by the server or `refused_by_broker` by the
broker (none silent), tenant-b loses nothing.
Reported (`E2E overload` line): the peak container memory of each tenant-a pod (cgroup v2
memory.peak read through kubectl exec, else the highest memory.current sampled) against the
pod's own memory limit, and tenant-b's p99.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from mlserving_bench.chartlimits import quantity_bytes
from mlserving_client.load import LoadResult, LoadSpec, TenantTarget, run_load

from e2e_harness import Release, SteadyLoad

pytestmark = pytest.mark.e2e

FLOOD_FACTOR = 4.0
#: Long enough for the backlog to outgrow a server's session queue at the broker: before the
#: broker refused a tenant's requests over its backlog (plugin `tenant_backlog`), such a flood lost
#: 120,165 of 294,773 requests there, silently.
FLOOD_SECONDS = 20.0
FLOOD_CONNECTIONS = 3
B_RATE = 10.0
_PEAK = (
    "import pathlib\n"
    "for name in ('memory.peak', 'memory.current'):\n"
    "    p = pathlib.Path('/sys/fs/cgroup') / name\n"
    "    if p.exists() and int(p.read_text()):\n"
    "        print(name, p.read_text().strip())\n"
    "        break\n"
    "else:\n"  # no cgroup v2 view inside the container: the server's (PID 1) peak resident set
    "    hwm = [l for l in open('/proc/1/status') if l.startswith('VmHWM:')][0]\n"
    "    print('VmHWM', int(hwm.split()[1]) * 1024)\n"
)


def _spec(release: Release, tenant: str, **kwargs: Any) -> LoadSpec:
    target = TenantTarget(tenant, tenant, release.passwords[tenant])
    return LoadSpec(host=release.host, port=release.port, targets=(target,), **kwargs)


def _memory_limit_bytes(pod: dict[str, Any]) -> int:

    container = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
    return quantity_bytes(container["resources"]["limits"]["memory"])


def _cgroup_memory(release: Release, pod: str) -> tuple[str, int]:
    out = release.kubectl("exec", pod, "-c", "server", "--", "/opt/venv/bin/python", "-c", _PEAK).split()
    return out[0], int(out[1])


def _restarts_and_ooms(pods: list[dict[str, Any]]) -> tuple[int, int]:
    restarts = ooms = 0
    for pod in pods:
        for status in pod["status"].get("containerStatuses", []):
            restarts += status.get("restartCount", 0)
            for state in (status.get("lastState") or {}, status.get("state") or {}):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    ooms += 1
    return restarts, ooms


class PeakSampler:
    """Highest cgroup memory per pod: memory.peak when the kernel has it, else sampled memory.current."""

    def __init__(self, release: Release, pods: list[str]) -> None:
        self.release = release
        self.pods = pods
        self.peak: dict[str, int] = dict.fromkeys(pods, 0)
        self.source = "memory.current"
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cgroup-peak", daemon=True)

    def _sample(self) -> None:
        for pod in self.pods:
            try:
                self.source, value = _cgroup_memory(self.release, pod)
            except BaseException as exc:  # noqa: BLE001 - a failed exec during the flood is one missed sample
                self.failures.append(repr(exc)[:200])
                continue
            self.peak[pod] = max(self.peak[pod], value)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()


def test_4x_flood_on_one_tenants_pod_breaks_nothing(release: Release) -> None:
    tenant = "tenant-a"
    pods = release.server_pods(tenant)
    names = [p["metadata"]["name"] for p in pods]
    limit = _memory_limit_bytes(pods[0])
    restarts_before, ooms_before = _restarts_and_ooms(pods)
    saturation = run_load(_spec(release, tenant, concurrency=64, duration=5.0, grace=20.0))
    assert saturation.throughput > 0, saturation.counters
    rate = FLOOD_FACTOR * saturation.throughput / FLOOD_CONNECTIONS
    results: list[LoadResult] = []
    lock = threading.Lock()

    def one_connection() -> None:
        result = run_load(_spec(release, tenant, rate=rate, duration=FLOOD_SECONDS, grace=120.0))
        with lock:
            results.append(result)

    with release.client("tenant-b") as b_client, PeakSampler(release, names) as peaks:
        trickle = SteadyLoad(b_client, rate=B_RATE).start()
        threads = [threading.Thread(target=one_connection, name=f"flood-{i}") for i in range(FLOOD_CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(FLOOD_SECONDS + 300)
        b = trickle.stop(grace=120.0)
    time.sleep(5)  # a container killed at the end of the flood shows up in its status by now
    after = [p for p in release.server_pods(tenant) if p["metadata"]["name"] in names]
    restarts, ooms = _restarts_and_ooms(after)
    sent = sum(r.counters.sent for r in results)
    answered = sum(r.counters.answered for r in results)
    lost = sum(r.counters.lost for r in results)
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result.counters.errors.items():
            errors[code] = errors.get(code, 0) + count
    peak = max(peaks.peak.values())
    print(
        f"\nE2E overload: saturation={saturation.throughput:.0f}/s flood={FLOOD_FACTOR:g}x "
        f"connections={FLOOD_CONNECTIONS} seconds={FLOOD_SECONDS:g} sent={sent} answered={answered} "
        f"errors={errors} lost={lost} peak_container_memory_mib={peak / 2**20:.0f} ({peaks.source}) "
        f"limit_mib={limit / 2**20:.0f} share={100 * peak / limit:.0f}% per_pod="
        f"{ {k: round(v / 2**20) for k, v in peaks.peak.items()} } restarts={restarts - restarts_before} "
        f"oom_kills={ooms - ooms_before} tenant_b={b.summary()} tenant_b_p99_ms={b.p99_ms():.0f}",
        flush=True,
    )
    assert len(results) == FLOOD_CONNECTIONS
    assert peak > 0, f"no memory sample succeeded: {peaks.failures[:3]}"
    assert peak < 0.6 * limit, f"peak {peak / 2**20:.0f} MiB >= 60 % of the pod's {limit / 2**20:.0f} MiB"
    assert ooms == ooms_before and restarts == restarts_before, (restarts, ooms)
    assert lost == 0 and set(errors) <= {"overloaded", "refused_by_broker"}, (sent, answered, errors, lost)
    assert b.lost == 0 and not b.errors, b.summary()
