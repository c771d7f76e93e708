"""Issue 11, reconciler side, against the in-memory fakes (no root):

- #5 one unreadable record keeps only its own last good allocation;
- #6 a returning BIRD is noticed by a probe, independent of the back-off;
- #7 pools, the node's and the peers' addresses and pod IPs are never routed.

The same defects against a real BIRD and an FRR peer: tests/e2e/test_reconciler_hardening.py.
"""

from __future__ import annotations

import logging
import time
from ipaddress import ip_address, ip_network

import pytest

from netconf.errors import StateCorrupt
from netconf.state import record_file_name
from netconf.values import Allocation, utc_now
from reconciler.desired import AddressPolicy, desired_routes, refused_addresses
from reconciler.loop import LoopSettings, Scheduler, Waker
from tests.reconciler_fakes import FakeStore
from tests.unit.simulated_time import SimulatedClock
from tests.unit.test_loop import HA4, HA6, HB4, HB6, P4, P6, POD_A, POD_B, Lab, allocation, metric, ops

POOLS = (ip_network("2001:db8:a::/64"), ip_network("192.0.2.0/24"))
Q4 = ip_network("192.0.2.54/32")
Q6 = ip_network("2001:db8:a::54/128")
POD_C = allocation("c", ["10.1.0.4", "fd00::4"], anycast=("2001:db8:a::54", "192.0.2.54"))


def with_pod_c(lab: Lab) -> None:
    lab.kernel.attach(ip_address("10.1.0.4"), "veth-c")
    lab.kernel.attach(ip_address("fd00::4"), "veth-c")
    lab.readiness.ready.add("c")


# -- 5. one unreadable record ------------------------------------------------------


def test_unreadable_record_keeps_its_last_good_view_and_the_rest_goes_on():
    lab = Lab(POD_A, POD_B)
    lab.reconcile()
    lab.store.corrupt_record(POD_B.key)
    with_pod_c(lab)
    lab.store.allocations.append(POD_C)  # a new Ready pod while b's record is corrupt

    report = lab.reconcile()

    assert report.ok
    assert lab.kernel.routes[P4] == {HA4, HB4}, "b's last good allocation was dropped"
    assert lab.kernel.routes[Q4] == {ip_hop("10.1.0.4", "veth-c")}
    assert lab.bird.exported == {P4, P6, Q4, Q6}, "a new Ready pod was not advertised"
    assert report.unreadable == (record_file_name(POD_B.key),)
    health = lab.reconciler.health()
    assert health.ready and health.state_ok and health.unreadable_records == 1
    assert any("flocknet+b+eth0.json" in warning and "last good" in warning for warning in health.warnings)
    assert metric(lab, "flock_reconciler_state_unreadable_records") == 1
    assert metric(lab, "flock_reconciler_state_records_kept_last_good") == 1


def test_other_records_change_while_one_is_unreadable():
    """The seed froze everything: a deleted pod stayed advertised and a NotReady one too."""
    lab = Lab(POD_A, POD_B, drain_delay=0.0)
    lab.reconcile()
    lab.store.corrupt_record(POD_B.key)
    lab.store.allocations = []  # pod a deleted

    lab.reconcile()
    lab.reconcile()

    assert lab.bird.exported == {P4, P6}  # still b, from its last good view
    assert lab.kernel.routes == {P4: {HB4}, P6: {HB6}}


def test_deleted_unreadable_record_is_forgotten_and_a_never_good_one_contributes_nothing():
    lab = Lab(POD_A, drain_delay=0.0)
    lab.reconcile()
    name = lab.store.corrupt_record(POD_A.key)
    lab.store.unreadable["flocknet+junk+eth0.json"] = StateCorrupt("junk")
    lab.reconcile()
    assert lab.bird.exported == {P4, P6}

    del lab.store.unreadable[name]  # the file was removed (pod gone)
    lab.reconcile()
    lab.reconcile()

    assert lab.bird.exported == frozenset()
    assert lab.kernel.routes == {}
    assert lab.reconciler.health().unreadable_records == 1  # only the junk file is left


