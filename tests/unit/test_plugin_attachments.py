"""Attachments that share a pod's ``lo``, the namespace recorded at ADD, and what a crash may leave (issue 11, defects 1, 2, 8).

The verbs run with the in-memory loopback and a real state store in tmp; the
same behaviour through the real kernel and the built plugin is in
tests/netns/test_plugin_hardening.py.
"""

from __future__ import annotations

import copy
import ipaddress
import os

import pytest

from cni_plugin import verbs
from cni_plugin.environment import CniEnvironment, parse_cni_args
from netconf.config import parse_network_config
from netconf.errors import AnycastMissing, NetlinkFailure, PodNetnsUnusable
from netconf.state import StateStore
from tests.unit.fakes import FakeClock, FakePodAnnotations, FakePodLoopback
from tests.unit.test_plugin_bad_input import config

POD = "/run/netns/pod"
OTHER_POD = "/run/netns/other"
HOST = "/proc/self/ns/net"
V4 = ipaddress.ip_address("192.0.2.53")
V6 = ipaddress.ip_address("2001:db8:a::53")
V4B = ipaddress.ip_address("192.0.2.54")
BOTH = "FLOCK_ANYCAST=192.0.2.53,2001:db8:a::53"


def on_lo(*addresses):
    return {(address, 32 if address.version == 4 else 128) for address in addresses}


def context(
    tmp_path, loopback, command="ADD", network="flocknet", ifname="eth0", netns=POD, cni_args=BOTH, container="c1", **extra
):
    """One exec's context; ``network``/``ifname`` tell the attachments of one pod apart."""
    document = copy.deepcopy(config(str(tmp_path / "state"), version="1.1.0"))
    document["name"] = network
    document["prevResult"]["interfaces"][1]["name"] = ifname
    document.update(extra)
    env = CniEnvironment(command=command, container_id=container, netns=netns, ifname=ifname, args=parse_cni_args(cni_args))
    parsed = parse_network_config(document)
    return verbs.VerbContext(
        env=env,
        config=parsed,
        store=StateStore(parsed.flock.state_dir),
        loopback=loopback,
        annotations=FakePodAnnotations(),
        clock=FakeClock(),
    )


def records(tmp_path):
    return {item.key: item for item in StateStore(str(tmp_path / "state")).read().allocations}


@pytest.fixture
def loopback():
    return FakePodLoopback(netns_paths=(POD, OTHER_POD), refused=(HOST,))


def two_attachments(tmp_path, loopback):
    """One pod on two networks (Multus, podman), both passing the pod's anycast list."""
    verbs.cmd_add(context(tmp_path, loopback, network="flocknet", ifname="eth0"))
    verbs.cmd_add(context(tmp_path, loopback, network="second", ifname="eth1"))
    assert loopback.addresses[POD] == on_lo(V4, V6)


# --- defect 1: addresses shared by attachments of one pod ------------------------------


def test_del_of_one_attachment_keeps_what_the_other_claims(tmp_path, loopback):
    two_attachments(tmp_path, loopback)
    verbs.cmd_del(context(tmp_path, loopback, command="DEL", network="flocknet", ifname="eth0"))
    assert loopback.addresses[POD] == on_lo(V4, V6)
    assert list(records(tmp_path)) == [("second", "c1", "eth1")]
    verbs.cmd_check(context(tmp_path, loopback, command="CHECK", network="second", ifname="eth1"))

    verbs.cmd_del(context(tmp_path, loopback, command="DEL", network="second", ifname="eth1"))
    assert loopback.addresses[POD] == set()
    assert records(tmp_path) == {}


def test_gc_of_one_network_keeps_what_the_other_network_claims(tmp_path, loopback):
    two_attachments(tmp_path, loopback)
    verbs.cmd_gc(context(tmp_path, loopback, command="GC", network="flocknet", **{"cni.dev/valid-attachments": []}))
    assert loopback.addresses[POD] == on_lo(V4, V6)
    assert list(records(tmp_path)) == [("second", "c1", "eth1")]


