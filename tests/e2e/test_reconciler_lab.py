"""flock-reconciler end to end: real kernel, real BIRD 2, FRR as the BGP peer.

Topology (lab/topology.py): router netns (FRR zebra+bgpd, AS 65000)
── veth ── node netns (BIRD 2 in include mode, flock-reconciler) ── ptp veths
── pod netns, each attached through the real chain (Debian ptp + host-local,
then flock-anycast) from inside the node netns. Readiness comes from the
``file`` source, which the lab rewrites atomically.

Numbering follows issue 3 ("How it must be proven"). Every wait is a poll
with a deadline; the deadlines are generous because a loaded 2-core machine
is slow to exec Python, while the asserted orderings are exact.
"""

from __future__ import annotations

import os
import time

import pytest

from lab.daemons import wait_until
from lab.topology import (
    ROUTE_PROTOCOL,
    Lab,
    Pod,
    PrefixWatcher,
    RouteMonitor,
    host_prefix,
)

pytestmark = [pytest.mark.root, pytest.mark.e2e]

V6 = "2001:db8:a::53"
V4 = "192.0.2.53"
ANYCAST = (V6, V4)
DEADLINE = 15.0


# --------------------------------------------------------------------------
# helpers


def route_is(lab: Lab, address: str, pods: list[Pod]) -> bool:
    """The node's route of our protocol to ``address`` has exactly these pods as next hops."""
    return lab.node_route(address) == lab.expected_next_hops(address, pods)


def wait_routed(lab: Lab, pods: list[Pod], addresses=ANYCAST, timeout: float = DEADLINE) -> None:
    for address in addresses:
        wait_until(
            lambda a=address: route_is(lab, a, pods),
            timeout,
            f"node route {address} via {[p.name for p in pods]} "
            f"(expected {lab.expected_next_hops(address, pods)})",
        )


def wait_unrouted(lab: Lab, addresses=ANYCAST, timeout: float = DEADLINE) -> None:
    for address in addresses:
        wait_until(lambda a=address: lab.node_route(a) is None, timeout, f"node route {address} removed")


def wait_at_peer(lab: Lab, addresses=ANYCAST, timeout: float = DEADLINE) -> None:
    for address in addresses:
        wait_until(lambda a=address: lab.peer_has(a), timeout, f"{address} in FRR's BGP RIB")


def wait_not_at_peer(lab: Lab, addresses=ANYCAST, timeout: float = DEADLINE) -> None:
    for address in addresses:
        wait_until(lambda a=address: not lab.peer_has(a), timeout, f"{address} gone from FRR's BGP RIB")


def our_events(monitor: RouteMonitor, addresses=ANYCAST) -> list:
    prefixes = {host_prefix(a) for a in addresses}
    return [e for e in monitor.matching(protocol=ROUTE_PROTOCOL) if e.prefix in prefixes]


BIRD_FAILURES = "flock_reconciler_bird_apply_failures_total"
BIRD_RELOADS = "flock_reconciler_bird_reloads_total"
PASSES_OK = 'flock_reconciler_passes_total{result="ok"}'


def passes(lab: Lab) -> float:
    return lab.metrics().get(PASSES_OK, 0.0)


def wait_pass_since(lab: Lab, count_before: float) -> None:
    """Wait until a reconcile pass completed since ``passes(lab)`` read ``count_before``.

    Read the count before causing a change, observe the change, then call
    this: passes run one at a time, so the pass that made the change is
    over, including any BIRD step that would have followed it.
    """
    wait_until(lambda: passes(lab) > count_before, DEADLINE, "a completed reconcile pass")


def reconciler_reports_bird_trouble(lab: Lab, failures_before: float) -> bool:
    """/readyz is not 200, or the BIRD apply-failure counter went up."""
    if lab.http_get("/readyz").status != 200:
        return True
    return lab.metrics().get(BIRD_FAILURES, 0.0) > failures_before


# --------------------------------------------------------------------------
# 0. the lab itself


def test_lab_data_path_without_reconciler(lab: Lab) -> None:
    """A hand-written static reaches FRR, the router's FIB, and a pod answers the ping."""
    lab.validate()


# --------------------------------------------------------------------------
# 1. Ready → routed, advertised, answered


def test_ready_pod_is_routed_advertised_and_answered(reconciler_lab: Lab) -> None:
    """Pod a names its addresses in CNI_ARGS, pod rc in runtimeConfig.anycast (capability)."""
    lab = reconciler_lab
    pod = lab.add_pod("a", ANYCAST, ready=True)
    other = ("2001:db8:a::54", "192.0.2.54")
    pod_rc = lab.add_pod("rc", other, via="runtime_config", ready=True)
    lab.start_reconciler()

    wait_routed(lab, [pod])
    wait_routed(lab, [pod_rc], addresses=other)
    wait_at_peer(lab, ANYCAST + other)
    for owner, addresses in ((pod, ANYCAST), (pod_rc, other)):
        for address in addresses:
            assert lab.node_route(address) == [owner.next_hop(address)]
            entry = lab.frr.bgp_prefix(host_prefix(address))
            assert entry is not None
            wait_until(lambda a=address: lab.router_route(a), DEADLINE, f"router FIB route to {address}")
            answered = lab.answering_pod(address)
            assert answered is owner, (
                f"ping {address} from the router answered by {answered and answered.name}, not {owner.name}"
            )