def test_record_readable_again_is_used_as_it_is_now():
    lab = Lab(POD_A, POD_B)
    lab.reconcile()
    lab.store.corrupt_record(POD_B.key)
    lab.reconcile()
    lab.store.unreadable.clear()
    lab.store.allocations.append(POD_B.replace(anycast=(ip_address("2001:db8:a::54"),)))
    lab.reconcile()

    assert lab.kernel.routes[Q6] == {HB6}
    assert lab.kernel.routes[P6] == {HA6}
    assert lab.reconciler.health().unreadable_records == 0


def test_unreadable_record_is_logged_once_not_every_pass(caplog):
    lab = Lab(POD_A, POD_B)
    lab.reconcile()
    lab.store.corrupt_record(POD_B.key)
    with caplog.at_level(logging.INFO, logger="reconciler.loop"):
        for _ in range(5):
            lab.reconcile(full=True)
        lab.store.unreadable.clear()
        lab.store.allocations.append(POD_B)
        lab.reconcile()
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("state record unreadable, keeping its last good allocation") == 1
    assert messages.count("state record readable again") == 1


def test_fifty_thousand_unreadable_records_are_reported_in_bounded_size(caplog):
    lab = Lab(POD_A)
    junk = StateCorrupt("not valid JSON")
    lab.store.unreadable = {f"junk{index}.json": junk for index in range(50_000)}
    with caplog.at_level(logging.INFO, logger="reconciler.loop"):
        lab.reconcile()
        started = time.perf_counter()
        lab.reconcile()
        second = time.perf_counter() - started
    assert lab.bird.exported == {P4, P6}
    assert len(caplog.records) < 50, "one log line per junk file"
    health = lab.reconciler.health()
    assert health.unreadable_records == 50_000 and len(health.warnings) <= 21
    assert second < 1.0, f"a pass over 50,000 unchanged junk records took {second:.3f}s"


# -- 7. what a record may not make us route -------------------------------------------


def ip_hop(gateway: str, device: str):
    from reconciler.desired import NextHop

    return NextHop(ip_address(gateway), device)


@pytest.mark.parametrize(
    "anycast, reason",
    [
        ("198.51.100.1", "outside-pools"),  # e.g. the BGP peer's own address, outside the pools
        ("2001:db8:b::1", "outside-pools"),
        ("192.0.2.1", "node-address"),
        ("192.0.2.2", "peer-address"),
        ("192.0.2.77", "pod-ip"),
    ],
)
def test_policy_refuses(anycast, reason):
    policy = AddressPolicy(POOLS, frozenset({ip_address("192.0.2.1")}), frozenset({ip_address("192.0.2.2")}))
    record = allocation("x", ["10.1.0.2"], anycast=(anycast,))
    other = allocation("y", ["192.0.2.77"], anycast=())

    refused = refused_addresses([record, other], policy)

    assert [(item.anycast, item.reason) for item in refused] == [(ip_address(anycast), reason)]
    assert desired_routes([record, other], lambda _: True, lambda _: "veth-x", policy).routes == {}


def test_policy_lets_pool_addresses_through_and_ignores_pending_records():
    policy = AddressPolicy(POOLS)
    pending = allocation("p", ["10.1.0.2"], anycast=("203.0.113.9",), state="pending")
    assert refused_addresses([POD_A, pending], policy) == ()
    assert set(desired_routes([POD_A], lambda _: True, lambda _: "veth-a", policy).routes) == {P4, P6}


def test_refused_address_is_never_routed_and_reported_loudly_once(caplog):
    peer = allocation("evil", ["10.1.0.2", "fd00::2"], anycast=("198.51.100.1", "2001:db8:a::53"))
    lab = Lab(peer, POD_B, ready=("evil", "b"))
    with caplog.at_level(logging.INFO, logger="reconciler.loop"):
        report = lab.reconcile()
        lab.reconcile(full=True)

    assert ip_network("198.51.100.1/32") not in lab.kernel.routes
    assert ip_network("198.51.100.1/32") not in lab.bird.exported
    assert lab.kernel.routes[P6] == {HA6, HB6}  # the record's in-pool address is still served
    assert [(item.anycast, item.reason) for item in report.refused] == [(ip_address("198.51.100.1"), "outside-pools")]
    refused_logs = [r for r in caplog.records if r.getMessage() == "anycast address refused, not routed or advertised"]
    assert len(refused_logs) == 1 and refused_logs[0].levelno == logging.ERROR
    assert metric(lab, "flock_reconciler_refused_addresses", reason="outside-pools") == 1
    health = lab.reconciler.health()
    assert health.ready and health.refused_addresses == 1
    assert any("198.51.100.1" in warning for warning in health.warnings)


