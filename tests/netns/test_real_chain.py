"""The plugin in the real chain (Debian ptp + host-local, then flock-anycast), exec'd like a runtime.

Runs against the source entry point and the frozen binary, at every spec
version the issue names, inside throwaway namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from lab.chain import Chain, containerd_args
from netconf.state import StateStore

ANYCAST = ["2001:db8:a::53", "192.0.2.53"]
VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def lo_addresses(pod) -> set[tuple[str, int]]:
    with pod.iproute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        return {(message.get("IFA_ADDRESS"), message["prefixlen"]) for message in ipr.get_addr(index=index)}


def record_files(state_dir: str) -> list[str]:
    """The record files in the state's allocations directory (writers' dot temp files aside)."""
    try:
        names = os.listdir(StateStore(state_dir).allocations_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not name.startswith("."))


def delete_lo_address(pod, address: str, prefixlen: int) -> None:
    with pod.iproute() as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname="lo")[0], address=address, prefixlen=prefixlen)


@pytest.fixture
def lab(make_netns, tmp_path, plugin_binary):
    host = make_netns("host", forwarding=True)

    def chain(version: str, **kwargs) -> Chain:
        return Chain(plugin_binary, host, version, str(tmp_path / "state"), str(tmp_path / "ipam"), **kwargs)

    return chain


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_through_the_chain(lab, make_netns, version):
    chain = lab(version)
    pod = make_netns("pod")
    args = containerd_args("dns", "resolver-0", anycast=",".join(ANYCAST))
    prev = chain.main_add("ctr1", pod)

    added = chain.flock("ADD", "ctr1", pod.path, prev, args=args)
    result = added.ok()

    # A chained plugin that adds no interface hands prevResult on unchanged.
    assert result == prev
    assert ("2001:db8:a::53", 128) in lo_addresses(pod)
    assert ("192.0.2.53", 32) in lo_addresses(pod)
    [allocation] = StateStore(chain.state_dir).read().allocations
    assert allocation.state == "committed"
    assert allocation.key == ("flocknet", "ctr1", "eth0")
    assert allocation.pod.namespace == "dns" and allocation.pod.name == "resolver-0"
    pod_ips = {str(ipaddress.ip_interface(ip["address"]).ip) for ip in prev["ips"]}
    assert {str(ip) for ip in allocation.pod_ips} == pod_ips
    assert {ip.version for ip in allocation.pod_ips} == {4, 6}

    if version != "0.3.1":
        checked = chain.flock("CHECK", "ctr1", pod.path, prev, args=args)
        assert checked.returncode == 0, checked.stdout
        assert checked.stdout == ""
        delete_lo_address(pod, "192.0.2.53", 32)
        broken = chain.flock("CHECK", "ctr1", pod.path, prev, args=args)
        assert broken.returncode != 0
        error = broken.json()
        assert error["code"] == 105
        assert "192.0.2.53" in error["msg"]

    deleted = chain.flock("DEL", "ctr1", pod.path, prev if version != "0.3.1" else None, args=args)
    assert deleted.returncode == 0 and deleted.stdout == "", deleted.stdout
    assert not {address for address, _ in lo_addresses(pod)} & set(ANYCAST)
    assert StateStore(chain.state_dir).read().allocations == []
    again = chain.flock("DEL", "ctr1", pod.path, args=args)
    assert again.returncode == 0 and again.stdout == ""
    assert chain.main_del("ctr1", pod.path).returncode == 0


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0"])
def test_del_after_netns_is_gone_drops_the_allocation(lab, make_netns, version):
    from lab.netns import delete_netns

    chain = lab(version)
    pod = make_netns("pod")
    prev = chain.main_add("ctr2", pod)
    chain.flock("ADD", "ctr2", pod.path, prev, args=f"FLOCK_ANYCAST={ANYCAST[1]}").ok()
    assert len(StateStore(chain.state_dir).read().allocations) == 1
    delete_netns(pod)

    for netns in (pod.path, ""):
        gone = chain.flock("DEL", "ctr2", netns)
        assert gone.returncode == 0 and gone.stdout == "", gone.stdout
    assert StateStore(chain.state_dir).read().allocations == []


def test_failed_add_leaves_state_and_lo_as_they_were(lab, make_netns):
    chain = lab("1.0.0", subnet6=None)
    pod = make_netns("pod")
    prev = chain.main_add("ctr3", pod)
    before = lo_addresses(pod)

    # IPv6 anycast in an IPv4-only pod cannot be routed: refused before any change.
    refused = chain.flock("ADD", "ctr3", pod.path, prev, args=f"FLOCK_ANYCAST={','.join(ANYCAST)}")
    assert refused.returncode != 0
    assert refused.json()["code"] == 102
    assert lo_addresses(pod) == before
    assert StateStore(chain.state_dir).read().allocations == []
    assert record_files(chain.state_dir) == []

    outside = chain.flock("ADD", "ctr3", pod.path, prev, args="FLOCK_ANYCAST=198.51.100.1")
    assert outside.json()["code"] == 101 and "198.51.100.1" in outside.json()["msg"]


def test_no_anycast_source_passes_through_without_state(lab, make_netns):
    chain = lab("1.0.0")
    pod = make_netns("pod")
    prev = chain.main_add("ctr4", pod)
    result = chain.flock("ADD", "ctr4", pod.path, prev, args=containerd_args("default", "web")).ok()
    assert result == prev
    assert StateStore(chain.state_dir).read().allocations == []
    assert record_files(chain.state_dir) == []
    assert json.dumps(result)  # JSON-serialisable, as printed