# --------------------------------------------------------------------------
# 2. NotReady → withdrawn at the peer before the kernel route goes


def test_not_ready_withdraws_before_route_is_removed(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    # A drain delay well above FRR's withdrawal processing (~55 ms, more on
    # a loaded machine), so the observed order is the reconciler's doing.
    lab.drain_delay = 1.0
    pod = lab.add_pod("a", ANYCAST, ready=True)
    lab.start_reconciler()
    wait_routed(lab, [pod])
    wait_at_peer(lab)

    prefixes = [host_prefix(a) for a in ANYCAST]
    with RouteMonitor(lab.node) as monitor, PrefixWatcher(lab.frr, prefixes) as watcher:
        flipped = time.monotonic()
        lab.set_ready(pod, False)
        wait_not_at_peer(lab)
        wait_unrouted(lab, timeout=DEADLINE + lab.drain_delay)
        # The DEL event may trail the dump that saw the route gone by a hair.
        wait_until(lambda: len([e for e in our_events(monitor) if e.event == "RTM_DELROUTE"]) >= 2, 2, "DEL events")

    for address, prefix in zip(ANYCAST, prefixes, strict=True):
        withdrawn = watcher.first(prefix, present=False, after=flipped)
        deletes = [e for e in our_events(monitor, [address]) if e.event == "RTM_DELROUTE"]
        assert withdrawn is not None, f"{prefix}: never seen leaving FRR"
        assert deletes, f"{prefix}: no RTM_DELROUTE seen"
        removed = deletes[0].at
        assert withdrawn < removed, (
            f"{prefix}: kernel route removed {removed - withdrawn:+.3f}s relative to the withdrawal at the peer"
        )
        # Withdraw first, then remove the route after the drain delay.
        assert removed - flipped >= lab.drain_delay * 0.9, (
            f"{prefix}: route removed {removed - flipped:.3f}s after NotReady, drain delay is {lab.drain_delay}s"
        )


# --------------------------------------------------------------------------
# 3. Two pods, one address → one ECMP route; shrinking it never reloads BIRD


def test_shared_address_is_one_ecmp_route_without_bird_reloads(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", ANYCAST, ready=True)
    pod_b = lab.add_pod("b", ANYCAST, ready=True)
    lab.start_reconciler()

    wait_routed(lab, [pod_a, pod_b])
    wait_at_peer(lab)
    for address in ANYCAST:
        assert len(lab.node_route(address)) == 2

    reloads = lab.bird.reconfigurations()
    reported_reloads = lab.metrics()[BIRD_RELOADS]
    prefixes = [host_prefix(a) for a in ANYCAST]
    with PrefixWatcher(lab.frr, prefixes) as watcher:
        before = passes(lab)
        lab.set_ready(pod_a, False)
        wait_routed(lab, [pod_b])
        wait_pass_since(lab, before)
        for address in ANYCAST:
            assert lab.peer_has(address), f"{address} left the peer while pod b still serves it"
    for prefix in prefixes:
        assert [present for _, present in watcher.transitions[prefix]] == [True], (
            f"{prefix} flapped at the peer: {watcher.transitions[prefix]}"
        )
    assert lab.bird.reconfigurations() == reloads, "BIRD was reloaded for a next hop leaving"
    assert lab.metrics()[BIRD_RELOADS] == reported_reloads

    # ... and growing it back does not reload either.
    before = passes(lab)
    lab.set_ready(pod_a, True)
    wait_routed(lab, [pod_a, pod_b])
    wait_pass_since(lab, before)
    assert lab.bird.reconfigurations() == reloads, "BIRD was reloaded for a next hop joining"

    lab.set_readiness({pod_a: False, pod_b: False})
    wait_not_at_peer(lab)
    wait_unrouted(lab)


# --------------------------------------------------------------------------
# 4. Restart adopts routes; orphans go; a deleted route comes back


def test_restart_keeps_routes_removes_orphans_and_restores_deleted(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", ANYCAST, ready=True)
    pod_b = lab.add_pod("b", ANYCAST, ready=True)
    lab.start_reconciler()
    wait_routed(lab, [pod_a, pod_b])
    wait_at_peer(lab)

    with RouteMonitor(lab.node) as monitor:
        assert lab.stop_reconciler() == 0, "reconciler did not exit cleanly on SIGTERM"
        # Routes outlive the process: a restart must not flap the service.
        for address in ANYCAST:
            assert route_is(lab, address, [pod_a, pod_b])
        lab.start_reconciler()
        wait_until(lambda: lab.http_get("/readyz").status == 200, DEADLINE, "restarted reconciler ready")

        # An orphan of our protocol: the restarted loop removes it (and its
        # netlink event proves the loop has run since the restart).
        orphan = "2001:db8:a::dead"
        lab.add_node_route(orphan, pod_a)
        wait_until(lambda: lab.node_route(orphan) is None, DEADLINE, "orphan route removed")
        churn = our_events(monitor)
    assert churn == [], f"restart touched our routes: {churn}"
    for address in ANYCAST:
        assert route_is(lab, address, [pod_a, pod_b])
        assert lab.peer_has(address)

    # A route deleted by hand is put back (netlink events wake the loop).
    lab.delete_node_route(V6)
    wait_routed(lab, [pod_a, pod_b], addresses=[V6])
    # A wrong route of ours is corrected in place.
    lab.add_node_route(V4, pod_a)
    wait_routed(lab, [pod_a, pod_b], addresses=[V4])


# --------------------------------------------------------------------------
# 5. BIRD down, and a rejected config


def test_bird_down_is_survived_reported_and_caught_up(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", ANYCAST, ready=True)
    other = ("2001:db8:a::54", "192.0.2.54")
    pod_b = lab.add_pod("b", other, ready=False)
    lab.start_reconciler()
    wait_routed(lab, [pod_a])
    wait_at_peer(lab)

    failures = lab.metrics().get(BIRD_FAILURES, 0.0)
    lab.bird.kill()
    lab.set_readiness({pod_a: False, pod_b: True})
    wait_routed(lab, [pod_b], addresses=other)  # advertise: the kernel route comes first, BIRD or not
    wait_until(lambda: reconciler_reports_bird_trouble(lab, failures), DEADLINE, "reconciler reporting BIRD down")
    assert lab.reconciler.running(), "reconciler died with BIRD"
    assert lab.http_get("/healthz").status == 200

    lab.start_bird()
    lab.wait_sessions(DEADLINE)
    wait_at_peer(lab, other)
    wait_not_at_peer(lab)
    expected = {host_prefix(a) for a in other}
    wait_until(
        lambda: lab.bird.exported_prefixes("uplink_v6") | lab.bird.exported_prefixes("uplink_v4") == expected,
        DEADLINE,
        f"BIRD exporting exactly {sorted(expected)}",
    )
    wait_until(lambda: lab.http_get("/readyz").status == 200, DEADLINE, "reconciler ready again")
    wait_unrouted(lab)


def test_rejected_config_keeps_last_good_include(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", ANYCAST, ready=True)
    other = ("2001:db8:a::54",)
    pod_b = lab.add_pod("b", other, ready=False)
    lab.start_reconciler()
    wait_routed(lab, [pod_a])
    wait_at_peer(lab)
    with open(lab.include_path, "rb") as handle:
        good = handle.read()
    failures = lab.metrics().get(BIRD_FAILURES, 0.0)

    # The operator's bird.conf (which includes ours) breaks: every
    # `configure check` is now rejected with an 8xxx/9xxx code.
    with open(lab.bird.config_path, "a", encoding="utf-8") as handle:
        handle.write("\nthis is not bird syntax;\n")
    lab.set_ready(pod_b, True)
    wait_routed(lab, [pod_b], addresses=other)
    wait_until(lambda: reconciler_reports_bird_trouble(lab, failures), DEADLINE, "reconciler reporting the rejection")
    with open(lab.include_path, "rb") as handle:
        assert handle.read() == good, "a rejected candidate was left in the include file"
    assert not lab.peer_has(other[0])
    assert lab.reconciler.running()

    # Repaired: the retry with back-off applies the pending change.
    with open(lab.bird.config_path, encoding="utf-8") as handle:
        repaired = handle.read().replace("\nthis is not bird syntax;\n", "")
    lab.bird.write_config(repaired)
    wait_at_peer(lab, other)
    wait_at_peer(lab)


# --------------------------------------------------------------------------
# 6. Pod DEL through the plugin


def test_pod_del_withdraws_and_removes_route(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod = lab.add_pod("a", ANYCAST, ready=True)
    lab.start_reconciler()
    wait_routed(lab, [pod])
    wait_at_peer(lab)

    # flock-anycast's DEL alone first: the veth still exists, so a vanishing
    # route is the reconciler's doing, not the kernel dropping a dead link.
    with RouteMonitor(lab.node) as monitor:
        lab.remove_pod(pod, plugins=["flock-anycast"])
        wait_not_at_peer(lab)
        wait_unrouted(lab, timeout=DEADLINE + lab.drain_delay)
        assert all(address not in pod.netns.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout for address in ANYCAST)
    assert [e.event for e in our_events(monitor)].count("RTM_DELROUTE") >= 2

    # Then the whole chain, as the runtime runs it (DEL again is harmless).
    lab.remove_pod(pod)
    assert not os.path.exists(pod.netns.path)
    assert not lab.peer_has(V6) and not lab.peer_has(V4)
