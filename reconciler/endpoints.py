"""HTTP endpoints of the daemon: ``/metrics``, ``/healthz``, ``/readyz``.

May: bind one TCP listener and serve it from a background thread.
May not: change anything — handlers only read the metrics registry and the
health callbacks they are given.

- ``/healthz``: 200 while the process is alive and the loop is ticking
  (a pass stuck for long makes it 503, so a supervisor restarts us).
- ``/readyz``: 200 when the state directory was readable, the kernel
  reachable and BIRD's last apply succeeded; 503 with the problems
  otherwise. Unreadable single records and refused addresses are listed
  under ``warnings`` (with counts) and keep it 200: they concern one
  attachment each, while every other pod is served.
Both answer a small JSON document.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, dict[str, Any]]]


class ListenError(ValueError):
    """``http.listen`` is not ``host:port``."""


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9472``, ``[::1]:9472`` or ``:9472`` (all IPv4 addresses) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"http.listen {text!r} must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    # An IPv6 listen address needs an AF_INET6 socket; the class attribute is
    # what socketserver reads when it creates the socket.
    address_family = socket.AF_INET6


class HttpEndpoints:
    def __init__(self, listen: str, registry: CollectorRegistry, healthz: Check, readyz: Check) -> None:
        self.host, self.port = parse_listen(listen)
        self.registry = registry
        self.healthz = healthz
        self.readyz = readyz
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when ``:0`` was asked for)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve; raises OSError when the address is unusable."""
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(endpoints.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    check = endpoints.healthz if path == "/healthz" else endpoints.readyz
                    try:
                        ok, detail = check()
                    except Exception as exc:  # noqa: BLE001 - a broken check is a failed check
                        ok, detail = False, {"error": repr(exc)}
                    body = json.dumps({"ok": ok, **detail}, default=str, sort_keys=True).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the daemon's log

        server_class: type[_Server] = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="flock-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
