"""Child processes of a run (servers, reference responders) and what /proc says about them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
import threading
from pathlib import Path

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
    """One started process, its log file and, once known, its start-to-ready time."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    http_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_http_ready(self, timeout: float) -> float:
        """Poll /readyz until 200; the seconds from process start to that answer."""
        assert self.http_port is not None
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        self.ready_seconds = time.monotonic() - self.started
                        return self.ready_seconds
            except (urllib.error.URLError, OSError):
                pass
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

    def metrics_text(self) -> str:
        assert self.http_port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5.0) as response:
            return response.read().decode()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
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
