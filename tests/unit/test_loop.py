"""The reconciler pass against an in-memory kernel and BIRD, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from netconf.errors import IOFailure
from netconf.values import Allocation, PodRef
from reconciler.desired import NextHop
from reconciler.kernel import DeviceMissing, KernelError
from reconciler.loop import LoopSettings, Reconciler, backoff_delay
from reconciler.readiness import MappingView, ReadinessStatus
from tests.reconciler_fakes import FakeBird, FakeKernel, FakeStore, ManualClock

A6 = "2001:db8:a::53"
A4 = "192.0.2.53"
P4 = ip_network("192.0.2.53/32")
P6 = ip_network("2001:db8:a::53/128")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HA4 = NextHop(ip_address("10.1.0.2"), "veth-a")
HB4 = NextHop(ip_address("10.1.0.3"), "veth-b")
HA6 = NextHop(ip_address("fd00::2"), "veth-a")
HB6 = NextHop(ip_address("fd00::3"), "veth-b")


def allocation(cid, pod_ips, anycast=(A6, A4), state="committed"):
    return Allocation(
        network="flocknet",
        container_id=cid,
        ifname="eth0",
        netns=f"/run/netns/{cid}",
        pod=PodRef(namespace="dns", name=cid, uid=f"uid-{cid}"),
        anycast=tuple(ip_address(a) for a in anycast),
        pod_ips=tuple(ip_address(p) for p in pod_ips),
        state=state,
        created_at=T0,
        updated_at=T0,
    )


POOLS = (ip_network("2001:db8:a::/64"), ip_network("192.0.2.0/24"))
POD_A = allocation("a", ["10.1.0.2", "fd00::2"])
POD_B = allocation("b", ["10.1.0.3", "fd00::3"])


class SwitchReadiness:
    """Readiness by container ID, flipped by the test."""

    name = "test"
    needs_first_sync = False
    sync_timeout = 0.0

    def wait_synced(self, timeout=None):
        return True

    def register_metrics(self, registry):
        pass

    def __init__(self, *ready: str) -> None:
        self.ready = set(ready)
        self.healthy = True

    def start(self, wake):
        pass

    def stop(self):
        pass

    def observe(self):
        return MappingView({cid: True for cid in self.ready})

    def status(self):
        return ReadinessStatus(self.healthy, "" if self.healthy else "broken")


class Lab:
    def __init__(self, *allocations, ready=("a", "b"), drain_delay=2.0, retry_initial=0.5, retry_maximum=4.0):
        self.journal: list = []
        self.clock = ManualClock()
        self.store = FakeStore(list(allocations))
        self.readiness = SwitchReadiness(*ready)
        self.kernel = FakeKernel(self.journal)
        for pod_ip, device in [("10.1.0.2", "veth-a"), ("fd00::2", "veth-a"), ("10.1.0.3", "veth-b"), ("fd00::3", "veth-b")]:
            self.kernel.attach(ip_address(pod_ip), device)
        self.bird = FakeBird(self.journal)
        self.settings = LoopSettings(
            drain_delay=drain_delay, retry_initial=retry_initial, retry_maximum=retry_maximum
        )
        self.reconciler = Reconciler(
            store=self.store,
            readiness=self.readiness,
            kernel=self.kernel,
            bird=self.bird,
            settings=self.settings,
            pools=POOLS,
            clock=self.clock,
        )

    def reconcile(self, full=False):
        return self.reconciler.reconcile(full=full)

    def mark(self) -> int:
        return len(self.journal)

    def since(self, mark):
        return self.journal[mark:]


def ops(entries):
    return [entry[0] for entry in entries]


def metric(lab, name, **labels):
    return lab.reconciler.metrics.registry.get_sample_value(name, labels or None)


# -- advertise ------------------------------------------------------------------


def test_ready_pod_gets_its_kernel_route_before_bird_advertises_it():
    lab = Lab(POD_A)

    report = lab.reconcile()

    assert report.ok
    assert lab.kernel.routes == {P4: {HA4}, P6: {HA6}}
    assert ops(lab.journal) == ["kernel.ensure", "kernel.ensure", "bird.export"]
    assert lab.journal[-1] == ("bird.export", frozenset({P4, P6}))
    assert lab.reconciler.exported == {P4, P6}


def test_prefix_whose_route_cannot_be_installed_is_not_advertised():
    lab = Lab(POD_A)
    lab.kernel.fail_writes[P6] = DeviceMissing("device veth-a does not exist")

    report = lab.reconcile()

    assert not report.ok
    assert lab.bird.exported == {P4}
    assert any("veth-a" in error for error in report.errors)
    assert metric(lab, "flock_reconciler_route_writes_total", op="add", result="error") == 1


# -- withdraw and drain -------------------------------------------------------


def test_withdraw_calls_bird_first_and_deletes_the_route_only_after_the_drain_delay():
    lab = Lab(POD_A, drain_delay=2.0)
    lab.reconcile()
    lab.readiness.ready.clear()
    mark = lab.mark()

    withdrawn = lab.reconcile()

    assert ops(lab.since(mark)) == ["bird.export"]
    assert lab.bird.exported == frozenset()
    assert set(lab.kernel.routes) == {P4, P6}  # still routing while peers converge
    assert withdrawn.draining == {P4: lab.clock.now + 2.0, P6: lab.clock.now + 2.0}
    assert lab.reconciler.next_deadline() == lab.clock.now + 2.0

    lab.clock.advance(1.999)
    early = lab.reconcile()
    assert lab.kernel.routes.keys() == {P4, P6}
    assert early.deleted == ()

    lab.clock.advance(0.001)
    due = lab.reconcile()
    assert lab.kernel.routes == {}
    assert set(due.deleted) == {P4, P6}
    entries = lab.since(mark)
    assert ops(entries) == ["bird.export", "kernel.delete", "kernel.delete"]
    assert lab.reconciler.next_deadline() is None


def test_prefix_desired_again_during_drain_keeps_its_route_and_is_re_advertised():
    lab = Lab(POD_A, drain_delay=2.0)
    lab.reconcile()
    lab.readiness.ready.clear()
    lab.reconcile()
    lab.clock.advance(1.0)
    lab.readiness.ready.add("a")
    mark = lab.mark()

    report = lab.reconcile()
    lab.clock.advance(5.0)
    lab.reconcile()

    assert ops(lab.since(mark)) == ["bird.export"]  # no kernel write at all
    assert lab.bird.exported == {P4, P6}
    assert lab.kernel.routes == {P4: {HA4}, P6: {HA6}}
    assert report.draining == {}


def test_pod_gone_from_state_is_withdrawn_the_same_way():
    lab = Lab(POD_A, drain_delay=0.5)
    lab.reconcile()
    lab.store.allocations = []
    mark = lab.mark()

    lab.reconcile()
    lab.clock.advance(0.5)
    lab.reconcile()

    assert ops(lab.since(mark)) == ["bird.export", "kernel.delete", "kernel.delete"]
    assert lab.kernel.routes == {}


# -- ECMP ---------------------------------------------------------------------


def test_next_hop_joining_and_leaving_is_a_route_replace_and_never_calls_bird():
    lab = Lab(POD_A, POD_B, ready=("a",))
    lab.reconcile()
    bird_calls = lab.bird.calls

    lab.readiness.ready.add("b")
    joined = lab.reconcile()
    assert lab.kernel.routes == {P4: {HA4, HB4}, P6: {HA6, HB6}}

    lab.readiness.ready.discard("a")
    left = lab.reconcile()
    assert lab.kernel.routes == {P4: {HB4}, P6: {HB6}}

    assert lab.bird.calls == bird_calls
    assert not joined.bird_called and not left.bird_called
    assert [a.op for a in joined.plan.ensure] == ["replace", "replace"]
    assert metric(lab, "flock_reconciler_next_hops") == 2


def test_last_next_hop_leaving_withdraws():
    lab = Lab(POD_A, POD_B, drain_delay=0.0)
    lab.reconcile()
    lab.readiness.ready = {"a"}
    lab.reconcile()
    lab.readiness.ready = set()
    mark = lab.mark()

    lab.reconcile()

    assert ops(lab.since(mark)) == ["bird.export", "kernel.delete", "kernel.delete"]


# -- resync and start-up ----------------------------------------------------------


def test_resync_with_nothing_changed_makes_no_write_and_no_bird_call():
    lab = Lab(POD_A, POD_B)
    lab.reconcile()
    mark = lab.mark()

    quiet = lab.reconcile()

    assert lab.since(mark) == []
    assert not quiet.bird_called and quiet.written == ()


def test_periodic_full_resync_confirms_the_export_without_a_reload_or_write():
    lab = Lab(POD_A)
    lab.reconcile()
    reloads = lab.bird.reloads
    mark = lab.mark()

    lab.reconcile(full=True)

    assert ops(lab.since(mark)) == ["bird.export"]
    assert lab.bird.reloads == reloads


def test_start_adopts_correct_routes_fixes_wrong_ones_and_drains_orphans():
    lab = Lab(POD_A, POD_B, drain_delay=1.0)
    orphan = ip_network("198.51.100.7/32")
    lab.kernel.routes = {
        P4: frozenset({HA4, HB4}),  # correct: left alone
        P6: frozenset({HA6}),  # wrong: missing a next hop
        orphan: frozenset({HA4}),  # no allocation: withdrawn, drained, removed
    }
    lab.bird.exported = frozenset({P4, P6, orphan})  # what the previous instance left in BIRD

    lab.reconcile()

    assert lab.journal[:2] == [("kernel.ensure", P6, frozenset({HA6, HB6})), ("bird.export", frozenset({P4, P6}))]
    assert orphan in lab.kernel.routes
    lab.clock.advance(1.0)
    lab.reconcile()
    assert lab.kernel.routes == {P4: {HA4, HB4}, P6: {HA6, HB6}}
    assert ("kernel.ensure", P4, frozenset({HA4, HB4})) not in lab.journal
    assert ops(lab.journal) == ["kernel.ensure", "bird.export", "kernel.delete"]


def test_route_deleted_by_someone_else_is_put_back_without_bird_change():
    lab = Lab(POD_A)
    lab.reconcile()
    del lab.kernel.routes[P4]
    mark = lab.mark()

    lab.reconcile()

    assert lab.since(mark) == [("kernel.ensure", P4, frozenset({HA4}))]


# -- failures ---------------------------------------------------------------------


def test_bird_down_keeps_running_retries_with_back_off_and_recovers():
    lab = Lab(POD_A, retry_initial=0.5, retry_maximum=4.0)
    lab.bird.down = True

    first = lab.reconcile()
    assert first.result == "error"
    assert lab.kernel.routes.keys() == {P4, P6}  # kernel first, whatever BIRD does
    assert not lab.reconciler.health().bird_ok
    assert lab.reconciler.next_deadline() == lab.clock.now + 0.5

    calls = lab.bird.calls
    lab.clock.advance(0.25)
    lab.reconcile()  # woken by something else before the retry time
    assert lab.bird.calls == calls

    lab.clock.advance(0.25)
    lab.reconcile()
    assert lab.bird.calls == calls + 1
    assert lab.reconciler.next_deadline() == lab.clock.now + 1.0  # doubled

    lab.bird.down = False
    lab.clock.advance(1.0)
    recovered = lab.reconcile()
    assert recovered.ok
    assert lab.bird.exported == {P4, P6}
    assert lab.reconciler.health().bird_ok
    assert lab.reconciler.next_deadline() is None
    assert metric(lab, "flock_reconciler_bird_apply_failures_total") == 2
    assert metric(lab, "flock_reconciler_bird_last_success_timestamp_seconds") == lab.clock.time()


def test_changed_export_set_is_tried_at_once_even_while_backing_off():
    lab = Lab(POD_A, POD_B, ready=("a",))
    lab.bird.down = True
    lab.reconcile()
    calls = lab.bird.calls
    lab.store.allocations = [POD_A, POD_B, allocation("c", ["10.1.0.2"], anycast=("192.0.2.54",))]
    lab.readiness.ready.add("c")

    lab.reconcile()

    assert lab.bird.calls == calls + 1


def test_withdrawal_bird_did_not_confirm_keeps_the_kernel_route():
    lab = Lab(POD_A, drain_delay=0.5)
    lab.reconcile()
    lab.bird.down = True
    lab.readiness.ready.clear()

    lab.reconcile()
    lab.clock.advance(10.0)
    lab.reconcile()

    assert lab.kernel.routes.keys() == {P4, P6}
    assert "kernel.delete" not in ops(lab.journal)

    lab.bird.down = False
    lab.clock.advance(10.0)
    lab.reconcile()
    assert lab.kernel.routes.keys() == {P4, P6}  # drain starts only now
    lab.clock.advance(0.5)
    lab.reconcile()
    assert lab.kernel.routes == {}


def test_backoff_doubles_up_to_the_maximum():
    assert [backoff_delay(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_unlistable_state_directory_after_a_good_read_keeps_everything_and_reports_unready():
    lab = Lab(POD_A)
    lab.reconcile()
    lab.store.corrupt()
    mark = lab.mark()

    report = lab.reconcile()
    lab.clock.advance(100.0)
    lab.reconcile(full=True)

    assert lab.kernel.routes.keys() == {P4, P6}
    assert "kernel.delete" not in ops(lab.since(mark))
    assert lab.bird.exported == {P4, P6}
    health = lab.reconciler.health()
    assert not health.state_ok and not health.ready
    assert any("cannot list state directory" in problem for problem in health.problems)
    assert report.result == "ok"  # the pass itself ran on the last good view
    assert metric(lab, "flock_reconciler_state_read_errors_total") == 2

    lab.store.error = None
    lab.reconcile()
    assert lab.reconciler.health().state_ok


def test_unreadable_state_at_start_changes_nothing():
    lab = Lab(POD_A)
    lab.kernel.routes = {P4: frozenset({HA4})}
    lab.store.error = IOFailure("cannot read state file /fake/state.json")

    report = lab.reconcile()

    assert report.result == "skipped"
    assert lab.journal == []
    assert metric(lab, "flock_reconciler_passes_total", result="skipped") == 1


def test_kernel_unreachable_is_reported_and_bird_left_alone():
    lab = Lab(POD_A)
    lab.reconcile()
    lab.kernel.unreachable = KernelError("cannot list routes: Connection refused", 111)
    lab.readiness.ready.clear()
    mark = lab.mark()

    report = lab.reconcile()

    assert report.result == "error"
    assert lab.since(mark) == []
    assert not lab.reconciler.health().kernel_ok
    lab.kernel.unreachable = None
    lab.reconcile()
    assert lab.reconciler.health().kernel_ok


def test_skipped_allocations_are_reported_and_counted():
    lab = Lab(allocation("v4only", ["10.1.0.2"]), allocation("lost", ["10.9.0.9", "fd00::2"]), ready=("v4only", "lost"))

    report = lab.reconcile()

    assert {(s.pod, s.reason) for s in report.skipped} == {
        ("dns/v4only", "no-pod-ip-of-family"),
        ("dns/lost", "no-device"),
    }
    assert metric(lab, "flock_reconciler_skipped_next_hops", reason="no-pod-ip-of-family") == 1
    assert metric(lab, "flock_reconciler_skipped_next_hops", reason="no-device") == 1
    assert lab.kernel.routes == {P4: {HA4}, P6: {HA6}}


def test_readiness_source_problem_makes_the_daemon_unready():
    lab = Lab(POD_A)
    lab.reconcile()
    assert lab.reconciler.health().ready

    lab.readiness.healthy = False

    assert not lab.reconciler.health().ready


def test_metrics_after_a_pass():
    lab = Lab(POD_A, POD_B)

    lab.reconcile()

    assert metric(lab, "flock_reconciler_advertised_prefixes", family="ipv4") == 1
    assert metric(lab, "flock_reconciler_advertised_prefixes", family="ipv6") == 1
    assert metric(lab, "flock_reconciler_routes", family="ipv4") == 1
    assert metric(lab, "flock_reconciler_next_hops") == 4
    assert metric(lab, "flock_reconciler_passes_total", result="ok") == 1
    assert metric(lab, "flock_reconciler_pass_duration_seconds_count") == 1
    assert metric(lab, "flock_reconciler_route_writes_total", op="add", result="ok") == 2


@pytest.mark.parametrize("delay", [0.0, 3.0])
def test_drain_delay_is_measured_from_bird_confirmation(delay):
    lab = Lab(POD_A, drain_delay=delay)
    lab.reconcile()
    lab.readiness.ready.clear()
    lab.clock.advance(100.0)

    lab.reconcile()
    if delay:
        assert lab.kernel.routes.keys() == {P4, P6}
        lab.clock.advance(delay)
        lab.reconcile()

    assert lab.kernel.routes == {}