def test_node_and_peer_addresses_come_from_the_kernel_and_bird_adapters():
    own = allocation("own", ["10.1.0.2"], anycast=("192.0.2.10",))
    peer = allocation("peer", ["10.1.0.2"], anycast=("192.0.2.11",))
    lab = Lab(own, peer, POD_A, ready=("own", "peer", "a"))
    lab.kernel.local_addresses = {ip_address("192.0.2.10")}
    lab.bird.peers = frozenset({ip_address("192.0.2.11")})

    report = lab.reconcile()

    assert {(str(item.anycast), item.reason) for item in report.refused} == {
        ("192.0.2.10", "node-address"),
        ("192.0.2.11", "peer-address"),
    }
    assert set(lab.kernel.routes) == {P4, P6}


def test_an_address_already_routed_is_withdrawn_when_it_becomes_refused():
    lab = Lab(POD_A, drain_delay=0.0)
    lab.reconcile()
    lab.kernel.local_addresses = {ip_address("192.0.2.53")}  # someone put it on the node itself
    mark = lab.mark()
    lab.reconcile()
    lab.reconcile()
    assert ops(lab.since(mark)) == ["bird.export", "kernel.delete"]
    assert set(lab.kernel.routes) == {P6}


def test_reconciler_needs_pools():
    from reconciler.loop import Reconciler

    lab = Lab(POD_A)
    with pytest.raises(ValueError, match="pool"):
        Reconciler(
            store=FakeStore(), readiness=lab.readiness, kernel=lab.kernel, bird=lab.bird, settings=lab.settings, pools=()
        )


# -- 6. BIRD returning -----------------------------------------------------------------


def test_bird_down_is_probed_and_its_return_re_applies_without_waiting_for_the_back_off():
    lab = Lab(POD_A, POD_B, retry_initial=0.5, retry_maximum=30.0)
    lab.reconcile()
    lab.bird.kill()
    lab.readiness.ready = {"a", "b", "c"}  # a change, so that BIRD is asked (and found down)
    with_pod_c(lab)
    lab.store.allocations.append(POD_C)
    for _ in range(6):  # BIRD down for a while: the back-off grows to 16 s
        lab.reconcile()
        lab.clock.advance(lab.reconciler.next_deadline() - lab.clock.now)
    lab.readiness.ready = {"b"}
    lab.reconcile()  # a NotReady while BIRD is down
    assert lab.bird.on_disk == {P4, P6}  # staged: c went NotReady, b still serves a's prefixes
    lab.readiness.ready = set()
    lab.reconcile()
    assert lab.bird.on_disk == frozenset(), "the include on disk still advertises more than desired"
    assert lab.reconciler.next_deadline() - lab.clock.now > 10, "test premise: a long back-off"
    assert lab.kernel.routes, "routes must stay until BIRD itself confirmed the withdrawal"

    probe_at = lab.reconciler.next_bird_probe()
    assert probe_at is not None and probe_at - lab.clock.now <= lab.settings.bird_probe_interval
    assert lab.reconciler.probe_bird() is False
    lab.bird.restart()  # loads the staged file: advertises nothing
    assert lab.bird.exported == frozenset()
    lab.clock.advance(lab.settings.bird_probe_interval)
    assert lab.reconciler.probe_bird() is True
    assert lab.reconciler.next_bird_probe() is None

    report = lab.reconcile()
    assert report.bird_called and lab.reconciler.health().bird_ok
    lab.clock.advance(lab.settings.drain_delay)
    lab.reconcile()
    assert lab.kernel.routes == {}


def test_a_rejected_config_is_not_probed_it_waits_out_the_back_off():
    lab = Lab(POD_A)
    lab.bird.rejecting = True
    lab.reconcile()
    assert lab.reconciler.next_bird_probe() is None


def test_scheduler_probes_between_passes_and_runs_a_pass_when_bird_is_back():
    lab = Lab(POD_A, retry_initial=30.0, retry_maximum=30.0)
    clock = SimulatedClock()  # the scheduler runs on this thread, in simulated time
    lab.reconciler.clock = lab.clock = clock
    settings = LoopSettings(resync_interval=3600, retry_initial=30.0, retry_maximum=30.0, bird_probe_interval=0.02)
    lab.reconciler.settings = settings
    lab.bird.kill()
    waker = Waker(clock=clock)
    reports = []
    pass_times = []

    def on_pass(report):
        reports.append(report)
        pass_times.append(clock.now)

    scheduler = Scheduler(lab.reconciler, waker, settings, on_pass=on_pass)
    before_restart = {}

    def restart():
        before_restart.update(probes=lab.bird.probes, reports=len(reports))
        lab.bird.restart()

    t0 = clock.now
    clock.at(t0 + 0.1, restart)
    clock.at(t0 + 1.0, waker.stop)

    scheduler.run()

    assert before_restart["probes"] >= 3, "the scheduler did not probe BIRD"
    assert before_restart["reports"] == 1, "a failed probe ran a pass"
    assert lab.reconciler.health().bird_ok, "BIRD's return was not re-applied"
    assert len(reports) == 2
    # Re-applied within a probe interval of BIRD's return, not after the 30 s back-off.
    assert pass_times[1] - (t0 + 0.1) <= settings.bird_probe_interval + 1e-9


def test_a_prefix_staged_while_bird_was_down_keeps_its_route_until_bird_confirms():
    """A BIRD starting on the staged include may advertise it: no route deletion on an unconfirmed withdrawal."""
    lab = Lab(POD_A, drain_delay=0.0)
    lab.reconcile()
    lab.bird.kill()
    with_pod_c(lab)
    lab.store.allocations.append(POD_C)
    lab.reconcile()  # c's prefixes routed and staged, never confirmed
    assert lab.bird.on_disk == {P4, P6, Q4, Q6}
    lab.readiness.ready.discard("c")
    lab.reconcile()
    lab.clock.advance(60.0)
    lab.reconcile()
    assert {Q4, Q6} <= set(lab.kernel.routes), "a possibly advertised prefix lost its route"
    lab.bird.restart()
    assert lab.reconciler.probe_bird()
    lab.reconcile()
    lab.reconcile()
    assert set(lab.kernel.routes) == {P4, P6}


# --- the plugin's address rules hold for records too --------------------------------------


@pytest.mark.parametrize(
    "anycast, reason",
    [
        ("192.0.2.0", "outside-pools"),  # the pool's network address
        ("192.0.2.255", "outside-pools"),  # its broadcast address
        ("2001:db8:a::", "outside-pools"),  # Subnet-Router anycast of the IPv6 pool
    ],
)
def test_pool_edges_the_plugin_refuses_are_refused_in_records_too(anycast, reason):
    policy = AddressPolicy(pools=(ip_network("192.0.2.0/24"), ip_network("2001:db8:a::/64")))
    verdict = policy.refusal(ip_address(anycast), frozenset())
    assert verdict is not None and verdict[0] == reason and "address of pool" in verdict[1]
    assert policy.refusal(ip_address("192.0.2.53"), frozenset()) is None


def test_special_addresses_are_refused_even_inside_a_pool():
    policy = AddressPolicy(pools=(ip_network("0.0.0.0/0"), ip_network("::/0")))
    for text in ("127.0.0.1", "224.0.0.5", "169.254.1.1", "250.0.0.1", "::ffff:192.0.2.53", "fe80::1"):
        verdict = policy.refusal(ip_address(text), frozenset())
        assert verdict is not None and verdict[0] == "special-address", text


def test_a_record_whose_pod_ip_is_no_usable_next_hop_is_skipped_not_routed():
    now = utc_now()
    record = Allocation(
        network="n",
        container_id="c",
        ifname="eth0",
        netns="/run/netns/x",
        anycast=(ip_address("192.0.2.53"),),
        pod_ips=(ip_address("127.0.0.1"), ip_address("169.254.0.9")),
        state="committed",
        created_at=now,
        updated_at=now,
    )
    desired = desired_routes([record], lambda allocation: True, lambda address: "veth0")
    assert desired.routes == {}
    assert [item.reason for item in desired.skipped] == ["no-pod-ip-of-family"]
