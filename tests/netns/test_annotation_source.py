"""Anycast from the pod annotation, through the real chain, against the stand-in API server.

The API server (lab/fake_apiserver.py) listens inside the lab's host
namespace, where the plugin runs, so the plugin's GET crosses a real socket.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from lab.chain import Chain, containerd_args
from lab.fake_apiserver import FakeApiServer, listen_socket_in_netns
from netconf.state import StateStore

ANNOTATION = "flock.fritzlab.net/anycast"
TOKEN = "s3cret-token"


@pytest.fixture
def api_lab(make_netns, tmp_path, plugin_binary):
    host = make_netns("host", forwarding=True)
    api = FakeApiServer(token=TOKEN)
    url = api.start(listen_socket_in_netns(host.path))
    kubeconfig = tmp_path / "flock.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": url}}],
                "users": [{"name": "flock", "user": {"token": TOKEN}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "flock"}}],
                "current-context": "lab",
            }
        )
    )
    chain = Chain(
        plugin_binary,
        host,
        "1.0.0",
        str(tmp_path / "state"),
        str(tmp_path / "ipam"),
        flock_block={"kubeconfig": str(kubeconfig), "apiTimeout": 0.5},
    )
    yield api, chain
    api.stop()


def lo_addresses(pod) -> set[str]:
    with pod.iproute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        return {message.get("IFA_ADDRESS") for message in ipr.get_addr(index=index)}


def state_bytes(chain: Chain) -> dict[str, bytes] | None:
    """Every file of the allocations directory (temp files too) by name, or None without one."""
    directory = StateStore(chain.state_dir).allocations_dir
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return None
    contents = {}
    for name in names:
        with open(os.path.join(directory, name), "rb") as handle:
            contents[name] = handle.read()
    return contents


def test_annotation_gives_the_anycast_set(api_lab, make_netns):
    api, chain = api_lab
    pod = make_netns("pod")
    api.put_pod("dns", "resolver-0", "node-a", annotations={ANNOTATION: "2001:db8:a::53, 192.0.2.53"})
    prev = chain.main_add("c1", pod)
    result = chain.flock("ADD", "c1", pod.path, prev, args=containerd_args("dns", "resolver-0")).ok()
    assert result == prev
    assert {"2001:db8:a::53", "192.0.2.53"} <= lo_addresses(pod)
    [allocation] = StateStore(chain.state_dir).read().allocations
    assert allocation.pod.name == "resolver-0" and allocation.state == "committed"
    assert any(path.startswith("/api/v1/namespaces/dns/pods/resolver-0") for path in api.requests)

    # CHECK trusts what ADD applied, without another GET.
    requests = len(api.requests)
    checked = chain.flock("CHECK", "c1", pod.path, prev, args=containerd_args("dns", "resolver-0"))
    assert checked.returncode == 0, checked.stdout
    assert len(api.requests) == requests


def test_explicit_source_wins_and_skips_the_api(api_lab, make_netns):
    api, chain = api_lab
    pod = make_netns("pod")
    api.put_pod("dns", "resolver-1", "node-a", annotations={ANNOTATION: "192.0.2.99"})
    prev = chain.main_add("c2", pod)
    args = containerd_args("dns", "resolver-1", anycast="192.0.2.53")
    chain.flock("ADD", "c2", pod.path, prev, args=args).ok()
    assert "192.0.2.53" in lo_addresses(pod) and "192.0.2.99" not in lo_addresses(pod)
    assert api.requests == []


def test_pod_without_annotation_passes_through(api_lab, make_netns):
    api, chain = api_lab
    pod = make_netns("pod")
    api.put_pod("web", "frontend", "node-a")
    prev = chain.main_add("c3", pod)
    assert chain.flock("ADD", "c3", pod.path, prev, args=containerd_args("web", "frontend")).ok() == prev
    assert not state_bytes(chain)
    assert StateStore(chain.state_dir).read().allocations == []


@pytest.mark.parametrize(
    "fault, code",
    [("down", 11), ("slow", 11), ("503", 11), ("403", 107), ("missing pod", 11), ("bad annotation", 100)],
)
def test_api_faults_give_a_clear_error_and_write_nothing(api_lab, make_netns, fault, code):
    api, chain = api_lab
    pod = make_netns("pod")
    api.put_pod("dns", "resolver-2", "node-a", annotations={ANNOTATION: "192.0.2.53"})
    prev = chain.main_add("c4", pod)
    # An earlier allocation of another pod must survive the failed ADD byte for byte.
    chain.flock("ADD", "other", pod.path, prev, args="FLOCK_ANYCAST=192.0.2.7").ok()
    before_state, before_lo = state_bytes(chain), lo_addresses(pod)
    assert before_state is not None and len(before_state) == 1, before_state  # the other pod's record
    name = "resolver-2"
    if fault == "down":
        api.stop()
    elif fault == "slow":
        api.delay = 15.0
    elif fault in ("503", "403"):
        api.forced_status = int(fault)
    elif fault == "missing pod":
        name = "nonexistent"
    elif fault == "bad annotation":
        api.put_pod("dns", name, "node-a", annotations={ANNOTATION: "not-an-ip"})

    started = time.monotonic()
    failed = chain.flock("ADD", "c4", pod.path, prev, args=containerd_args("dns", name))
    elapsed = time.monotonic() - started
    assert failed.returncode != 0
    error = failed.json()
    assert error["code"] == code, error
    assert error["msg"]
    assert state_bytes(chain) == before_state
    assert lo_addresses(pod) == before_lo
    if fault == "slow":
        assert elapsed < 10, "apiTimeout (0.5 s) bounds the GET, not the 15 s server"
