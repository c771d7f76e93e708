"""The verbs' logic with the in-memory fakes (loopback, annotations, clock) and a real state store in tmp."""

from __future__ import annotations

import ipaddress
import os

import pytest

from cni_plugin import verbs
from cni_plugin.environment import CniEnvironment, parse_cni_args
from netconf.config import parse_network_config
from netconf.errors import AnycastMissing, CleanupFailed, NetlinkFailure, PodNetnsUnusable
from netconf.state import StateStore
from tests.unit.fakes import FakeClock, FakePodAnnotations, FakePodLoopback
from tests.unit.test_plugin_bad_input import PREV_DUAL, config

POD = "/run/netns/pod"  # exists only in the fake loopback: identify() is the verbs' existence check
V4 = ipaddress.ip_address("192.0.2.53")
V6 = ipaddress.ip_address("2001:db8:a::53")


def context(
    tmp_path,
    loopback,
    command="ADD",
    container="c1",
    cni_args="FLOCK_ANYCAST=192.0.2.53,2001:db8:a::53",
    version="1.1.0",
    annotations=None,
    clock=None,
    **extra,
):
    document = config(str(tmp_path / "state"), version=version)
    document.update(extra)
    env = CniEnvironment(command=command, container_id=container, netns=POD, ifname="eth0", args=parse_cni_args(cni_args))
    parsed = parse_network_config(document)
    return verbs.VerbContext(
        env=env,
        config=parsed,
        store=StateStore(parsed.flock.state_dir),
        loopback=loopback,
        annotations=annotations if annotations is not None else FakePodAnnotations(),
        clock=clock if clock is not None else FakeClock(),
    )


def fake_loopback():
    return FakePodLoopback(netns_paths=(POD,))


def test_add_commits_and_returns_prev_result(tmp_path):
    loopback = fake_loopback()
    result = verbs.cmd_add(context(tmp_path, loopback))
    assert result["ips"] == PREV_DUAL["ips"] and result["cniVersion"] == "1.1.0"
    assert loopback.addresses[POD] == {(V4, 32), (V6, 128)}
    [allocation] = StateStore(str(tmp_path / "state")).read().allocations
    assert allocation.state == "committed"
    assert set(allocation.pod_ips) == {ipaddress.ip_address("10.244.0.5"), ipaddress.ip_address("fd00:244::5")}


def test_failed_netlink_rolls_back_addresses_and_record(tmp_path):
    loopback = FakePodLoopback(netns_paths=(POD,), fail_on=V6)
    with pytest.raises(NetlinkFailure):
        verbs.cmd_add(context(tmp_path, loopback))
    assert loopback.addresses[POD] == set()
    assert StateStore(str(tmp_path / "state")).read().allocations == []


def test_repeated_add_with_a_changed_set_drops_the_old_address(tmp_path):
    loopback = fake_loopback()
    verbs.cmd_add(context(tmp_path, loopback))
    verbs.cmd_add(context(tmp_path, loopback, cni_args="FLOCK_ANYCAST=192.0.2.54"))
    assert loopback.addresses[POD] == {(ipaddress.ip_address("192.0.2.54"), 32)}
    [allocation] = StateStore(str(tmp_path / "state")).read().allocations
    assert allocation.anycast == (ipaddress.ip_address("192.0.2.54"),)


def test_source_order_runtime_config_then_args_then_cni_args(tmp_path):
    loopback = fake_loopback()
    verbs.cmd_add(
        context(
            tmp_path,
            loopback,
            cni_args="FLOCK_ANYCAST=192.0.2.1",
            runtimeConfig={"anycast": ["192.0.2.3"]},
            args={"cni": {"anycast": "192.0.2.2"}},
        )
    )
    assert loopback.addresses[POD] == {(ipaddress.ip_address("192.0.2.3"), 32)}
    loopback = fake_loopback()
    verbs.cmd_add(
        context(tmp_path, loopback, container="c2", cni_args="FLOCK_ANYCAST=192.0.2.1", args={"cni": {"anycast": "192.0.2.2"}})
    )
    assert (ipaddress.ip_address("192.0.2.2"), 32) in loopback.addresses[POD]


