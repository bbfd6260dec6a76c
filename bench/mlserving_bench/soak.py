"""`python -m mlserving_bench.soak` / `make soak`: a long run at half of saturation, with promotions.

Not part of CI (it takes half an hour by default). One server process serves two tenants (lstm
and ann) from a private copy of the bench registry, behind a private Mosquitto on loopback. The
soak measures saturation (or takes --rate), then keeps both tenants at `--load` (50 %) of it for
`--minutes`, re-publishes and promotes both models every `--promote-every` minutes (the server
hot-swaps them), and prints, once per `--report-seconds`: requests sent, answered, errors and
lost so far, p99 of the period, the versions that answered, and the server's RSS from /proc.

The verdict at the end: nothing lost, no error, and memory flat — the least-squares slope of
RSS over the second half of the run, extrapolated over that half, stays under FLAT_MB (or
FLAT_FRACTION of the RSS, whichever is larger). Exit status 0 when all three hold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserving_bench import models, procs
from mlserving_client.load import LoadResult, LoadSpec, TenantTarget, run_load, synthetic_windows
from mlserving_common.mosquitto import BrokerUser, LocalBroker, free_port, server_acl, tenant_acl, tenant_topics
from mlserving_common.registry import FilesystemRegistry
from mlserving_server.config import PASSWORD_ENV

TENANTS = {"tenant-a": "lstm", "tenant-b": "ann"}
SERVER_USER = "server"
#: Memory counts as flat when RSS grows less than this over the second half (MB) ...
FLAT_MB = 4.0
#: ... or less than this fraction of the RSS, whichever is larger.
FLAT_FRACTION = 0.03


@dataclass
class Totals:
    """Cumulative counters over all load periods."""

    sent: int = 0
    answered: int = 0
    lost: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)

    def add(self, result: LoadResult) -> None:
        c = result.counters
        self.sent += c.sent
        self.answered += c.answered
        self.lost += c.lost
        self.errors.update(c.errors)
        self.versions.update(result.versions)


def rss_verdict(samples: list[tuple[float, float]]) -> tuple[float, float, bool]:
    """(slope in MB/hour, growth in MB over the second half, flat?) of (seconds, MB) samples."""
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    if len(half) < 3:
        return 0.0, 0.0, False
    xs, ys = [s[0] for s in half], [s[1] for s in half]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator if denominator else 0.0
    growth = slope * (xs[-1] - xs[0])
    return slope * 3600.0, growth, growth <= max(FLAT_MB, FLAT_FRACTION * mean_y)


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a background thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = procs.rss_mb(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self._start, rss))
            self._stop.wait(self.interval)

    def latest(self) -> float | None:
        return self.samples[-1][1] if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Soak:
    """Broker, registry copy and server; the load, the promotions and the report."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        source = models.ensure_registry(args.registry, emit=lambda line: print(line, flush=True))
        self.registry_root = workdir / "registry"
        shutil.copytree(source, self.registry_root, symlinks=True)
        self.registry = FilesystemRegistry(self.registry_root)
        windows = {models.package_window(self.registry_root, m) for m in TENANTS.values()}
        if len(windows) != 1:
            raise SystemExit(f"soak: the models need different windows {sorted(windows)}; one window is needed")
        self.window = windows.pop()
        topics = {tenant: tenant_topics(tenant) for tenant in TENANTS}
        self.users = {t: BrokerUser(t, uuid.uuid4().hex, tenant_acl(*topics[t])) for t in TENANTS}
        self.users[SERVER_USER] = BrokerUser(SERVER_USER, uuid.uuid4().hex, server_acl(topics.values()), service=True)
        self.broker = LocalBroker(self.users.values(), workdir=workdir / "mosquitto")
        self.server: procs.Child | None = None
        self.promotions = 0

    # -- processes -------------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start()
        http_port = free_port()
        config = {
            "broker": {"host": self.broker.host, "port": self.broker.port, "username": SERVER_USER},
            "registry": {"path": str(self.registry_root), "poll_seconds": 1},
            "http": {"host": "127.0.0.1", "port": http_port},
            "drain_seconds": 10,
            "tenants": {tenant: {"models": {model: "current"}} for tenant, model in TENANTS.items()},
        }
        env = {**os.environ, PASSWORD_ENV: self.users[SERVER_USER].password}
        self.server = procs.start_server("server", config, self.workdir, env)
        self.server.wait_ready(120)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=30)
        self.broker.close()

    # -- load --------------------------------------------------------------------------------------
    def spec(self, **kwargs: Any) -> LoadSpec:
        targets = tuple(TenantTarget(t, t, self.users[t].password) for t in TENANTS)
        return LoadSpec(
            host=self.broker.host,
            port=self.broker.port,
            targets=targets,
            window=self.window,
            windows=synthetic_windows(self.window),
            **kwargs,
        )

    def saturation(self) -> float:
        result = run_load(self.spec(concurrency=64, duration=self.args.measure_seconds, grace=10.0))
        return result.throughput

    def promote_all(self) -> list[str]:
        """Re-publish the serving version of each model as a new version and promote it."""
        done = []
        for model in TENANTS.values():
            version = self.registry.publish(self.registry.fetch(model), promote=True)
            done.append(f"{model}:{version}")
        self.promotions += 1
        return done

    def run(self) -> int:
        args = self.args
        assert self.server is not None
        rate = args.rate
        if rate is None:
            print(
                f"soak: measuring saturation ({args.measure_seconds:g} s closed loop, 64 outstanding) ...", flush=True
            )
            saturation = self.saturation()
            rate = args.load * saturation
            print(
                f"soak: saturation {saturation:,.0f} req/s -> {rate:,.0f} req/s ({args.load:.0%}) over 2 tenants",
                flush=True,
            )
        total_seconds = args.minutes * 60.0
        sampler = RssSampler(self.server.pid, args.sample_seconds).start()
        totals = Totals()
        started = time.monotonic()
        next_promotion = args.promote_every * 60.0
        print(
            f"soak: {args.minutes:g} min at {rate:,.0f} req/s, promotion every {args.promote_every:g} min, "
            f"server pid {self.server.pid}, workdir {self.workdir}",
            flush=True,
        )
        print(
            f"{'min':>6} {'sent':>9} {'answered':>9} {'errors':>7} {'lost':>5} {'p99 ms':>8} {'RSS MB':>7}"
            "  versions / events",
            flush=True,
        )
        try:
            while (elapsed := time.monotonic() - started) < total_seconds:
                events = []
                if elapsed >= next_promotion:
                    events.append("promoted " + ", ".join(self.promote_all()))
                    next_promotion += args.promote_every * 60.0
                period = min(args.report_seconds, total_seconds - elapsed, max(1.0, next_promotion - elapsed))
                result = run_load(self.spec(rate=rate, duration=max(1.0, period), grace=args.grace))
                totals.add(result)
                self.server.check_alive()
                p99 = f"{result.latency.p99_ms:8.1f}" if result.latency.count else f"{'-':>8}"
                versions = ", ".join(f"{k}={v}" for k, v in sorted(result.versions.items()))
                rss = sampler.latest()
                print(
                    f"{(time.monotonic() - started) / 60:6.1f} {totals.sent:9d} {totals.answered:9d} "
                    f"{sum(totals.errors.values()):7d} {totals.lost:5d} {p99} {rss or 0:7.1f}  {versions}"
                    + ("; " + "; ".join(events) if events else ""),
                    flush=True,
                )
        except KeyboardInterrupt:
            print("soak: interrupted; verdict on what ran", flush=True)
        finally:
            sampler.stop()
        return self.verdict(totals, sampler.samples, time.monotonic() - started)

    def verdict(self, totals: Totals, samples: list[tuple[float, float]], seconds: float) -> int:
        slope, growth, flat = rss_verdict(samples)
        rss = [mb for _, mb in samples]
        errors = sum(totals.errors.values())
        print(
            f"\nsoak: {seconds / 60:.1f} min, {self.promotions} promotion(s) of both models; "
            f"sent {totals.sent} answered {totals.answered} errors {errors} {dict(totals.errors) or ''} "
            f"lost {totals.lost}"
        )
        print("soak: versions that answered: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.versions.items())))
        if rss:
            print(
                f"soak: server RSS MB first {rss[0]:.1f}, min {min(rss):.1f}, max {max(rss):.1f}, last {rss[-1]:.1f} "
                f"({len(rss)} samples); second half: slope {slope:+.2f} MB/h, growth {growth:+.2f} MB -> "
                f"{'FLAT' if flat else 'GROWING'} (limit {max(FLAT_MB, FLAT_FRACTION * statistics.fmean(rss)):.1f} MB)"
            )
        ok = totals.lost == 0 and errors == 0 and flat
        print(
            f"soak: verdict {'PASS' if ok else 'FAIL'} (lost 0: {totals.lost == 0}, no errors: {errors == 0}, "
            f"memory flat: {flat})",
            flush=True,
        )
        return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlserving_bench.soak",
        description=(
            "Soak test: one server, two tenants (lstm, ann), private broker on loopback; load at a fraction "
            "of measured saturation for a long time with a model promotion every few minutes. Prints "
            "sent/answered/errors/lost and the server's RSS over time, then a verdict on lost, errors and "
            "memory flatness (RSS slope over the second half). Exit 0 on PASS. See docs/security.md."
        ),
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument(
        "--promote-every",
        type=float,
        default=5.0,
        metavar="MIN",
        help="re-publish and promote both models every MIN minutes (default 5)",
    )
    parser.add_argument("--load", type=float, default=0.5, help="fraction of measured saturation (default 0.5)")
    parser.add_argument("--rate", type=float, help="requests/s over both tenants instead of measuring saturation")
    parser.add_argument("--measure-seconds", type=float, default=10.0, help="length of the saturation measurement")
    parser.add_argument("--report-seconds", type=float, default=60.0, help="one report line per this many seconds")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds an answer may take before it counts lost")
    parser.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="registry with current lstm and ann to copy (default: the bench's cached demo models)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs (path printed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.promote_every <= 0 or not 0 < args.load <= 1.5:
        print("soak: --minutes and --promote-every must be > 0, --load within (0, 1.5]", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mlserving-soak-"))
    soak = Soak(args, workdir)
    try:
        soak.start()
        return soak.run()
    finally:
        soak.stop()
        if args.keep_workdir:
            print(f"soak: workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
