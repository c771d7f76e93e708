"""The annotation adapter is imported on its first use only (start-up budget, docs/frozen-binary.md).

The dispatcher puts ``PodAnnotationsOnFirstUse`` in every VerbContext; only
an ADD that reaches the annotation source may import ``cni_plugin.kubernetes``
and the HTTP client. Exec'd as a runtime execs the plugin, with
``-X importtime`` (tests/unit/test_startup_imports.py); no root: the
ADDs below never reach the kernel.
"""

from __future__ import annotations

import json

import pytest

from lab.fake_apiserver import FakeApiServer
from tests.unit.test_startup_imports import imported_modules, loaded

API_CLIENT = ("cni_plugin.kubernetes", "http.client", "ssl", "yaml")
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=dns;K8S_POD_NAME=resolver-0"


@pytest.fixture
def api():
    server = FakeApiServer(token="t0ken")
    url = server.start()
    yield server, url
    server.stop()


def setup(tmp_path, url: str, cni_args: str) -> tuple[dict[str, str], bytes]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
            }
        )
    )
    env = {
        "CNI_CONTAINERID": "startup1",
        "CNI_NETNS": str(tmp_path / "no-such-netns"),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": cni_args,
    }
    config = {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24"], "stateDir": str(tmp_path / "state"), "kubeconfig": str(kubeconfig), "apiTimeout": 5},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
            "ips": [{"address": "10.244.0.5/24", "interface": 0}],
        },
    }
    return env, json.dumps(config).encode()


def test_add_reading_the_annotation_imports_the_api_client(tmp_path, api):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a")  # no annotation: passed through
    env, stdin = setup(tmp_path, url, POD_ARGS)
    modules, completed = imported_modules("ADD", stdin, env)
    assert completed.returncode == 0, completed.stdout
    assert server.requests, "the ADD never asked the API server"
    assert "cni_plugin.kubernetes" in modules and "http.client" in modules


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS"])
def test_execs_that_never_read_the_annotation_never_import_the_api_client(tmp_path, api, command):
    server, url = api
    server.put_pod("dns", "resolver-0", "node-a", annotations={"flock.fritzlab.net/anycast": "192.0.2.53"})
    # An explicit source on ADD: refused at the (missing) netns, after the annotation would have been read.
    env, stdin = setup(tmp_path, url, POD_ARGS + ";FLOCK_ANYCAST=192.0.2.7")
    if command in ("CHECK", "STATUS"):
        stdin = stdin.replace(b'"cniVersion": "1.0.0"', b'"cniVersion": "1.1.0"', 1)
    modules, completed = imported_modules(command, stdin, env)
    if command == "ADD":
        assert json.loads(completed.stdout)["code"] == 103, completed.stdout
    assert server.requests == []
    for client in API_CLIENT:
        assert not loaded(modules, client), f"{command} imported {loaded(modules, client)}"
