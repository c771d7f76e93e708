"""When passes run: debounce with a bounded wait, timers, stop.

The scheduler runs on the test's thread in simulated time
(:mod:`tests.unit.simulated_time`): the pass times asserted are exact, and no
test waits for real — except the one that checks a real thread's stop.
"""

from __future__ import annotations

import threading

import pytest

from reconciler.loop import LoopSettings, PassReport, Scheduler, SystemClock, Waker, coalesced_due
from tests.unit.simulated_time import SimulatedClock


@pytest.mark.parametrize(
    "first, last, expected",
    [
        (0.0, 0.0, 0.05),  # a single event: after the debounce
        (0.0, 0.03, 0.08),  # a second event restarts the quiet period
        (0.0, 0.48, 0.5),  # a long burst: capped at max_wait after the first event
        (0.0, 5.0, 0.5),
    ],
)
def test_coalesced_due(first, last, expected):
    assert coalesced_due(first, last, debounce=0.05, max_wait=0.5) == pytest.approx(expected)


class CountingReconciler:
    """Counts passes (full or not) and when they ran on ``clock``."""

    def __init__(self, clock, deadline=None):
        self.clock = clock
        self.passes: list[bool] = []
        self.times: list[float] = []
        self.deadline = deadline
        self.result = "ok"
        self.changed = threading.Condition()

    def reconcile(self, full=False):
        with self.changed:
            self.passes.append(full)
            self.times.append(self.clock.monotonic())
            self.changed.notify_all()
        return PassReport(self.result)

    def next_deadline(self):
        return self.deadline

    def next_bird_probe(self):
        return None

    def wait_passes(self, count, timeout=5.0):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.passes) >= count, timeout), self.passes


def simulated(settings, deadline=None):
    clock = SimulatedClock()
    reconciler = CountingReconciler(clock, deadline)
    waker = Waker(clock=clock)
    return clock, reconciler, waker, Scheduler(reconciler, waker, settings)


def test_first_pass_is_a_full_resync_and_a_burst_of_wake_ups_is_one_pass():
    settings = LoopSettings(resync_interval=3600, debounce=0.2, max_wait=2.0)
    clock, reconciler, waker, scheduler = simulated(settings)
    t0 = clock.now
    seen: list[set[str]] = []
    original_wait = waker.wait

    def recording_wait(*args, **kwargs):
        reasons = original_wait(*args, **kwargs)
        if reasons:
            seen.append(reasons)
        return reasons

    waker.wait = recording_wait
    for offset, reason in ((1.0, "state-file"), (1.05, "route-event"), (1.1, "readiness-file"), (1.15, "state-file")):
        clock.at(t0 + offset, lambda reason=reason: waker.wake(reason))
    clock.at(t0 + 10.0, waker.stop)

    scheduler.run()

    assert reconciler.passes == [True, False]
    assert seen == [{"state-file", "route-event", "readiness-file"}]
    # at once; then quiet for the debounce after the last wake-up of the burst
    assert reconciler.times == pytest.approx([t0, t0 + 1.15 + 0.2])


def test_a_burst_that_never_goes_quiet_passes_at_max_wait():
    settings = LoopSettings(resync_interval=3600, debounce=0.2, max_wait=2.03)
    clock, reconciler, waker, scheduler = simulated(settings)
    t0 = clock.now
    for step in range(50):  # a wake-up every 0.1 s, from t0+1.05 to t0+5.95
        clock.at(t0 + 1.05 + step * 0.1, lambda: waker.wake("route-event"))
    clock.at(t0 + 6.5, waker.stop)

    scheduler.run()

    assert reconciler.passes == [True, False, False, False]
    assert reconciler.times == pytest.approx(
        [
            t0,
            t0 + 1.05 + 2.03,  # max_wait after the burst's first wake-up
            t0 + 3.15 + 2.03,  # the next wake-up opens the next burst
            t0 + 5.95 + 0.2,  # the last one: quiet for the debounce
        ]
    )


def test_a_reconciler_deadline_runs_a_pass_without_any_event():
    settings = LoopSettings(resync_interval=3600, debounce=0.0, max_wait=0.1)
    clock, reconciler, waker, scheduler = simulated(settings)
    t0 = clock.now

    def drain_starts():
        reconciler.deadline = t0 + 1.05  # e.g. a drain ending
        waker.wake("nudge")  # the pass that started the drain

    clock.at(t0 + 1.0, drain_starts)
    clock.at(t0 + 1.07, waker.stop)

    scheduler.run()

    assert reconciler.passes == [True, False, False]
    assert reconciler.times == pytest.approx([t0, t0 + 1.0, t0 + 1.05])


def test_periodic_resync_is_full():
    settings = LoopSettings(resync_interval=0.05, debounce=0.0, max_wait=0.1)
    clock, reconciler, waker, scheduler = simulated(settings)
    t0 = clock.now
    ages: list[float] = []
    clock.at(t0 + 0.11, lambda: ages.append(scheduler.tick_age()))
    clock.at(t0 + 0.12, waker.stop)

    scheduler.run()

    assert reconciler.passes == [True, True, True]
    assert reconciler.times == pytest.approx([t0, t0 + 0.05, t0 + 0.10])
    assert ages == [pytest.approx(0.01)]


def test_an_idle_loop_keeps_its_tick_fresh_for_healthz():
    """With nothing to do for an hour, the waker's heartbeat still ticks about every second."""
    clock, reconciler, waker, scheduler = simulated(LoopSettings(resync_interval=3600))
    t0 = clock.now
    ages: list[float] = []
    for minute in range(1, 60):
        clock.at(t0 + 60.0 * minute + 0.5, lambda: ages.append(scheduler.tick_age()))
    clock.at(t0 + 3599.0, waker.stop)

    scheduler.run()

    assert reconciler.passes == [True]
    assert len(ages) == 59 and max(ages) <= 1.0


def test_a_deadline_a_failing_pass_cannot_clear_is_retried_at_the_retry_pace():
    settings = LoopSettings(resync_interval=3600, retry_initial=0.2)
    clock, reconciler, waker, scheduler = simulated(settings, deadline=0.0)  # always due, as if a delete kept failing
    reconciler.result = "error"
    t0 = clock.now
    clock.at(t0 + 0.7, waker.stop)

    scheduler.run()

    # Passes 2..4 each waited retry_initial: no busy loop.
    assert reconciler.times == pytest.approx([t0, t0 + 0.2, t0 + 0.4, t0 + 0.6])


def test_stop_returns_promptly_while_idle():
    """A real thread on the real clock: stop() must wake a blocked wait, not wait out the resync."""
    reconciler = CountingReconciler(SystemClock())
    waker = Waker()
    scheduler = Scheduler(reconciler, waker, LoopSettings(resync_interval=3600))
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    reconciler.wait_passes(1)

    waker.stop()
    thread.join(2)

    assert not thread.is_alive()
