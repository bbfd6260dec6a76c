"""Load a new model version in a throw-away child process first, so that a package which crashes
LiteRT costs a refusal instead of the serving process.

Why: fuzzing the load path (tests/unit/test_fuzz_package.py) found corrupted model.tflite files
that make LiteRT segfault while building the interpreter. The sha256 in metadata.json does not
stop them when the bytes were damaged before hashing, or published by someone who recomputed it,
and every replica follows `current`: without this check one bad promotion would kill them all.

The child runs exactly the constructor the server then runs (checks, LiteRT load, a warm-up
inference per batch bucket) and exits. Its data segment is capped (RLIMIT_DATA): another damaged
file made LiteRT allocate 23 GB and brought the kernel's OOM killer; capped, the allocation fails
and the package is refused. While this process has no other thread (the app's first
refresh, before MQTT, HTTP and the worker start) the child is a fork: a few milliseconds.
Afterwards (hot swaps, with threads running, where fork is unsafe) it is a fresh interpreter,
`python -m mlserving_server.sandbox PACKAGE MAX_BATCH`: a second or two in the background poller
while the previous version keeps serving.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlserving_common.package import MODEL_FILE, PackageError

#: Generous: a timeout refuses the version for good, so it must never be the machine's fault.
PROBE_TIMEOUT_S = 300.0
_OK, _REFUSED, _FAILED = 0, 3, 4
_MAX_MESSAGE = 4096  # fits a pipe buffer, so the child never blocks writing it
#: Memory a probe may allocate (RLIMIT_DATA); models here are kilobytes to a few hundred MB.
PROBE_MEMORY_BYTES = 4 << 30


def probe(package_dir: Path, max_batch: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Return if the package loads and warms up in a child process; else raise PackageError saying why."""
    package_dir = Path(package_dir)
    if threading.active_count() == 1 and hasattr(os, "fork"):
        code, message = _forked(package_dir, max_batch, timeout)
    else:
        code, message = _spawned(package_dir, max_batch, timeout)
    if code == _OK:
        return
    if code == _REFUSED:
        raise PackageError(message or f"{package_dir}: refused")
    if code is None:
        raise PackageError(f"{package_dir}: loading it took more than {timeout:g} s")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        raise PackageError(f"{package_dir / MODEL_FILE}: LiteRT crashed loading it ({name})")
    raise PackageError(f"{package_dir}: the loader failed (exit {code}){': ' + message if message else ''}")


def check(package_dir: Path, max_batch: int, memory_bytes: int = PROBE_MEMORY_BYTES) -> tuple[int, str]:
    """What the child does: build the runtime the server would build; (exit code, reason)."""
    from mlserving_server.runtime import ModelRuntime  # LiteRT: not needed by the parent's caller

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY or soft > memory_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, hard))
    try:
        ModelRuntime(package_dir, max_batch)
    except PackageError as exc:
        return _REFUSED, str(exc)
    except MemoryError:
        return _REFUSED, f"{package_dir / MODEL_FILE}: loading it needs more than {memory_bytes >> 20} MB"
    except Exception as exc:  # noqa: BLE001 - anything else LiteRT or numpy throw at a broken file is a verdict
        return _FAILED, f"{type(exc).__name__}: {exc}"
    return _OK, ""


def _forked(package_dir: Path, max_batch: int, timeout: float) -> tuple[int | None, str]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns, never runs the parent's atexit handlers or flushes its buffers
        code = _FAILED
        try:
            os.close(read_fd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)  # LiteRT's plain-text INFO lines must not reach our JSON log
            faulthandler.disable()  # a crash is the expected verdict here, not a traceback to dump
            code, message = check(package_dir, max_batch)
            os.write(write_fd, message.encode(errors="replace")[:_MAX_MESSAGE])
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        verdict = _wait(pid, timeout)
        message = os.read(read_fd, _MAX_MESSAGE).decode(errors="replace") if verdict is not None else ""
    finally:
        os.close(read_fd)
    return verdict, message


def _wait(pid: int, timeout: float) -> int | None:
    """Exit code (negative: killed by that signal), or None after killing a child that overran."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _spawned(package_dir: Path, max_batch: int, timeout: float) -> tuple[int | None, str]:
    command = [sys.executable, "-m", "mlserving_server.sandbox", str(package_dir), str(max_batch)]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlserving_server.sandbox",
        description="Load a model package as the server would (checks, LiteRT, warm-up) and exit: "
        "0 loads, 3 refused (reason on stdout), 4 failed otherwise; a signal means LiteRT crashed.",
    )
    parser.add_argument("package", type=Path, help="package directory (model.tflite + metadata.json)")
    parser.add_argument("max_batch", type=int, help="largest batch bucket, as batching.max_batch")
    args = parser.parse_args(argv)
    code, message = check(args.package, args.max_batch)
    print(message, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
