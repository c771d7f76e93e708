"""Issue 11, reconciler side, end to end: real kernel, real BIRD 2, FRR as the BGP peer.

- #5 a corrupt record (and 50,000 junk files) next to good ones: a new Ready
  pod still reaches the peer, the corrupt record's pod stays advertised;
- #6 BIRD killed, a pod goes NotReady, BIRD restarts: the prefix never comes
  back at the peer, and the route goes soon after, whatever the back-off;
- #7 hand-written committed records for the peer's address, the node's own
  address and an address outside the pools never reach the kernel or the peer.

Same lab as tests/e2e/test_reconciler_lab.py (fixtures in conftest.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from datetime import UTC, datetime

import pytest

from lab.daemons import wait_until
from lab.topology import NETWORK_NAME, ROUTER_UPLINK4, ROUTER_UPLINK6, Lab, Pod, PrefixWatcher, host_prefix
from netconf.state import StateStore
from netconf.values import Allocation, PodRef
from tests.e2e.test_reconciler_lab import (
    DEADLINE,
    passes,
    wait_at_peer,
    wait_not_at_peer,
    wait_pass_since,
    wait_routed,
    wait_unrouted,
)

pytestmark = [pytest.mark.root, pytest.mark.e2e]

A = ("2001:db8:a::53", "192.0.2.53")
B = ("2001:db8:a::54", "192.0.2.54")


def record_path(lab: Lab, pod: Pod) -> str:
    return StateStore(lab.state_dir).path_of((NETWORK_NAME, pod.container_id, pod.ifname))


def unreadable_log_lines(lab: Lab) -> int:
    with open(lab.reconciler_log_path, encoding="utf-8") as handle:
        return sum("state record unreadable" in line or "more state records unreadable" in line for line in handle)


def readyz(lab: Lab) -> tuple[int, dict]:
    reply = lab.http_get("/readyz")
    return reply.status, json.loads(reply.body)


# -- 5 -----------------------------------------------------------------------------------


def test_a_corrupt_record_blocks_only_itself(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", A, ready=True)
    lab.start_reconciler()
    wait_routed(lab, [pod_a], A)
    wait_at_peer(lab, A)

    path = record_path(lab, pod_a)
    with open(path, "wb") as handle:  # torn by hand: not JSON any more
        handle.write(b'{"version": 2, "allocation": {"network"')
    wait_until(lambda: readyz(lab)[1]["unreadable_records"] == 1, DEADLINE, "the corrupt record reported")
    pod_b = lab.add_pod("b", B, ready=True)

    wait_routed(lab, [pod_b], B)
    wait_at_peer(lab, B)
    status, detail = readyz(lab)
    assert status == 200 and detail["problems"] == [], detail
    assert any(os.path.basename(path) in warning for warning in detail["warnings"]), detail
    assert lab.metrics()["flock_reconciler_state_unreadable_records"] == 1
    # a's last good view is kept: still routed and advertised.
    assert lab.peer_has(A[0]) and lab.peer_has(A[1])
    assert lab.node_route(A[1]) == [pod_a.next_hop(A[1])]

    # b deleted while a's record is still corrupt: its prefix goes (the seed froze it).
    lab.remove_pod(pod_b, plugins=["flock-anycast"])
    wait_not_at_peer(lab, B)
    wait_unrouted(lab, B, timeout=DEADLINE + lab.drain_delay)
    assert lab.peer_has(A[0])


def test_fifty_thousand_junk_records_do_not_stall_the_node(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", A, ready=True)
    lab.start_reconciler()
    wait_at_peer(lab, A)
    allocations = os.path.dirname(record_path(lab, pod_a))
    for index in range(50_000):
        with open(os.path.join(allocations, f"junk{index:05d}.json"), "wb") as handle:
            handle.write(b"{not json")

    started = time.monotonic()
    pod_b = lab.add_pod("b", B, ready=True)
    wait_at_peer(lab, B, timeout=30.0)
    took = time.monotonic() - started

    wait_until(lambda: readyz(lab)[1]["unreadable_records"] == 50_000, DEADLINE, "junk reported")
    status, detail = readyz(lab)
    assert status == 200 and len(detail["warnings"]) <= 21
    # Each record is logged when it appears (at most 20 a pass, then a sum),
    # never again on later passes.
    logged = unreadable_log_lines(lab)
    assert logged < 1_000, f"{logged} log lines for 50,000 junk records"
    before = passes(lab)
    lab.set_ready(pod_b, True)  # rewrites the readiness file: another pass
    wait_pass_since(lab, before)
    assert unreadable_log_lines(lab) == logged
    assert lab.node_route(B[1]) == [pod_b.next_hop(B[1])]
    print(f"new pod at the peer {took:.2f}s after ADD with 50,000 junk records")


# -- 6 -----------------------------------------------------------------------------------


def test_not_ready_while_bird_is_down_is_never_advertised_again(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    lab.drain_delay = 0.5
    pod_a = lab.add_pod("a", A, ready=True)
    lab.add_pod("b", B, ready=True)
    # A long back-off: BIRD's return must be noticed by the probe, not the retry timer.
    lab.start_reconciler(bird={"retry": {"initial": 20, "maximum": 60}, "probeInterval": 0.2})
    wait_at_peer(lab, A + B)

    lab.bird.kill()
    # The peer notices the session is gone (the killed BIRD's TCP connection
    # closes) and drops the node's routes; only then is "came back" meaningful.
    for address in A + B:
        wait_until(lambda address=address: not lab.peer_has(address), DEADLINE, f"{address} gone at the peer")
    lab.set_ready(pod_a, False)
    staged = {host_prefix(address) for address in B}
    wait_until(
        lambda: all(host_prefix(address) not in open(lab.include_path).read() for address in A),
        DEADLINE,
        "the include on disk without pod a's prefixes",
    )
    assert all(prefix in open(lab.include_path).read() for prefix in staged)
    # BIRD never confirmed the withdrawal: the routes stay meanwhile.
    assert lab.node_route(A[1]) == [pod_a.next_hop(A[1])]

    prefixes = [host_prefix(address) for address in A + B]
    with PrefixWatcher(lab.frr, prefixes) as watcher:
        restarted = time.monotonic()
        lab.start_bird()
        lab.wait_sessions(DEADLINE)
        wait_at_peer(lab, B)
        wait_unrouted(lab, A, timeout=DEADLINE)
        unrouted = time.monotonic() - restarted
    for address in A:
        assert [present for _, present in watcher.transitions[host_prefix(address)]] in ([], [False]), (
            f"{address} came back at the peer after BIRD restarted: {watcher.transitions[host_prefix(address)]}"
        )
    # Probe (0.2 s) + apply + drain (0.5 s); the retry timer alone would take 20 s.
    assert unrouted < 5.0, f"route of the NotReady pod removed {unrouted:.2f}s after BIRD restarted"
    wait_until(lambda: readyz(lab)[0] == 200, DEADLINE, "ready again")
    print(f"NotReady pod's route removed {unrouted:.2f}s after BIRD restarted; never re-advertised")


# -- 7 -----------------------------------------------------------------------------------


def hand_written_record(lab: Lab, pod: Pod, container_id: str, anycast: tuple[str, ...]) -> None:
    """A committed record no plugin wrote, for a real pod's IPs (what the issue's attacker did)."""
    now = datetime.now(UTC)
    allocation = Allocation(
        network=NETWORK_NAME,
        container_id=container_id,
        ifname="eth0",
        netns=pod.netns.path,
        pod=PodRef(namespace="lab", name=container_id, uid=container_id),
        anycast=tuple(ipaddress.ip_address(a) for a in anycast),
        pod_ips=(ipaddress.ip_address(pod.ip(4)), ipaddress.ip_address(pod.ip(6))),
        state="committed",
        created_at=now,
        updated_at=now,
    )
    with StateStore(lab.state_dir).transaction() as transaction:
        transaction.put(allocation)


def test_records_outside_the_pools_or_for_own_addresses_never_reach_the_peer(reconciler_lab: Lab) -> None:
    lab = reconciler_lab
    pod_a = lab.add_pod("a", A, ready=True)
    node_own = "192.0.2.200"  # in the pools, but an address of the node itself
    with lab.node.iproute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=node_own, prefixlen=32)
    hostile = (ROUTER_UPLINK4, ROUTER_UPLINK6, "203.0.113.7", node_own, pod_a.ip(4))
    lab.set_ready_container("evil", True)
    lab.start_reconciler()
    wait_at_peer(lab, A)

    with PrefixWatcher(lab.frr, [host_prefix(address) for address in hostile]) as watcher:
        hand_written_record(lab, pod_a, "evil", hostile + (B[1],))
        wait_at_peer(lab, [B[1]])  # the record's in-pool address is served: the pass ran
    for address in hostile:
        assert lab.node_route(address) is None, f"{address} was routed"
        assert not lab.peer_has(address)
        seen = watcher.transitions[host_prefix(address)]
        assert not any(present for _, present in seen), f"{address} reached the peer: {seen}"
    metrics = lab.metrics()
    # The peer's addresses and the pod IP are outside the pools here (pools are checked first);
    # the peer-address and pod-ip rules for in-pool addresses: tests/unit/test_reconciler_hardening.py.
    assert metrics['flock_reconciler_refused_addresses{reason="outside-pools"}'] == 4
    assert metrics['flock_reconciler_refused_addresses{reason="node-address"}'] == 1
    status, detail = readyz(lab)
    assert status == 200 and detail["refused_addresses"] == 5
    with open(lab.reconciler_log_path, encoding="utf-8") as handle:
        assert sum("anycast address refused" in line for line in handle) == 5