def test_check_names_what_is_missing(tmp_path):
    loopback = fake_loopback()
    verbs.cmd_add(context(tmp_path, loopback))
    verbs.cmd_check(context(tmp_path, loopback, command="CHECK"))
    loopback.addresses[POD].discard((V6, 128))
    with pytest.raises(AnycastMissing, match="2001:db8:a::53"):
        verbs.cmd_check(context(tmp_path, loopback, command="CHECK"))
    with pytest.raises(AnycastMissing, match="no allocation"):
        verbs.cmd_check(context(tmp_path, loopback, command="CHECK", container="other"))
    with pytest.raises(AnycastMissing, match="config requests"):
        verbs.cmd_check(context(tmp_path, loopback, command="CHECK", cni_args="FLOCK_ANYCAST=192.0.2.53"))


def test_del_is_idempotent(tmp_path):
    loopback = fake_loopback()
    verbs.cmd_add(context(tmp_path, loopback))
    for _ in range(2):
        verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    assert loopback.addresses[POD] == set()
    assert StateStore(str(tmp_path / "state")).read().allocations == []


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_drops_only_stale_attachments_of_this_network(tmp_path, key):
    loopback = fake_loopback()
    verbs.cmd_add(context(tmp_path, loopback, container="keep", cni_args="FLOCK_ANYCAST=192.0.2.1"))
    verbs.cmd_add(context(tmp_path, loopback, container="stale", cni_args="FLOCK_ANYCAST=192.0.2.2"))
    verbs.cmd_gc(context(tmp_path, loopback, command="GC", **{key: [{"containerID": "keep", "ifname": "eth0"}]}))
    remaining = StateStore(str(tmp_path / "state")).read().allocations
    assert [allocation.container_id for allocation in remaining] == ["keep"]
    assert loopback.addresses[POD] == {(ipaddress.ip_address("192.0.2.1"), 32)}


def test_gc_continues_past_failures_and_reports_them_together(tmp_path):
    loopback = fake_loopback()
    for name in ("a", "b", "c"):
        verbs.cmd_add(context(tmp_path, loopback, container=name, cni_args=f"FLOCK_ANYCAST=192.0.2.{ord(name)}"))

    failing = fake_loopback()
    failing.addresses = loopback.addresses

    def delete(netns, addresses, inode=None):
        if ipaddress.ip_address("192.0.2.98") in addresses:
            raise NetlinkFailure("cannot remove 192.0.2.98")
        FakePodLoopback.delete_addresses(failing, netns, addresses, inode)

    failing.delete_addresses = delete
    with pytest.raises(CleanupFailed, match="1 allocations") as raised:
        verbs.cmd_gc(context(tmp_path, failing, command="GC", **{"cni.dev/valid-attachments": []}))
    assert "b/eth0" in raised.value.details
    remaining = StateStore(str(tmp_path / "state")).read().allocations
    assert [allocation.container_id for allocation in remaining] == ["b"]


class UnenterableLoopback(FakePodLoopback):
    """A netns path that exists but cannot be entered, for adds and deletes alike."""

    def delete_addresses(self, netns, addresses, inode=None):
        raise PodNetnsUnusable(f"cannot enter pod network namespace {netns!r}")


def state_files(store):
    """Every entry of the allocations directory (temp files too), with its bytes."""
    return {name: open(os.path.join(store.allocations_dir, name), "rb").read() for name in os.listdir(store.allocations_dir)}


def test_unenterable_netns_leaves_the_state_files_as_they_were(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    verbs.cmd_add(context(tmp_path, fake_loopback(), container="other"))
    before = state_files(store)
    assert list(before) == [os.path.basename(store.path_of(("flocknet", "other", "eth0")))]
    with pytest.raises(PodNetnsUnusable):
        verbs.cmd_add(context(tmp_path, UnenterableLoopback(netns_paths=())))
    assert state_files(store) == before
    assert not os.path.exists(store.path_of(("flocknet", "c1", "eth0")))


def test_failed_repeated_add_restores_the_earlier_allocation(tmp_path):
    loopback = fake_loopback()
    verbs.cmd_add(context(tmp_path, loopback, cni_args="FLOCK_ANYCAST=192.0.2.53"))
    [earlier] = StateStore(str(tmp_path / "state")).read().allocations
    failing = FakePodLoopback(netns_paths=(POD,), fail_on=V6)
    failing.addresses = loopback.addresses
    with pytest.raises(NetlinkFailure):
        verbs.cmd_add(context(tmp_path, failing))
    assert StateStore(str(tmp_path / "state")).read().allocations == [earlier]
    assert loopback.addresses[POD] == {(V4, 32)}, "the earlier ADD's address stays on lo"
