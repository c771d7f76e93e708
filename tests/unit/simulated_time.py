"""A clock for driving the scheduler in simulated time, on the test's own thread.

:class:`SimulatedClock` satisfies ``reconciler.loop.TimerClock``. Time moves
only inside :meth:`SimulatedClock.wait_until`: a wait jumps to its deadline,
or to the first scheduled action before it, runs that action (a wake-up, a
BIRD restart, a stop...) and returns, as a notify from another thread would.
So a ``Scheduler.run()`` called directly runs a whole scenario in
microseconds, the same way every time, with no thread and no real sleep.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable


class SimulationRunaway(AssertionError):
    """The scenario never stopped (no action stopped the waker in time)."""


class SimulatedClock:
    def __init__(self, now: float = 1000.0, wall: float = 1_700_000_000.0, max_waits: int = 100_000) -> None:
        self.now = now
        self.wall = wall
        self.max_waits = max_waits
        self.waits = 0
        self._actions: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall + self.now

    def advance(self, seconds: float) -> None:
        """Move time on by hand (between passes the test runs itself); runs no action."""
        self.now += seconds

    def at(self, when: float, action: Callable[[], object]) -> None:
        """Run ``action`` when a wait reaches monotonic time ``when``."""
        heapq.heappush(self._actions, (when, next(self._order), action))

    def after(self, delay: float, action: Callable[[], object]) -> None:
        self.at(self.now + delay, action)

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        # The caller holds ``condition``; it is re-entrant, so an action may
        # call Waker.wake/stop (which take it) from here.
        self.waits += 1
        if self.waits > self.max_waits:
            raise SimulationRunaway(f"{self.waits} waits and still running at t={self.now}")
        if self._actions and self._actions[0][0] <= deadline:
            when, _, action = heapq.heappop(self._actions)
            self.now = max(self.now, when)
            action()
            return
        self.now = max(self.now, deadline)
