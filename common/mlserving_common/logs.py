"""One JSON object per line on stderr, so log shippers need no parsing rules.

Python also writes to stderr on its own: warnings (numpy's RuntimeWarnings on overflow, say) and
tracebacks of uncaught exceptions in any thread. `configure` routes both through the JSON
formatter, so a hostile input can never put a plain-text line into the log.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """Render a record and its `extra={"fields": {...}}` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            body.update(fields)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def configure(level: str = "info") -> None:
    """Install the JSON formatter on the root logger, and send warnings and uncaught exceptions
    through it (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # `warnings.warn` -> logger "py.warnings", level warning
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("mlserving.uncaught").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else None
    logging.getLogger("mlserving.uncaught").critical(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"fields": {"thread": thread}},
    )


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a named event with structured fields."""
    logger.log(level, name, extra={"fields": fields})
