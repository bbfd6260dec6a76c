"""The one-command local demo (`make demo`): everything the platform does, on this machine.

It drives the real programs the way a user would — `mlserving-train` to generate data, train
and publish, `mlserving-server` twice on a password- and ACL-protected Mosquitto, and this
package's client to replay a series per tenant — then trains and promotes lstm v2 while the
replay runs and shows the answers switching version with nothing lost. Everything it starts
is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from mlserving_client.client import Client
from mlserving_client.replay import ReplayStep, Series, plot, read_series, replay
from mlserving_client.stats import LatencyRecorder
from mlserving_common import protocol
from mlserving_common.mosquitto import BrokerUser, LocalBroker, free_port, server_acl, tenant_acl, tenant_topics

TENANTS = {"tenant-a": "lstm", "tenant-b": "ann"}
WINDOW = 6
#: Days of hourly data: enough for a linear AR over a week of lags to fit (60 days is not).
DAYS = 120
#: The demo's data is hourly: a window of a week + 1 readings holds both weekly lags.
WEEK_WINDOW = 7 * 24 + 1
#: Tries per model before falling back to the linear AR baseline; epochs grow by EPOCH_GROWTH each.
ATTEMPTS = 2
EPOCH_GROWTH = 3
#: `mlserving-train publish --promote` exit code when the quality gate refuses.
GATE_REFUSED = 3
CHUNK = 40  # replay steps between checks of the stop flag
PLOT_STEPS = 300


@dataclass
class TenantRun:
    """What one tenant's replay saw, step by step."""

    tenant: str
    series: Series
    window: int = WINDOW
    steps: list[ReplayStep] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)

    def versions_seen(self) -> Counter[str]:
        return Counter(step.version for step in self.steps if step.version)

    def mixed_answers(self, old: str, new: str) -> int:
        """Answers from `old` after the first `new` one: the moments when one replica had swapped
        and the other not yet (each replica swaps on its own, within its registry poll interval)."""
        first_new = next((i for i, step in enumerate(self.steps) if step.version == new), len(self.steps))
        return sum(1 for step in self.steps[first_new:] if step.version == old)

    def mae_by_version(self) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for step in self.steps:
            if step.forecast is not None and step.version:
                sums.setdefault(step.version, []).append(abs(step.forecast - step.actual))
        return {version: sum(errs) / len(errs) for version, errs in sums.items()}


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_cli(args: list[str], label: str, ok: tuple[int, ...] = (0,)) -> int:
    """Run one of our CLIs, prefixing its progress lines so the demo's output stays readable;
    an exit code outside `ok` is a failure, the others are returned (3 = refused by the gate)."""
    say(f"$ {' '.join(args)}")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"    {label} | {line.rstrip()}", flush=True)
    if proc.wait() not in ok:
        raise RuntimeError(f"{args[0]} {args[1]} failed with exit code {proc.returncode}")
    return proc.returncode


