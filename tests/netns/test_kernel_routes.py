"""The real kernel adapter in throwaway namespaces: a node netns and pod netns behind veths.

Also the reconciler pass on the real kernel (fake BIRD): adoption on restart
without delete/re-add (proved by watching netlink), orphan removal, and a
route deleted by hand coming back through the route monitor.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from lab.netns import wire_pod
from netconf.values import Allocation, PodRef
from reconciler.desired import NextHop
from reconciler.kernel import (
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    DeviceMissing,
    GatewayUnreachable,
    KernelRoutes,
    NamespaceMissing,
    open_netlink_socket,
)
from reconciler.loop import LoopSettings, Reconciler, Scheduler, Waker
from reconciler.readiness import AlwaysReady
from reconciler.watch import RouteMonitor
from tests.reconciler_fakes import FakeBird, FakeStore

PROTO = 70
P4 = ip_network("192.0.2.53/32")
P6 = ip_network("2001:db8:a::53/128")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

PODS = {
    # name: (host veth, host ifindex, IPv4, IPv6)
    "a": ("veth-a", 50, "10.1.0.2", "fd00::2"),
    "b": ("veth-b", 51, "10.1.0.3", "fd00::3"),
}


def hop(pod, family=4):
    device, _index, ip4, ip6 = PODS[pod]
    return NextHop(ip_address(ip4 if family == 4 else ip6), device)


@pytest.fixture
def topology(make_netns):
    """Node netns with one veth per pod netns; host routes to the pod IPs as ptp would add."""
    node = make_netns("node", forwarding=True)
    pods = {}
    for name, (device, index, ip4, ip6) in PODS.items():
        pod = make_netns(f"pod{name}")
        pods[name] = pod
        wire_pod(node, pod, device, index, ip4, ip6)
    return node, pods


@pytest.fixture
def kernel(topology):
    node, _pods = topology
    adapter = KernelRoutes(protocol=PROTO, table=254, netns=node.path)
    yield adapter
    adapter.close()


def dump_ours(node, table=254):
    """Our routes as an independent reader (pyroute2's parser) sees them."""
    result = {}
    with node.iproute() as ipr:
        for message in ipr.route("dump"):
            if message["proto"] != PROTO or message.get("RTA_TABLE") != table:
                continue
            names = {}
            hops = message.get("RTA_MULTIPATH") or [
                {"oif": message.get("RTA_OIF"), "attrs": [("RTA_GATEWAY", message.get("RTA_GATEWAY"))]}
            ]
            for item in hops:
                index = item["oif"]
                if index not in names:
                    names[index] = ipr.get_links(index)[0].get("IFLA_IFNAME")
                gateway = dict(item["attrs"]).get("RTA_GATEWAY")
                result.setdefault(ip_network(f"{message.get('RTA_DST')}/{message['dst_len']}"), set()).add(
                    NextHop(ip_address(gateway), names[index])
                )
    return result


class RouteEvents:
    """Records RTM_NEWROUTE/RTM_DELROUTE of our protocol in a namespace, in order."""

    def __init__(self, netns_path):
        self.sock = open_netlink_socket(netns_path, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)

    def close(self):
        self.sock.close()

    def until(self, sentinel, timeout=5.0):
        """Events up to (excluding) the RTM_NEWROUTE of ``sentinel``; fails at the deadline."""
        events = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                body = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3
                if kind not in (RTM_NEWROUTE, RTM_DELROUTE) or body[5] != PROTO:
                    continue
                family, dst_len = body[0], body[1]
                prefix = _prefix_of(family, dst_len, body)
                if kind == RTM_NEWROUTE and prefix == sentinel:
                    return events
                events.append(("new" if kind == RTM_NEWROUTE else "del", prefix))
        raise AssertionError(f"sentinel {sentinel} never seen; events so far {events}")


def _prefix_of(family, dst_len, body):
    offset = 12
    while offset + 4 <= len(body):
        length, attr_type = struct.unpack_from("=HH", body, offset)
        if attr_type == 1:  # RTA_DST
            raw = body[offset + 4 : offset + length]
            address = ip_address(raw[:4] if family == socket.AF_INET else raw[:16])
            return ip_network(f"{address}/{dst_len}")
        offset += (length + 3) & ~3
    return None


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- the adapter -----------------------------------------------------------------


def test_single_and_multipath_routes_in_both_families_round_trip(topology, kernel):
    node, _ = topology
    wanted = {
        P4: frozenset({hop("a")}),
        ip_network("192.0.2.54/32"): frozenset({hop("a"), hop("b")}),
        P6: frozenset({hop("a", 6), hop("b", 6)}),
        ip_network("2001:db8:a::54/128"): frozenset({hop("b", 6)}),
    }

    for prefix, hops in wanted.items():
        kernel.ensure_route(prefix, hops)

    assert kernel.list_routes() == wanted
    assert dump_ours(node) == wanted


def test_replace_moves_between_single_and_multipath_in_place(topology, kernel):
    node, _ = topology
    for prefix, family in ((P4, 4), (P6, 6)):
        for hops in ({hop("a", family)}, {hop("a", family), hop("b", family)}, {hop("b", family)}):
            kernel.ensure_route(prefix, frozenset(hops))
            assert kernel.list_routes()[prefix] == hops
            assert dump_ours(node)[prefix] == hops


def test_only_our_protocol_and_table_are_listed(topology, kernel):
    node, _ = topology
    with node.iproute() as ipr:
        ipr.route("add", dst="198.51.100.1/32", gateway="10.1.0.2", oif=50, proto=4)
        ipr.route("add", dst="198.51.100.2/32", gateway="10.1.0.2", oif=50, proto=PROTO, table=100)
        ipr.route("add", dst="198.51.100.0/24", gateway="10.1.0.2", oif=50, proto=PROTO)
    kernel.ensure_route(P4, frozenset({hop("a")}))

    assert kernel.list_routes() == {P4: {hop("a")}}
    in_table_100 = KernelRoutes(protocol=PROTO, table=100, netns=node.path)
    try:
        assert in_table_100.list_routes() == {ip_network("198.51.100.2/32"): {hop("a")}}
    finally:
        in_table_100.close()


def test_route_in_a_table_that_does_not_exist_yet(topology):
    node, _ = topology
    adapter = KernelRoutes(protocol=PROTO, table=4242, netns=node.path)
    try:
        assert adapter.list_routes() == {}
        adapter.ensure_route(P6, frozenset({hop("a", 6)}))
        assert adapter.list_routes() == {P6: {hop("a", 6)}}
        assert dump_ours(node, table=4242) == {P6: {hop("a", 6)}}
    finally:
        adapter.close()


def test_delete_is_tolerant_and_never_touches_another_protocols_route(topology, kernel):
    node, _ = topology
    kernel.ensure_route(P6, frozenset({hop("a", 6), hop("b", 6)}))
    with node.iproute() as ipr:
        ipr.route("add", dst="198.51.100.1/32", gateway="10.1.0.2", oif=50, proto=4)

    assert kernel.delete_route(P6) is True
    assert kernel.delete_route(P6) is False
    assert kernel.delete_route(ip_network("198.51.100.1/32")) is False
    assert kernel.list_routes() == {}
    with node.iproute() as ipr:
        assert [m.get("RTA_DST") for m in ipr.route("dump") if m.get("RTA_DST") == "198.51.100.1"] == ["198.51.100.1"]


def test_device_for_finds_the_veth_and_refuses_routes_via_a_gateway(topology, kernel):
    node, _ = topology
    with node.iproute() as ipr:
        # A default route via pod a: everything unknown is reachable, but not on-link.
        ipr.route("add", dst="0.0.0.0/0", gateway="10.1.0.2", oif=50)

    assert kernel.device_for(ip_address("10.1.0.2")) == "veth-a"
    assert kernel.device_for(ip_address("fd00::3")) == "veth-b"
    assert kernel.device_for(ip_address("10.9.9.9")) is None  # via the default gateway
    assert kernel.device_for(ip_address("fd00::99")) is None  # no route at all


def test_device_for_a_bridge_style_pod_network_is_the_bridge(make_netns):
    node = make_netns("node", forwarding=True)
    pod = make_netns("pod")
    with node.iproute() as ipr:
        ipr.link("add", ifname="cni0", kind="bridge")
        bridge = ipr.link_lookup(ifname="cni0")[0]
        ipr.link("set", index=bridge, state="up")
        ipr.addr("add", index=bridge, address="10.22.0.1", prefixlen=24)
        ipr.link("add", ifname="vethp", index=60, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod.path})
        ipr.link("set", index=60, master=bridge, state="up")
    adapter = KernelRoutes(protocol=PROTO, netns=node.path)
    try:
        assert adapter.device_for(ip_address("10.22.0.5")) == "cni0"
        adapter.ensure_route(P4, frozenset({NextHop(ip_address("10.22.0.5"), "cni0")}))
        assert adapter.list_routes() == {P4: {NextHop(ip_address("10.22.0.5"), "cni0")}}
    finally:
        adapter.close()


