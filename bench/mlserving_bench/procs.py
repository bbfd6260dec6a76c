"""Child processes of a run (servers, reference responders), waiting for them, and what /proc says about them.

The bench and the test suite (tests/conftest.py) start servers the same way, through `start_server`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, key: str) -> float | None:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...) in MiB, None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    """Resident set size (VmRSS) in MiB, None if the process is gone."""
    return status_mb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; fields follow ')'
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def find_pid(cmdline_part: str) -> int | None:
    """First process whose command line contains `cmdline_part` (e.g. a private config path)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline_part in cmdline:
            return int(entry.name)
    return None


@dataclass
class Child:
    """One started process, its log file and, for a server, its HTTP port and start-to-ready time."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    http_port: int | None = None
    config_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    # -- a server's HTTP endpoints --------------------------------------------------------------
    def url(self, path: str) -> str:
        assert self.http_port is not None
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """HTTP status and body of GET path (an error status is an answer too)."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self, path: str) -> int | None:
        """HTTP status of GET path, or None while nothing listens."""
        try:
            return self.get(path, timeout=1.0)[0]
        except OSError:
            return None

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def is_ready(self) -> bool:
        return self.status("/readyz") == 200

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll /readyz until 200; the seconds from process start to the first ready answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.is_ready():
                if self.ready_seconds is None:
                    self.ready_seconds = time.monotonic() - self.started
                return self.ready_seconds
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def wait_file_ready(self, path: Path, timeout: float) -> float:
        """Wait for a responder to create its ready file (it does so once subscribed)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if path.exists():
                self.ready_seconds = time.monotonic() - self.started
                return self.ready_seconds
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    # -- stopping -------------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL if it is not gone within `timeout`."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    """Start a process with stdout/stderr into `log_path`."""
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Child(name, proc, log_path, started=started)


def start_server(
    name: str, config: dict[str, Any], workdir: Path, env: dict[str, str], command: list[str] | None = None
) -> Child:
    """`python -m mlserving_server --config <workdir>/<name>.yaml` as deployed (or `command` instead of
    `python -m mlserving_server`), logging to <name>.log. Returns at once: the caller keeps the child
    (to stop it whatever happens) before it calls `wait_ready`."""
    config_path = Path(workdir) / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [*(command or [sys.executable, "-m", "mlserving_server"]), "--config", str(config_path)]
    child = spawn(name, argv, env, Path(workdir) / f"{name}.log")
    child.http_port = int(config["http"]["port"])
    child.config_path = config_path
    return child


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; return its value, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


class RssPeak:
    """Highest VmRSS of a process between start() and stop(), sampled every `interval` s.

    VmHWM is the peak over the whole life of the process; this is the peak of one step.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)

    def start(self) -> RssPeak:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(5)
        return self.peak_mb

    def _run(self) -> None:
        while True:
            rss = rss_mb(self.pid)
            if rss is not None and (self.peak_mb is None or rss > self.peak_mb):
                self.peak_mb = rss
            if self._stop.wait(self.interval):
                return


class CpuMeter:
    """CPU used by some processes between start() and stop(): seconds, and % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0
        self.percent: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            before, after = self._start.get(name), cpu_seconds(pid)
            if before is not None and after is not None and elapsed > 0:
                self.seconds[name] = after - before
                self.percent[name] = round(100.0 * (after - before) / elapsed, 1)
        return self.percent
