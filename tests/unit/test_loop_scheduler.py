"""When passes run: debounce with a bounded wait, timers, stop."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.loop import LoopSettings, PassReport, Scheduler, Waker, coalesced_due


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
    def __init__(self, deadline=None):
        self.passes: list[bool] = []
        self.deadline = deadline
        self.result = "ok"
        self.changed = threading.Condition()

    def reconcile(self, full=False):
        with self.changed:
            self.passes.append(full)
            self.changed.notify_all()
        return PassReport(self.result)

    def next_deadline(self):
        return self.deadline

    def next_bird_probe(self):
        return None

    def wait_passes(self, count, timeout=5.0):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.passes) >= count, timeout), self.passes


def test_first_pass_is_a_full_resync_and_a_burst_of_wake_ups_is_one_pass():
    reconciler = CountingReconciler()
    settings = LoopSettings(resync_interval=3600, debounce=0.2, max_wait=2.0)
    waker = Waker()
    seen: list[set[str]] = []
    scheduler = Scheduler(reconciler, waker, settings)
    original_wait = waker.wait

    def recording_wait(*args, **kwargs):
        reasons = original_wait(*args, **kwargs)
        if reasons:
            seen.append(reasons)
        return reasons

    waker.wait = recording_wait
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        reconciler.wait_passes(1)
        assert reconciler.passes == [True]

        for reason in ("state-file", "route-event", "readiness-file", "state-file"):
            waker.wake(reason)
        reconciler.wait_passes(2)

        assert reconciler.passes == [True, False]
        assert seen == [{"state-file", "route-event", "readiness-file"}]
    finally:
        waker.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_a_reconciler_deadline_runs_a_pass_without_any_event():
    reconciler = CountingReconciler()
    settings = LoopSettings(resync_interval=3600, debounce=0.0, max_wait=0.1)
    waker = Waker()
    scheduler = Scheduler(reconciler, waker, settings)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        reconciler.wait_passes(1)
        reconciler.deadline = time.monotonic() + 0.05  # e.g. a drain ending
        waker.wake("nudge")  # let the scheduler see the new deadline
        reconciler.wait_passes(3)
        assert reconciler.passes[1:3] == [False, False]
    finally:
        waker.stop()
        thread.join(5)


def test_periodic_resync_is_full():
    reconciler = CountingReconciler()
    settings = LoopSettings(resync_interval=0.05, debounce=0.0, max_wait=0.1)
    waker = Waker()
    scheduler = Scheduler(reconciler, waker, settings)
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    try:
        reconciler.wait_passes(3)
        assert reconciler.passes[:3] == [True, True, True]
        assert scheduler.tick_age() < 5
    finally:
        waker.stop()
        thread.join(5)


def test_a_deadline_a_failing_pass_cannot_clear_is_retried_at_the_retry_pace():
    reconciler = CountingReconciler(deadline=0.0)  # always due, as if a delete kept failing
    reconciler.result = "error"
    settings = LoopSettings(resync_interval=3600, retry_initial=0.2)
    waker = Waker()
    scheduler = Scheduler(reconciler, waker, settings)
    thread = threading.Thread(target=scheduler.run)
    started = time.monotonic()
    thread.start()
    try:
        reconciler.wait_passes(4)
        elapsed = time.monotonic() - started
    finally:
        waker.stop()
        thread.join(5)
    # Passes 2..4 each waited retry_initial: no busy loop.
    assert elapsed >= 3 * 0.2 * 0.9


def test_stop_returns_promptly_while_idle():
    reconciler = CountingReconciler()
    waker = Waker()
    scheduler = Scheduler(reconciler, waker, LoopSettings(resync_interval=3600))
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    reconciler.wait_passes(1)

    waker.stop()
    thread.join(2)

    assert not thread.is_alive()