def tool(name: str) -> str:
    """Our console scripts live next to this interpreter in the venv."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def try_candidate(workdir: Path, data: Path, name: str, kind: str, epochs: int, series: str, window: int) -> bool:
    """Train one candidate and `publish --promote` it: True if the quality gate let it serve."""
    package = workdir / f"pkg-{name}-{time.time_ns()}"
    run_cli(
        [
            tool("mlserving-train"),
            "train",
            "--data",
            str(data),
            "--model",
            kind,
            "--name",
            name,
            "--series",
            series,
            "--window",
            str(window),
            "--epochs",
            str(epochs),
            "--out",
            str(package),
            "--plot",
            str(workdir / f"train-{name}-forecast.png"),
        ],
        f"train {name}",
    )
    code = run_cli(
        [tool("mlserving-train"), "publish", str(package), "--registry", str(workdir / "registry"), "--promote"],
        f"publish {name}",
        ok=(0, GATE_REFUSED),
    )
    return code == 0


def train_and_publish(
    workdir: Path, data: Path, model: str, epochs: int, series: str, windows: Sequence[int], kind: str = ""
) -> tuple[str, int]:
    """Serve `model` only if it beats every baseline: train it (then longer); if it still loses, say
    so and serve the linear AR baseline package under its name instead. Returns (kind, window) served.

    `windows`: the input windows the tenant's client may use, first choice first (the linear
    fallback may need a week of lags to beat the weekly AR). `kind`: "linear" retrains the linear
    AR that already serves (a retraining keeps the serving kind). Raises if nothing passes.
    """
    for attempt in range(1, ATTEMPTS + 1 if kind != "linear" else 1):
        attempt_epochs = epochs * EPOCH_GROWTH ** (attempt - 1)
        if try_candidate(workdir, data, model, model, attempt_epochs, series, windows[0]):
            say(f"{model} ({attempt_epochs} epochs) passed the quality gate and is serving")
            return model, windows[0]
        say(f"{model} ({attempt_epochs} epochs) lost to a baseline (gate line above): not served")
    if kind != "linear":
        say(
            f"{model} does not beat every baseline on {series} after {ATTEMPTS} tries; serving the best baseline"
            f" instead: the linear AR (package kind linear) under the name {model}"
        )
    for window in windows:
        if try_candidate(workdir, data, model, "linear", 1, series, window):
            say(f"{model}: the linear AR over {window} readings passed the quality gate and is serving")
            return "linear", window
    raise RuntimeError(f"{model}: no candidate beats every baseline on {series}; nothing is served")


def write_server_config(workdir: Path, broker: LocalBroker, index: int) -> tuple[Path, int]:
    http_port = free_port()
    config = {
        "broker": {
            "host": broker.host,
            "port": broker.port,
            "username": "ml-server",
            "password_file": str(workdir / "server-password"),
        },
        "registry": {"path": str(workdir / "registry"), "poll_seconds": 1},
        "http": {"host": "127.0.0.1", "port": http_port},
        "drain_seconds": 5,
        "tenants": {tenant: {"models": {model: "current"}} for tenant, model in TENANTS.items()},
    }
    path = workdir / f"server-{index}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, http_port


@contextmanager
def server_process(workdir: Path, broker: LocalBroker, index: int) -> Iterator[subprocess.Popen[bytes]]:
    config, http_port = write_server_config(workdir, broker, index)
    log = (workdir / f"server-{index}.log").open("wb")
    proc = subprocess.Popen([tool("mlserving-server"), "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {index} exited; see {workdir / f'server-{index}.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {index} not ready after 60 s; see {workdir / f'server-{index}.log'}")
            time.sleep(0.2)
        say(f"server {index} ready (pid {proc.pid}, http://127.0.0.1:{http_port}/metrics, log {log.name})")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def replay_until(client: Client, run: TenantRun, rate: float, stop: threading.Event, print_every: int) -> None:
    """Replay the series in chunks (wrapping around) until `stop` is set."""
    values, times = run.series.values, run.series.times
    start = 0
    while not stop.is_set():
        end = min(start + CHUNK + run.window, len(values))
        chunk = Series(run.series.label, times[start:end], values[start:end])

        def on_step(step: ReplayStep) -> None:
            step = replace(step, index=len(run.steps))  # chunks restart at 0: number steps globally
            run.steps.append(step)
            if step.error:
                run.errors[step.error] += 1
            if len(run.steps) % print_every == 0:
                forecast = f"{step.forecast:9.2f}" if step.forecast is not None else f"{step.error:>9}"
                print(
                    f"  {run.tenant:8} {step.time}  actual {step.actual:9.2f}  forecast {forecast}"
                    f"  running MAE {step.mae or 0:7.2f}  {step.version}",
                    flush=True,
                )

        summary = replay(client, chunk, run.window, rate=rate, on_step=on_step, timeout=2.0)
        run.latency.extend(summary.latency)
        start = 0 if end >= len(values) else end - run.window


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlserving_client.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed after)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per tenant (default 20)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of v1 (default 8)")
    parser.add_argument("--v2-epochs", type=int, default=15, help="training epochs of lstm v2 (default 15)")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of v1 traffic before retraining")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of traffic after v2 is promoted")
    parser.add_argument("--print-every", type=int, default=25, help="print every Nth forecast per tenant")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-serving-demo-")))
        say(f"working in {workdir}")

        data = workdir / "bts.csv"
        run_cli(
            [
                tool("mlserving-train"),
                "generate",
                "--stations",
                "2",
                "--days",
                str(DAYS),
                "--seed",
                "7",
                "--out",
                str(data),
            ],
            "generate",
        )
        stations = {tenant: read_series(data, f"BTS{i + 1:03d}") for i, tenant in enumerate(TENANTS)}
        served = {
            tenant: train_and_publish(workdir, data, model, args.epochs, stations[tenant].label, (WINDOW, WEEK_WINDOW))
            for tenant, model in TENANTS.items()
        }

        passwords = {name: secrets.token_urlsafe(12) for name in [*TENANTS, "ml-server"]}
        users = [BrokerUser(t, passwords[t], tenant_acl(*tenant_topics(t))) for t in TENANTS]
        users.append(
            BrokerUser(
                "ml-server", passwords["ml-server"], server_acl([tenant_topics(t) for t in TENANTS]), service=True
            )
        )
        broker = stack.enter_context(LocalBroker(users, workdir=workdir / "broker"))
        (workdir / "server-password").write_text(passwords["ml-server"])
        say(
            f"mosquitto on {broker.host}:{broker.port}: passwords required, per-tenant ACLs "
            f"(tenant-a may only publish {protocol.request_topic('tenant-a')})"
        )
        for index in (1, 2):
            stack.enter_context(server_process(workdir, broker, index))

        runs = {tenant: TenantRun(tenant, stations[tenant], served[tenant][1]) for tenant in TENANTS}
        stop = threading.Event()
        v2_refused = ""
        threads = []
        for tenant in TENANTS:
            client = stack.enter_context(
                Client(broker.host, broker.port, tenant, passwords[tenant], tenant, timeout=2.0, attempts=5)
            )
            thread = threading.Thread(
                target=replay_until, args=(client, runs[tenant], args.rate, stop, args.print_every), daemon=True
            )
            thread.start()
            threads.append(thread)
        say(f"replaying both tenants at {args.rate:g} req/s each through 2 servers (shared subscription)")
        try:
            time.sleep(args.before)
            say("retraining lstm as v2 while traffic flows")
            # Same window as v1: tenant-a's client keeps sending what it sends.
            try:
                train_and_publish(
                    workdir,
                    data,
                    "lstm",
                    args.v2_epochs,
                    stations["tenant-a"].label,
                    (served["tenant-a"][1],),
                    kind=served["tenant-a"][0],
                )
                say("lstm v2 promoted: servers load, verify and warm it up off the hot path, then swap")
            except RuntimeError as exc:
                v2_refused = str(exc)
                say(f"no lstm v2: {exc}; v1 keeps serving (the gate refused every candidate)")
            time.sleep(args.after)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

        lost = 0
        print("\n=== summary ===")
        for run in runs.values():
            latency = run.latency.summary()
            run_lost = run.errors.get("timeout", 0)
            lost += run_lost
            mae = ", ".join(f"{v} {m:.2f}" for v, m in run.mae_by_version().items())
            print(
                f"{run.tenant}: answered {len(run.steps) - sum(run.errors.values())}/{len(run.steps)}, "
                f"lost {run_lost}, errors {dict(run.errors) or 0}, p50 {latency.p50_ms:.1f} ms, "
                f"p99 {latency.p99_ms:.1f} ms, answers by version {dict(run.versions_seen())}, MAE {mae}"
            )
            out = workdir / f"demo-{run.tenant}-forecast.png"
            plot(run.steps[-PLOT_STEPS:], f"{run.tenant} ({run.series.label}), last {PLOT_STEPS} requests", out)
            print(f"  plot: {out}")
        if args.workdir is None:
            keep = Path.cwd() / "out"
            keep.mkdir(exist_ok=True)
            for png in workdir.glob("*.png"):
                shutil.copy(png, keep / png.name)
            print(f"plots copied to {keep}/")
        switched = "lstm:v2" in runs["tenant-a"].versions_seen()
        print(
            f"tenant-a: {runs['tenant-a'].mixed_answers('lstm:v1', 'lstm:v2')} v1 answer(s) after the first v2 one"
            " (the two replicas swap independently, each within its 1 s registry poll)"
        )
        ok = lost == 0 and (switched or bool(v2_refused))
        refused = f"; v2 refused by the gate: {v2_refused}" if v2_refused else ""
        print(f"result: {'OK' if ok else 'FAILED'} (lost {lost}, tenant-a switched to v2: {switched}{refused})")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
