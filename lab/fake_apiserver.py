"""A stand-in for kube-apiserver: pods only, with real resourceVersion semantics.

No kube-apiserver can run on this machine, so the Kubernetes paths of flock
(the plugin's annotation GET, the reconciler's pod list + watch) are tested
against this server instead. It is faithful where flock depends on the API:

- one global, increasing ``resourceVersion``; every change stamps the pod;
- pods shaped as the API returns them: ``metadata`` (uid, resourceVersion,
  creationTimestamp, annotations, ``deletionTimestamp`` once terminating),
  ``spec`` (nodeName, containers), ``status`` (phase, the Ready condition)
  — enough for a strict decoder such as lightkube's;
- ``GET /api/v1/namespaces/{ns}/pods/{name}``;
- ``GET /api/v1/pods`` (and namespaced) with ``fieldSelector=spec.nodeName=X``,
  returning a PodList with the list's resourceVersion;
- ``?watch=true&resourceVersion=N``: ADDED / MODIFIED / DELETED events after N,
  newline-delimited JSON over a chunked response; a version older than the
  compacted history gets the ``ERROR`` event with a 410 ``Expired`` Status,
  as the real server sends it; ``allowWatchBookmarks`` gets BOOKMARK events
  when the test asks for them; ``timeoutSeconds`` ends the stream cleanly
  (the terminating chunk), as the server's watch timeout does;
- fault injection: drop every open watch mid-stream, expire every open watch
  (an ``ERROR`` 410 event, then the end of the stream — what the server
  sends when etcd compacted the history beneath an open watch), delay
  responses, answer everything with a given status (401, 503...), stop and
  start again on the same port (an apiserver restart: connection refused
  meanwhile).

What it does not do: authentication beyond checking a bearer token if one is
set, authorization (RBAC), TLS, label selectors, field selectors other than
``spec.nodeName``, other resources, writes through the API, server-side
apply, pagination (``limit``/``continue`` are ignored: one page), protobuf,
HTTP/2, ``resourceVersionMatch``/``sendInitialEvents``, bookmarks on its own
schedule (only when the test asks), and the apiserver's watch cache quirks
(e.g. a list served from the cache at an older version).
"""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeApiServer:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self._lock = threading.Condition()
        self._version = 100
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._compacted = 0  # watches from a version below this get 410
        self._generation = 0  # bumped to drop every open watch
        self._bookmarks = 0  # bumped to send a bookmark on every open watch
        self._expiries = 0  # bumped to send a 410 ERROR on every open watch
        self._open_watches = 0
        self._connections: set[socket.socket] = set()
        self.delay = 0.0
        self.forced_status: int | None = None
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- what tests do to the cluster ------------------------------------

    def put_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        ready: bool = True,
        annotations: dict[str, str] | None = None,
        uid: str | None = None,
        pod_ip: str | None = None,
    ) -> dict[str, Any]:
        """Create or replace a pod; returns the stored object."""
        with self._lock:
            existing = self._pods.get((namespace, name))
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": uid or (existing["metadata"]["uid"] if existing else str(uuid.uuid4())),
                    "creationTimestamp": (
                        existing["metadata"]["creationTimestamp"] if existing else _timestamp()
                    ),
                    "annotations": dict(annotations or {}),
                },
                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "registry.invalid/app:1"}]},
                "status": {"phase": "Running", "conditions": [_ready_condition(ready)]},
            }
            if pod_ip:
                pod["status"]["podIP"] = pod_ip
            self._record("MODIFIED" if existing else "ADDED", pod)
            return copy.deepcopy(pod)

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        with self._lock:
            pod = copy.deepcopy(self._pods[(namespace, name)])
            pod["status"]["conditions"] = [_ready_condition(ready)]
            self._record("MODIFIED", pod)

    def mark_terminating(self, namespace: str, name: str) -> None:
        with self._lock:
            pod = copy.deepcopy(self._pods[(namespace, name)])
            pod["metadata"]["deletionTimestamp"] = _timestamp()
            self._record("MODIFIED", pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            pod = copy.deepcopy(self._pods[(namespace, name)])
            self._record("DELETED", pod)

    def compact(self) -> None:
        """Forget the history: a watch resuming from an older version gets 410 Expired."""
        with self._lock:
            self._compacted = self._version + 1
            self._events.clear()

    def drop_watches(self) -> None:
        """Close every open watch connection mid-stream, as a restarting apiserver does."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    def send_bookmarks(self) -> None:
        with self._lock:
            self._bookmarks += 1
            self._lock.notify_all()

    def expire_watches(self) -> None:
        """Compact, then end every open watch with an ``ERROR`` 410 Expired event.

        This is what the apiserver sends on an open watch when etcd compacted
        the revision the watch was at; the client must re-list.
        """
        with self._lock:
            self._compacted = self._version + 1
            self._events.clear()
            self._expiries += 1
            self._lock.notify_all()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._version

    @property
    def open_watches(self) -> int:
        """Watch streams currently open (headers sent, not yet ended)."""
        with self._lock:
            return self._open_watches

    def watch_requests(self) -> list[dict[str, str]]:
        """The query of every watch request so far, oldest first."""
        return [query for path, query in _parsed(self.requests) if query.get("watch") in ("true", "1")]

    def list_requests(self) -> list[dict[str, str]]:
        """The query of every list request (collection GET without watch) so far, oldest first."""
        return [
            query
            for path, query in _parsed(self.requests)
            if path.endswith("/pods") and query.get("watch") not in ("true", "1")
        ]

    # --- serving ---------------------------------------------------------

    def start(self, listen_socket: socket.socket | None = None, port: int = 0) -> str:
        """Serve on ``listen_socket`` (e.g. made inside a lab netns) or on 127.0.0.1; returns the URL.

        ``port``: the port to bind (0: any free one); after :meth:`stop`,
        ``start(..., port=old)`` is an apiserver coming back at the same address.
        """
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self), bind_and_activate=listen_socket is None)
        if listen_socket is not None:
            server.socket.close()
            server.socket = listen_socket
            listen_socket.bind(("127.0.0.1", port))
            listen_socket.listen(64)
            server.server_address = listen_socket.getsockname()
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Go away as a killed apiserver does: refuse new connections, reset the open ones.

        Kept-alive client connections are closed too, so a client's pooled
        connection cannot reach a server that is "down".
        """
        if self._server is not None:
            self.drop_watches()
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                connections = list(self._connections)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(timeout=5)
            self._server = None

    # --- internals -------------------------------------------------------

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "DELETED":
            self._pods.pop(key, None)
        else:
            self._pods[key] = pod
        self._events.append((self._version, kind, copy.deepcopy(pod)))
        self._lock.notify_all()

    def _list(self, namespace: str | None, node: str | None) -> dict[str, Any]:
        with self._lock:
            items = [copy.deepcopy(pod) for pod in self._pods.values() if _matches(pod, namespace, node)]
            return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self._version)}, "items": items}