def test_errors_are_translated(topology, kernel):
    with pytest.raises(DeviceMissing):
        kernel.ensure_route(P4, frozenset({NextHop(ip_address("10.1.0.2"), "veth-gone")}))
    with pytest.raises(GatewayUnreachable):
        kernel.ensure_route(P4, frozenset({NextHop(ip_address("10.77.0.1"), "veth-a")}))
    with pytest.raises(NamespaceMissing):
        KernelRoutes(netns="/run/netns/flt-does-not-exist").list_routes()


def test_route_through_a_deleted_veth_is_gone_and_listing_copes(topology, kernel):
    node, _ = topology
    kernel.ensure_route(P6, frozenset({hop("b", 6)}))
    kernel.ensure_route(P4, frozenset({hop("a")}))
    with node.iproute() as ipr:
        ipr.link("del", index=51)

    assert kernel.list_routes() == {P4: {hop("a")}}
    with pytest.raises(DeviceMissing):
        kernel.ensure_route(P6, frozenset({hop("b", 6)}))


# -- the route monitor -----------------------------------------------------------


def test_monitor_wakes_on_our_route_changes_only(topology, kernel):
    node, _ = topology
    reasons = []
    woke = threading.Event()

    def wake(reason):
        reasons.append(reason)
        woke.set()

    monitor = RouteMonitor(wake, protocol=PROTO, table=254, netns=node.path)
    monitor.start()
    try:
        kernel.ensure_route(P4, frozenset({hop("a")}))
        assert woke.wait(5)
        assert reasons == ["route-event"]
        assert monitor._is_ours(RTM_NEWROUTE, bytes([2, 32, 0, 0, 254, PROTO, 0, 1]) + b"\0" * 4)
        assert not monitor._is_ours(RTM_NEWROUTE, bytes([2, 32, 0, 0, 254, 4, 0, 1]) + b"\0" * 4)
        assert not monitor._is_ours(RTM_NEWROUTE, bytes([2, 32, 0, 0, 100, PROTO, 0, 1]) + b"\0" * 4)
    finally:
        monitor.stop()


# -- the reconciler on the real kernel ---------------------------------------------


def allocation(pod):
    device, _index, ip4, ip6 = PODS[pod]
    return Allocation(
        network="flocknet",
        container_id=f"ctr-{pod}",
        ifname="eth0",
        netns=f"/run/netns/{pod}",
        pod=PodRef(namespace="dns", name=pod, uid=f"uid-{pod}"),
        anycast=(ip_address("2001:db8:a::53"), ip_address("192.0.2.53")),
        pod_ips=(ip_address(ip4), ip_address(ip6)),
        state="committed",
        created_at=T0,
        updated_at=T0,
    )


def reconciler_for(node, store, bird, drain_delay=0.0):
    return Reconciler(
        store=store,
        readiness=AlwaysReady(),
        kernel=KernelRoutes(protocol=PROTO, netns=node.path),
        bird=bird,
        settings=LoopSettings(drain_delay=drain_delay),
        pools=(ip_network("2001:db8:a::/64"), ip_network("192.0.2.0/24")),
    )


def test_restart_adopts_routes_without_delete_or_re_add_and_fixes_the_rest(topology):
    node, _ = topology
    store = FakeStore([allocation("a"), allocation("b")])
    bird = FakeBird()
    first = reconciler_for(node, store, bird)
    assert first.reconcile().ok
    assert dump_ours(node) == {P4: {hop("a"), hop("b")}, P6: {hop("a", 6), hop("b", 6)}}
    first.kernel.close()

    orphan = ip_network("198.51.100.9/32")
    wrong = ip_network("192.0.2.54/32")
    store.allocations.append(
        allocation("a").replace(container_id="ctr-c", anycast=(ip_address("192.0.2.54"),))
    )
    with node.iproute() as ipr:
        ipr.route("add", dst=str(orphan), gateway="10.1.0.3", oif=51, proto=PROTO)
        ipr.route("add", dst=str(wrong), gateway="10.1.0.3", oif=51, proto=PROTO)
    events = RouteEvents(node.path)
    try:
        second = reconciler_for(node, store, bird)  # "restarted": no memory of the first
        report = second.reconcile()
        sentinel = ip_network("203.0.113.1/32")
        second.kernel.ensure_route(sentinel, frozenset({hop("a")}))
        seen = events.until(sentinel)
    finally:
        events.close()
        second.kernel.close()

    assert report.ok
    # Only the wrong route was rewritten and the orphan deleted; P4/P6 never moved.
    assert seen == [("new", wrong), ("del", orphan)]
    assert dump_ours(node)[P4] == {hop("a"), hop("b")}
    assert dump_ours(node)[wrong] == {hop("a")}
    assert orphan not in dump_ours(node)


def test_route_deleted_by_hand_comes_back_through_the_monitor(topology):
    node, _ = topology
    store = FakeStore([allocation("a")])
    reconciler = reconciler_for(node, store, FakeBird())
    waker = Waker()
    monitor = RouteMonitor(waker.wake, protocol=PROTO, table=254, netns=node.path)
    settings = LoopSettings(resync_interval=3600, debounce=0.01, max_wait=0.1)
    scheduler = Scheduler(reconciler, waker, settings)
    thread = threading.Thread(target=scheduler.run)
    monitor.start()
    thread.start()
    try:
        assert wait_for(lambda: P4 in dump_ours(node) and P6 in dump_ours(node))
        with node.iproute() as ipr:
            ipr.route("del", dst=str(P4), proto=PROTO)
        assert wait_for(lambda: dump_ours(node).get(P4) == {hop("a")}), "route was not put back"
        assert reconciler.metrics.registry.get_sample_value(
            "flock_reconciler_route_writes_total", {"op": "add", "result": "ok"}
        ) == 3
    finally:
        waker.stop()
        thread.join(5)
        monitor.stop()
        reconciler.kernel.close()