def test_failed_add_of_a_second_attachment_keeps_the_first_ones_addresses(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback, network="flocknet", ifname="eth0", cni_args="FLOCK_ANYCAST=192.0.2.53"))
    failing = FakePodLoopback(netns_paths=(POD, OTHER_POD), fail_on=V6)
    failing.addresses = loopback.addresses
    with pytest.raises(NetlinkFailure):
        verbs.cmd_add(
            context(tmp_path, failing, network="second", ifname="eth1", cni_args="FLOCK_ANYCAST=192.0.2.53,2001:db8:a::53")
        )
    assert loopback.addresses[POD] == on_lo(V4), "the rollback took the first attachment's address"
    assert list(records(tmp_path)) == [("flocknet", "c1", "eth0")]


def test_repeated_add_dropping_an_address_another_attachment_claims_keeps_it(tmp_path, loopback):
    two_attachments(tmp_path, loopback)
    verbs.cmd_add(context(tmp_path, loopback, network="flocknet", ifname="eth0", cni_args="FLOCK_ANYCAST=192.0.2.54"))
    assert loopback.addresses[POD] == on_lo(V4, V6, V4B)
    verbs.cmd_del(context(tmp_path, loopback, command="DEL", network="second", ifname="eth1"))
    assert loopback.addresses[POD] == on_lo(V4B)


def test_unreadable_record_of_another_attachment_keeps_every_address(tmp_path, loopback):
    """Its claims are unknown: leaving an address is harmless, removing a claimed one black-holes traffic."""
    two_attachments(tmp_path, loopback)
    store = StateStore(str(tmp_path / "state"))
    with open(store.path_of(("second", "c1", "eth1")), "wb") as handle:
        handle.write(b"{torn")
    verbs.cmd_del(context(tmp_path, loopback, command="DEL", network="flocknet", ifname="eth0"))
    assert loopback.addresses[POD] == on_lo(V4, V6)
    assert store.get(("flocknet", "c1", "eth0")) is None