def _ready_condition(ready: bool) -> dict[str, str]:
    return {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _timestamp()}


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _parsed(paths: list[str]) -> list[tuple[str, dict[str, str]]]:
    parsed = []
    for path in list(paths):
        url = urlsplit(path)
        parsed.append((url.path, {key: values[-1] for key, values in parse_qs(url.query).items()}))
    return parsed


def _matches(pod: dict[str, Any], namespace: str | None, node: str | None) -> bool:
    if namespace and pod["metadata"]["namespace"] != namespace:
        return False
    return not node or pod["spec"].get("nodeName") == node


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    }


def _handler_for(api: FakeApiServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def setup(self) -> None:
            super().setup()
            with api._lock:
                api._connections.add(self.connection)

        def finish(self) -> None:
            with api._lock:
                api._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def do_GET(self) -> None:
            api.requests.append(self.path)
            if api.delay:
                time.sleep(api.delay)  # injected slowness, the point of the fault
            if api.forced_status:
                return self._json(api.forced_status, _status(api.forced_status, "Injected", "injected failure"))
            if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                return self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            url = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            parts = [part for part in url.path.split("/") if part]
            node = None
            selector = query.get("fieldSelector", "")
            if selector:
                field, _, value = selector.partition("=")
                if field != "spec.nodeName":
                    return self._json(400, _status(400, "BadRequest", f"unsupported field selector {selector}"))
                node = value
            if parts[:2] != ["api", "v1"]:
                return self._json(404, _status(404, "NotFound", "not found"))
            rest = parts[2:]
            if rest == ["pods"]:
                namespace = None
            elif len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "pods":
                namespace = rest[1]
            elif len(rest) == 4 and rest[0] == "namespaces" and rest[2] == "pods":
                with api._lock:
                    pod = api._pods.get((rest[1], rest[3]))
                    pod = copy.deepcopy(pod)
                if pod is None:
                    return self._json(404, _status(404, "NotFound", f'pods "{rest[3]}" not found'))
                return self._json(200, pod)
            else:
                return self._json(404, _status(404, "NotFound", "not found"))
            if query.get("watch") in ("true", "1"):
                return self._watch(namespace, node, query)
            return self._json(200, api._list(namespace, node))

        def _json(self, code: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _chunk(self, event: dict[str, Any]) -> None:
            payload = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        def _watch(self, namespace: str | None, node: str | None, query: dict[str, str]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))
            bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
            requested = query.get("resourceVersion", "")
            with api._lock:
                generation = api._generation
                seen_bookmarks = api._bookmarks
                seen_expiries = api._expiries
                api._open_watches += 1
                if requested in ("", "0"):
                    # "Start at most recent": synthetic ADDED for what exists now.
                    position = api._version
                    pending = [("ADDED", copy.deepcopy(pod)) for pod in api._pods.values() if _matches(pod, namespace, node)]
                else:
                    position = int(requested)
                    if position < api._compacted - 1:
                        pending = None
                    else:
                        pending = []
            try:
                if pending is None:
                    message = f"too old resource version: {requested} ({api._compacted - 1})"
                    self._chunk({"type": "ERROR", "object": _status(410, "Expired", message)})
                    return self._end()
                for kind, pod in pending:
                    self._chunk({"type": kind, "object": pod})
                while True:
                    with api._lock:
                        events = [(version, kind, pod) for version, kind, pod in api._events if version > position]
                        dropped = api._generation != generation
                        expired = api._expiries != seen_expiries
                        bookmark_due = bookmarks and api._bookmarks != seen_bookmarks
                        seen_bookmarks = api._bookmarks
                        current = api._version
                        if expired:
                            message = f"too old resource version: {position} ({api._compacted - 1})"
                        if not events and not dropped and not bookmark_due and not expired:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                return self._end()
                            api._lock.wait(timeout=min(remaining, 0.2))
                            idle = True
                        else:
                            idle = False
                    if idle:
                        if self._client_gone():
                            self.close_connection = True
                            return
                        continue
                    if dropped:
                        # Mid-stream drop: no terminating chunk, just a closed socket.
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if expired:
                        # The history beneath the watch is gone: what it missed cannot be sent.
                        self._chunk({"type": "ERROR", "object": _status(410, "Expired", message)})
                        return self._end()
                    for version, kind, pod in events:
                        position = version
                        if _matches(pod, namespace, node):
                            self._chunk({"type": kind, "object": pod})
                    if bookmark_due:
                        position = max(position, current)
                        marker = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(position)}}
                        self._chunk({"type": "BOOKMARK", "object": marker})
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True
            finally:
                with api._lock:
                    api._open_watches -= 1

        def _client_gone(self) -> bool:
            # The apiserver ends a watch whose client went away; a client
            # sends nothing on a watch connection, so readable means EOF/reset.
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def listen_socket_in_netns(netns_path: str) -> socket.socket:
    """A TCP socket that belongs to a lab namespace but is served from this process.

    pyroute2 makes it in a forked child that entered the namespace, so the
    test process itself never changes namespace.
    """
    from pyroute2 import netns as pyroute2_netns

    sock = pyroute2_netns.create_socket(netns_path, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock
