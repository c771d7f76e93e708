"""The pure core: desired routes, diff, drain planning and the BIRD retry state, as tables."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from netconf.values import Allocation, PodRef
from reconciler.desired import (
    SKIP_NO_DEVICE,
    SKIP_NO_POD_IP,
    BirdState,
    NextHop,
    after_bird_failure,
    after_bird_probe,
    after_bird_success,
    desired_pod_ips,
    desired_routes,
    diff,
    host_prefix,
    plan_bird_call,
    plan_drain,
)

A6 = "2001:db8:a::53"
A4 = "192.0.2.53"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def allocation(cid, anycast, pod_ips, state="committed", name=None, uid=None):
    return Allocation(
        network="flocknet",
        container_id=cid,
        ifname="eth0",
        netns=f"/run/netns/{cid}",
        pod=PodRef(namespace="dns", name=name or cid, uid=uid),
        anycast=tuple(ip_address(a) for a in anycast),
        pod_ips=tuple(ip_address(p) for p in pod_ips),
        state=state,
        created_at=T0,
        updated_at=T0,
    )


DEVICES = {
    ip_address("10.1.0.2"): "veth-a",
    ip_address("fd00::2"): "veth-a",
    ip_address("10.1.0.3"): "veth-b",
    ip_address("fd00::3"): "veth-b",
}


def hop(gateway, device):
    return NextHop(ip_address(gateway), device)


def everyone_ready(_allocation):
    return True


def routes_of(allocations, is_ready=everyone_ready, devices=DEVICES):
    return desired_routes(allocations, is_ready, devices.get)


POD_A = allocation("a", [A6, A4], ["10.1.0.2", "fd00::2"])
POD_B = allocation("b", [A6, A4], ["10.1.0.3", "fd00::3"])

CASES = {
    "empty": ([], {}),
    "v4 only": (
        [allocation("a", [A4], ["10.1.0.2"])],
        {ip_network("192.0.2.53/32"): {hop("10.1.0.2", "veth-a")}},
    ),
    "v6 only": (
        [allocation("a", [A6], ["fd00::2"])],
        {ip_network("2001:db8:a::53/128"): {hop("fd00::2", "veth-a")}},
    ),
    "dual stack pod": (
        [POD_A],
        {
            ip_network("192.0.2.53/32"): {hop("10.1.0.2", "veth-a")},
            ip_network("2001:db8:a::53/128"): {hop("fd00::2", "veth-a")},
        },
    ),
    "two pods share the address: one prefix, two next hops": (
        [POD_A, POD_B],
        {
            ip_network("192.0.2.53/32"): {hop("10.1.0.2", "veth-a"), hop("10.1.0.3", "veth-b")},
            ip_network("2001:db8:a::53/128"): {hop("fd00::2", "veth-a"), hop("fd00::3", "veth-b")},
        },
    ),
    "pending allocation ignored": (
        [allocation("a", [A4], ["10.1.0.2"], state="pending")],
        {},
    ),
    "first unicast IP of the family is the next hop": (
        [allocation("a", [A4], ["fd00::2", "10.1.0.2", "10.1.0.3"])],
        {ip_network("192.0.2.53/32"): {hop("10.1.0.2", "veth-a")}},
    ),
}


@pytest.mark.parametrize("allocations, expected", CASES.values(), ids=CASES.keys())
def test_desired_routes_table(allocations, expected):
    result = routes_of(allocations)

    assert {prefix: set(hops) for prefix, hops in result.routes.items()} == expected
    assert result.skipped == ()


def test_not_ready_pod_contributes_nothing_and_readiness_is_asked_per_allocation():
    asked = []

    def is_ready(item):
        asked.append(item.container_id)
        return item.container_id == "b"

    result = routes_of([POD_A, POD_B, allocation("p", [A4], ["10.1.0.2"], state="pending")], is_ready)

    assert result.routes == {
        ip_network("192.0.2.53/32"): frozenset({hop("10.1.0.3", "veth-b")}),
        ip_network("2001:db8:a::53/128"): frozenset({hop("fd00::3", "veth-b")}),
    }
    assert asked == ["a", "b"]  # the pending one is never asked


def test_address_without_pod_ip_of_its_family_is_skipped_with_a_warning():
    pod = allocation("a", [A6, A4], ["10.1.0.2"])

    result = routes_of([pod])

    assert result.routes == {ip_network("192.0.2.53/32"): frozenset({hop("10.1.0.2", "veth-a")})}
    [skipped] = result.skipped
    assert skipped.reason == SKIP_NO_POD_IP
    assert skipped.anycast == ip_address(A6)
    assert skipped.pod == "dns/a"
    assert skipped.allocation == ("flocknet", "a", "eth0")


def test_pod_ip_no_device_reaches_is_skipped_with_a_warning():
    pod = allocation("c", [A4], ["10.9.9.9"])

    result = routes_of([pod, POD_B])

    assert result.routes[ip_network("192.0.2.53/32")] == frozenset({hop("10.1.0.3", "veth-b")})
    [skipped] = result.skipped
    assert skipped.reason == SKIP_NO_DEVICE
    assert "10.9.9.9" in skipped.detail


def test_duplicate_anycast_in_one_allocation_counts_once():
    pod = allocation("a", [A4, A4], ["10.1.0.2"])

    assert routes_of([pod]).routes == {ip_network("192.0.2.53/32"): frozenset({hop("10.1.0.2", "veth-a")})}


def test_desired_pod_ips_are_the_ones_the_device_lookup_will_need():
    pending = allocation("p", [A4], ["10.7.0.1"], state="pending")
    v4_only = allocation("c", [A4], ["10.1.0.9", "fd00::9"])

    assert desired_pod_ips([POD_A, pending, v4_only], everyone_ready) == {
        ip_address("10.1.0.2"),
        ip_address("fd00::2"),
        ip_address("10.1.0.9"),
    }


def test_host_prefix_is_full_length():
    assert host_prefix(ip_address(A4)) == ip_network("192.0.2.53/32")
    assert host_prefix(ip_address(A6)) == ip_network("2001:db8:a::53/128")


# -- diff -------------------------------------------------------------------

P4 = ip_network("192.0.2.53/32")
P6 = ip_network("2001:db8:a::53/128")
HA = hop("10.1.0.2", "veth-a")
HB = hop("10.1.0.3", "veth-b")


def test_diff_of_equal_states_is_empty():
    routes = {P4: frozenset({HA, HB})}

    plan = diff(routes, routes, exported=frozenset({P4}))

    assert plan.actions == ()
    assert not plan.export_changed
    assert plan.export == {P4}


def test_diff_new_prefix_is_an_add_and_an_advertisement():
    plan = diff({P4: frozenset({HA})}, {}, exported=frozenset())

    assert [(a.op, a.prefix, a.next_hops) for a in plan.ensure] == [("add", P4, frozenset({HA}))]
    assert plan.advertise == {P4} and plan.withdraw == frozenset()


@pytest.mark.parametrize(
    "before, after",
    [({HA}, {HA, HB}), ({HA, HB}, {HB})],
    ids=["next hop joins", "next hop leaves"],
)
def test_diff_ecmp_change_is_a_replace_and_never_an_export_change(before, after):
    plan = diff({P4: frozenset(after)}, {P4: frozenset(before)}, exported=frozenset({P4}))

    [action] = plan.ensure
    assert (action.op, action.next_hops, action.previous) == ("replace", frozenset(after), frozenset(before))
    assert plan.stale == ()
    assert plan.advertise == frozenset() and plan.withdraw == frozenset()
    assert not plan.export_changed


def test_diff_prefix_no_longer_desired_is_stale_and_withdrawn():
    plan = diff({}, {P4: frozenset({HA})}, exported=frozenset({P4}))

    assert plan.ensure == ()
    assert [(a.op, a.prefix) for a in plan.stale] == [("delete", P4)]
    assert plan.withdraw == {P4} and plan.export == frozenset()


def test_diff_wrong_next_hop_found_at_start_is_replaced():
    wrong = hop("10.1.0.2", "#7")

    plan = diff({P4: frozenset({HA})}, {P4: frozenset({wrong})}, exported=None)

    assert [(a.op, a.prefix) for a in plan.ensure] == [("replace", P4)]


def test_diff_with_unknown_export_assumes_observed_routes_are_advertised():
    orphan = ip_network("198.51.100.7/32")

    plan = diff({P4: frozenset({HA})}, {P4: frozenset({HA}), orphan: frozenset({HB})}, exported=None)

    assert plan.ensure == ()  # the correct route is left untouched
    assert plan.withdraw == {orphan}
    assert plan.export == {P4}


def test_diff_route_vanished_from_kernel_is_re_added_without_export_change():
    plan = diff({P6: frozenset({HA})}, {}, exported=frozenset({P6}))

    assert [(a.op, a.prefix) for a in plan.ensure] == [("add", P6)]
    assert not plan.export_changed


# -- drain ------------------------------------------------------------------


def test_stale_prefix_still_exported_is_not_drained():
    plan = plan_drain([P4], exported=frozenset({P4}), draining={}, now=10.0, drain_delay=2.0)

    assert plan.draining == {} and plan.delete == frozenset()


def test_stale_prefix_with_bird_never_confirmed_is_not_drained():
    plan = plan_drain([P4], exported=None, draining={}, now=10.0, drain_delay=2.0)

    assert plan.draining == {} and plan.delete == frozenset()


def test_withdrawn_prefix_gets_a_deadline_then_is_deleted_when_it_passes():
    first = plan_drain([P4], exported=frozenset(), draining={}, now=10.0, drain_delay=2.0)
    before = plan_drain([P4], exported=frozenset(), draining=first.draining, now=11.999, drain_delay=2.0)
    at = plan_drain([P4], exported=frozenset(), draining=before.draining, now=12.0, drain_delay=2.0)

    assert first.draining == {P4: 12.0} and first.delete == frozenset()
    assert before.draining == {P4: 12.0} and before.delete == frozenset()
    assert at.delete == {P4} and at.draining == {}


def test_zero_drain_delay_deletes_in_the_same_pass():
    plan = plan_drain([P4], exported=frozenset(), draining={}, now=10.0, drain_delay=0.0)

    assert plan.delete == {P4}


def test_prefix_no_longer_stale_loses_its_deadline():
    plan = plan_drain([], exported=frozenset(), draining={P4: 12.0}, now=11.0, drain_delay=2.0)

    assert plan.draining == {} and plan.delete == frozenset()


# -- the BIRD retry state ----------------------------------------------------------

RETRY = {"retry_initial": 0.5, "retry_maximum": 4.0, "probe_interval": 0.25}
BOTH = frozenset({ip_network("192.0.2.53/32"), ip_network("2001:db8:a::53/128")})
ONE = frozenset({ip_network("192.0.2.53/32")})


def failed(state, export, now, unreachable=False, staged=False):
    return after_bird_failure(state, export, "down", unreachable=unreachable, staged=staged, now=now, **RETRY)


def test_bird_is_called_for_a_new_set_on_a_resync_and_not_for_the_confirmed_set():
    confirmed = after_bird_success(BirdState(), BOTH)
    assert plan_bird_call(BirdState(), frozenset(), full=False, now=0.0)  # never confirmed, even empty
    assert not plan_bird_call(confirmed, BOTH, full=False, now=0.0)
    assert plan_bird_call(confirmed, BOTH, full=True, now=0.0)
    assert plan_bird_call(confirmed, ONE, full=False, now=0.0)


def test_a_failed_set_waits_out_its_back_off_a_changed_set_is_tried_at_once():
    state = failed(after_bird_success(BirdState(), ONE), BOTH, now=10.0)
    assert (state.error, state.failures, state.retry_at, state.probe_at) == ("down", 1, 10.5, None)
    assert state.exported == ONE, "a failure does not change what BIRD confirmed"
    assert not plan_bird_call(state, BOTH, full=True, now=10.499)
    assert plan_bird_call(state, BOTH, full=False, now=10.5)
    assert plan_bird_call(state, ONE, full=False, now=10.0)  # failing and a different set


def test_failures_in_a_row_double_the_back_off_up_to_the_maximum_and_success_clears_it():
    state = BirdState()
    delays = []
    for now in range(6):
        state = failed(state, BOTH, now=float(now))
        delays.append(state.retry_at - now)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert after_bird_success(state, BOTH) == BirdState(exported=BOTH, attempted=BOTH)


def test_only_an_unreachable_bird_is_probed_and_a_probe_drops_the_wait():
    refused = failed(BirdState(), BOTH, now=10.0)
    assert refused.probe_at is None
    down = failed(BirdState(), BOTH, now=10.0, unreachable=True)
    assert down.probe_at == 10.25
    still_down = after_bird_probe(down, back=False, now=10.25, probe_interval=0.25)
    assert (still_down.probe_at, still_down.retry_at) == (10.5, 10.5)
    back = after_bird_probe(still_down, back=True, now=10.5, probe_interval=0.25)
    assert (back.probe_at, back.retry_at, back.error) == (None, None, "down")
    assert plan_bird_call(back, BOTH, full=False, now=10.5)


def test_staged_prefixes_count_as_advertised_until_bird_confirms():
    assert BirdState().may_advertise is None
    confirmed = after_bird_success(BirdState(), ONE)
    staged = failed(confirmed, BOTH, now=1.0, unreachable=True, staged=True)
    shrunk = failed(staged, frozenset(), now=2.0, unreachable=True, staged=True)
    assert shrunk.may_advertise == BOTH, "a BIRD started on the staged include may advertise them"
    not_staged = failed(confirmed, BOTH, now=1.0)
    assert not_staged.may_advertise == ONE
    assert after_bird_success(shrunk, frozenset()).may_advertise == frozenset()
