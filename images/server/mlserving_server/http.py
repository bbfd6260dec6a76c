"""The one HTTP port: /healthz (process alive), /readyz (serving), /metrics (Prometheus)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("mlserving.http")
ReadinessProbe = Callable[[], tuple[bool, dict[str, Any]]]


class HttpServer:
    """A stdlib threading HTTP server in a daemon thread; probes and scrapes never touch the hot path."""

    def __init__(self, host: str, port: int, readiness: ReadinessProbe, metrics: Callable[[], bytes]) -> None:
        probe, render = readiness, metrics

        class Handler(BaseHTTPRequestHandler):
            server_version = "mlserving"
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._reply(200, b'{"status":"ok"}\n', "application/json")
                elif path == "/readyz":
                    ready, detail = probe()
                    body = orjson.dumps({"ready": ready, **detail}) + b"\n"
                    self._reply(200 if ready else 503, body, "application/json")
                elif path == "/metrics":
                    self._reply(200, render(), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b'{"error":"not found"}\n', "application/json")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every second: not worth a log line
                log.debug(format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