def test_another_pods_record_with_the_same_addresses_does_not_keep_them(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    verbs.cmd_add(context(tmp_path, loopback, container="c2", netns=OTHER_POD))
    verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    assert loopback.addresses[POD] == set()
    assert loopback.addresses[OTHER_POD] == on_lo(V4, V6)


# --- defect 2: only the pod's namespace, the one recorded at ADD -------------------------


def test_add_into_a_refused_namespace_records_nothing(tmp_path, loopback):
    with pytest.raises(PodNetnsUnusable, match="refusing CNI_NETNS"):
        verbs.cmd_add(context(tmp_path, loopback, netns=HOST))
    assert records(tmp_path) == {}


def test_del_acts_on_the_namespace_recorded_at_add_not_on_cni_netns(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    verbs.cmd_add(context(tmp_path, loopback, container="c2", netns=OTHER_POD))
    verbs.cmd_del(context(tmp_path, loopback, command="DEL", netns=OTHER_POD))
    assert loopback.addresses[POD] == set()
    assert loopback.addresses[OTHER_POD] == on_lo(V4, V6)


def test_del_leaves_a_namespace_that_replaced_the_recorded_one_alone(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    loopback.inodes[POD] += 1  # the pod's namespace is gone and a new one sits at the same path
    loopback.addresses[POD] = on_lo(V4)
    verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    assert loopback.addresses[POD] == on_lo(V4)
    assert records(tmp_path) == {}


def test_del_of_a_record_naming_a_refused_namespace_drops_only_the_record(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as transaction:
        record = transaction.get(("flocknet", "c1", "eth0"))
        transaction.put(record.replace(netns=HOST, netns_inode=None))
    verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    assert records(tmp_path) == {}
    assert loopback.addresses[POD] == on_lo(V4, V6), "DEL followed the record, not CNI_NETNS"


def test_repeated_add_in_another_live_namespace_is_refused(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    with pytest.raises(PodNetnsUnusable, match="recorded in network namespace"):
        verbs.cmd_add(context(tmp_path, loopback, netns=OTHER_POD))
    assert loopback.addresses[OTHER_POD] == set()
    [record] = records(tmp_path).values()
    assert record.netns == POD and record.state == "committed"


def test_repeated_add_after_the_recorded_namespace_is_gone_starts_afresh(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    del loopback.inodes[POD]
    verbs.cmd_add(context(tmp_path, loopback, netns=OTHER_POD, cni_args="FLOCK_ANYCAST=192.0.2.54"))
    [record] = records(tmp_path).values()
    assert record.netns == OTHER_POD and record.anycast == (V4B,) and record.state == "committed"


def test_check_fails_when_cni_netns_is_not_the_recorded_one(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    with pytest.raises(AnycastMissing, match="is in network namespace"):
        verbs.cmd_check(context(tmp_path, loopback, command="CHECK", netns=OTHER_POD))


# --- defect 8: what the record says while lo changes -------------------------------------


class WatchingLoopback(FakePodLoopback):
    """Records what the attachment's state record says at each change of ``lo``."""

    def __init__(self, store, key, **kwargs):
        super().__init__(**kwargs)
        self.store, self.key, self.seen = store, key, []

    def ensure_addresses(self, netns, addresses, inode=None):
        self.seen.append(("ensure", self.store.get(self.key)))
        super().ensure_addresses(netns, addresses, inode)

    def delete_addresses(self, netns, addresses, inode=None):
        self.seen.append(("delete", self.store.get(self.key)))
        super().delete_addresses(netns, addresses, inode)


def test_repeated_add_is_pending_over_the_old_and_new_set_while_lo_changes(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    key = ("flocknet", "c1", "eth0")
    loopback = WatchingLoopback(store, key, netns_paths=(POD,))
    verbs.cmd_add(context(tmp_path, loopback, cni_args="FLOCK_ANYCAST=192.0.2.53"))
    loopback.seen.clear()
    verbs.cmd_add(context(tmp_path, loopback, cni_args="FLOCK_ANYCAST=192.0.2.54"))
    assert [step for step, _ in loopback.seen] == ["ensure", "delete"]
    for _, record in loopback.seen:
        assert record.state == "pending" and set(record.anycast) == {V4, V4B}
    assert store.get(key).anycast == (V4B,) and store.get(key).state == "committed"


def test_del_marks_the_record_pending_before_it_touches_lo(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    key = ("flocknet", "c1", "eth0")
    loopback = WatchingLoopback(store, key, netns_paths=(POD,))
    verbs.cmd_add(context(tmp_path, loopback))
    loopback.seen.clear()
    verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    [(step, record)] = loopback.seen
    assert step == "delete" and record.state == "pending" and set(record.anycast) == {V4, V6}
    assert store.get(key) is None


def test_failed_del_leaves_a_pending_record_that_the_next_del_finishes(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    failing = FakePodLoopback(netns_paths=(POD, OTHER_POD))
    failing.addresses = loopback.addresses

    def broken_delete(netns, addresses, inode=None):
        raise NetlinkFailure("cannot remove")

    failing.delete_addresses = broken_delete
    with pytest.raises(NetlinkFailure):
        verbs.cmd_del(context(tmp_path, failing, command="DEL"))
    [record] = records(tmp_path).values()
    assert record.state == "pending", "a committed record whose DEL failed half-way would stay advertised"
    verbs.cmd_del(context(tmp_path, loopback, command="DEL"))
    assert records(tmp_path) == {} and loopback.addresses[POD] == set()


def test_a_pending_record_left_by_a_crash_is_cleaned_by_gc(tmp_path, loopback):
    verbs.cmd_add(context(tmp_path, loopback))
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as transaction:
        record = transaction.get(("flocknet", "c1", "eth0"))
        transaction.put(record.replace(state="pending", anycast=(V4, V6, V4B)))
    loopback.addresses[POD] |= on_lo(V4B)
    verbs.cmd_gc(context(tmp_path, loopback, command="GC", **{"cni.dev/valid-attachments": []}))
    assert records(tmp_path) == {} and loopback.addresses[POD] == set()
    assert os.listdir(store.allocations_dir) == []
