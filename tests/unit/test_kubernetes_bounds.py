"""The annotation source reads bounded input only (issue 11, defects 4 and 9).

The real adapter (``kubernetes.ApiPodAnnotations``) and the dispatcher's
``run`` with every real adapter, against the stand-in API server on
127.0.0.1 (no namespace, no root), and a raw socket server for answers no
real API server sends. The verbs' side of the annotation source, with a
fake in its place: tests/unit/test_plugin_seams.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time

import pytest

from cni_plugin.anycast import MAX_ANNOTATION_BYTES
from cni_plugin.dispatch import PodAnnotationsOnFirstUse, run
from cni_plugin.kubernetes import MAX_POD_BYTES, ApiPodAnnotations, load_kubeconfig
from lab.fake_apiserver import FakeApiServer
from netconf.config import parse_network_config
from netconf.errors import InvalidConfig, KubernetesRefused, KubernetesUnreachable

ANNOTATION = "flock.fritzlab.net/anycast"
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 0}, {"address": "fd00:244::5/64", "interface": 0}],
}


def write_kubeconfig(directory, server: str, user: dict | None = None) -> str:
    path = os.path.join(str(directory), "kubeconfig")
    with open(path, "w") as handle:
        json.dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user or {"token": "t0ken"}}],
            },
            handle,
        )
    return path


def add(tmp_path, kubeconfig: str) -> tuple[int, dict]:
    netns = tmp_path / "netns"
    netns.write_text("")
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=dns;K8S_POD_NAME=resolver-0",
    }
    document = {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {
            "pools": ["192.0.2.0/24", "2001:db8:a::/64"],
            "stateDir": str(tmp_path / "state"),
            "kubeconfig": kubeconfig,
            "apiTimeout": 5,
        },
        "prevResult": PREV,
    }
    out = io.StringIO()
    code = run(environ, io.BytesIO(json.dumps(document).encode()), out)
    assert out.getvalue().count("\n") == 1, out.getvalue()[:300]
    return code, json.loads(out.getvalue())


@pytest.fixture
def api():
    server = FakeApiServer(token="t0ken")
    url = server.start()
    yield server, url
    server.stop()


@pytest.mark.parametrize(
    "value, mentioned",
    [
        ("192.0.2.53," + " " * MAX_ANNOTATION_BYTES, f"longer than {MAX_ANNOTATION_BYTES} bytes"),
        ("2001:db8:a::53," * 100_000, f"longer than {MAX_ANNOTATION_BYTES} bytes"),
        (",".join(f"2001:db8:a::{index + 1:x}" for index in range(65)), "more than 64"),
    ],
    ids=["padded", "100,000 addresses", "65 addresses"],
)
def test_oversized_annotation_is_refused_with_108(tmp_path, api, value, mentioned):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: value})
    started = time.monotonic()
    code, error = add(tmp_path, write_kubeconfig(tmp_path, url))
    assert code != 0 and error["code"] == 108, error
    assert mentioned in error["msg"], error
    assert time.monotonic() - started < 5


def test_annotation_of_64_addresses_gets_past_the_limits(tmp_path, api):
    server, url = api
    value = ", ".join(f"2001:db8:a::{index + 1:x}" for index in range(64))
    server.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: value})
    code, error = add(tmp_path, write_kubeconfig(tmp_path, url))
    # Refused later, at the fake netns (a regular file), never for its size.
    assert error["code"] not in (100, 101, 102, 108), error


def test_pod_larger_than_the_bound_is_refused(tmp_path, api):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: "192.0.2.53", "bulk": "x" * MAX_POD_BYTES})
    code, error = add(tmp_path, write_kubeconfig(tmp_path, url))
    assert error["code"] == 108 and str(MAX_POD_BYTES) in error["msg"], error


class RawServer:
    """Answers every connection with ``head`` and then ``body_bytes`` of filler, then closes."""

    def __init__(self, head: bytes, body_bytes: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.head = head
        self.body_bytes = body_bytes
        self.sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.listener.getsockname()[1]

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)
            try:
                connection.sendall(self.head)
                chunk = b"[" * 65536
                while self.sent < self.body_bytes:
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the client stopped reading: the point

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    "head, body_bytes",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n", 64 << 20),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n", 0),
    ],
    ids=["endless body without length", "huge Content-Length"],
)
def test_api_answer_is_read_only_up_to_the_bound(tmp_path, head, body_bytes):
    server = RawServer(head, body_bytes)
    try:
        code, error = add(tmp_path, write_kubeconfig(tmp_path, server.url))
    finally:
        server.close()
    assert error["code"] == 108, error
    assert server.sent <= MAX_POD_BYTES + (8 << 20)  # socket buffers, not the 64 MiB on offer


def test_deeply_nested_api_answer_is_unreadable_not_999(tmp_path):
    body = b"[" * 200_000
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body, 0)
    try:
        code, error = add(tmp_path, write_kubeconfig(tmp_path, server.url))
    finally:
        server.close()
    assert error["code"] == 11 and "unreadable pod" in error["msg"], error


def test_kubeconfig_larger_than_the_bound_is_refused(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(InvalidConfig, match="cannot read kubeconfig"):
        load_kubeconfig(str(path))


def test_deeply_nested_kubeconfig_is_a_config_error(tmp_path):
    for content in (b"[" * 200_000 + b"]" * 200_000, b"a: " + b"[" * 100_000 + b"]" * 100_000):  # JSON, then YAML
        path = tmp_path / "kubeconfig"
        path.write_bytes(content)
        with pytest.raises(InvalidConfig):
            load_kubeconfig(str(path))


def test_kubeconfig_through_a_symlink_is_followed(tmp_path, api):
    """Kubernetes mounts secrets through symlinks (..data/): following them is required."""
    server, url = api
    real = write_kubeconfig(tmp_path, url)
    link = tmp_path / "link"
    os.symlink(real, link)
    assert load_kubeconfig(str(link)).server == url


# --- the adapter itself ------------------------------------------------------------------


def test_api_adapter_reads_the_annotation_value_as_is(tmp_path, api):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: " 192.0.2.53, bogus "})
    server.put_pod("web", "frontend", "node-a")
    adapter = ApiPodAnnotations(write_kubeconfig(tmp_path, url), ANNOTATION, 5)
    assert adapter.anycast_annotation("dns", "resolver-0") == " 192.0.2.53, bogus "  # judged by the verbs, not here
    assert adapter.anycast_annotation("web", "frontend") is None
    with pytest.raises(KubernetesUnreachable, match="HTTP 404"):
        adapter.anycast_annotation("dns", "nonexistent")
    assert [path.split("?")[0] for path in server.requests] == [
        "/api/v1/namespaces/dns/pods/resolver-0",
        "/api/v1/namespaces/web/pods/frontend",
        "/api/v1/namespaces/dns/pods/nonexistent",
    ]


def test_api_adapter_translates_a_refusal(tmp_path, api):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: "192.0.2.53"})
    adapter = ApiPodAnnotations(write_kubeconfig(tmp_path, url, user={"token": "wrong"}), ANNOTATION, 5)
    with pytest.raises(KubernetesRefused):
        adapter.anycast_annotation("dns", "resolver-0")


def test_dispatchers_adapter_reads_through_the_config_settings(tmp_path, api):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={"example.com/vip": "192.0.2.9"})
    document = {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {
            "pools": ["192.0.2.0/24"],
            "kubeconfig": write_kubeconfig(tmp_path, url),
            "annotation": "example.com/vip",
            "apiTimeout": 5,
        },
    }
    adapter = PodAnnotationsOnFirstUse(parse_network_config(document).flock)
    assert adapter.anycast_annotation("dns", "resolver-0") == "192.0.2.9"
