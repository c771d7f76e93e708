"""The level-triggered reconciler: one pass observes, plans and applies in the safe order.

A pass (:meth:`Reconciler.reconcile`), one method per step:

1. **observe** (:meth:`~Reconciler._observe_allocations`,
   :meth:`~Reconciler._observe_node`): read the state records — a record
   that cannot be read keeps its own last good allocation (none if it was
   never read good) and is reported; every other record is used as it is
   now. A directory that cannot be listed at all keeps the last good view
   of everything and reports unready (with no good view yet, change
   nothing). Then the readiness view, the device reaching each Ready pod
   IP, the node's own addresses, the kernel routes of our protocol and the
   BGP peers' addresses;
2. **plan** (:meth:`~Reconciler._plan`): :func:`desired_routes` under the
   :class:`AddressPolicy` (pools, node and peer addresses, pod IPs: a
   refused address is never routed and reported), then :func:`diff`;
3. **advertise** (:meth:`~Reconciler._ensure_routes`): install added and
   changed routes — the kernel route exists before BIRD exports it. A next
   hop joining or leaving an existing prefix is a route replace and never
   changes the export set;
4. **export** (:meth:`~Reconciler._export`): hand BIRD the export set
   (only prefixes whose route is in place). BIRD is called only when that
   set differs from the one BIRD last confirmed, after a failure (with
   back-off), or on a periodic resync (the adapter skips the reload when
   the rendered bytes are unchanged) — :func:`plan_bird_call`; what BIRD
   answered moves the pure :class:`BirdState` on;
5. **withdraw** (:meth:`~Reconciler._drain`): a stale route (ours, not
   desired) is deleted only after BIRD confirmed a set without its prefix
   and the drain delay has passed (:func:`plan_drain`); desired again while
   draining → kept, re-advertised;
6. **report** (:meth:`~Reconciler._report`): gauges and the
   :class:`PassReport`.

A pass with nothing changed makes no netlink write and no BIRD call.

While BIRD is unreachable (nothing listens on its socket), the adapter
still writes the include on disk, so a BIRD (re)starting meanwhile never
loads more than the desired set; and the scheduler probes the socket every
``bird_probe_interval`` (:meth:`Reconciler.probe_bird`), independent of the
retry back-off, so a returning BIRD is re-applied within that interval.
Kernel routes of withdrawn prefixes stay until BIRD itself confirmed the
smaller set: an unreachable socket does not prove that BIRD stopped
advertising (a replaced socket file, a wrong path).

The :class:`Scheduler` runs passes: at start, on wake-ups (state file,
readiness, route events) coalesced by a debounce with a bounded maximum
wait, at drain deadlines and BIRD retry times, and every resync interval.
Every timer reads the injected clock: the reconciler a :class:`Clock`, the
scheduler and the :class:`Waker` a :class:`TimerClock` (which also waits),
so a test can drive them in simulated time.

May: call the kernel, BIRD and readiness adapters it is given, log, update
metrics. May not: open sockets or files itself (adapters do), install
signal handlers or logging (``main``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from netconf.errors import CniError
from netconf.state import StateDocument, record_file_name
from netconf.values import Allocation, AllocationKey, IPAddress, IPNetwork
from reconciler.desired import (
    REFUSE_REASONS,
    AddressPolicy,
    BirdState,
    DesiredRoutes,
    NextHop,
    RefusedAddress,
    RouteAction,
    RoutePlan,
    SkippedNextHop,
    after_bird_failure,
    after_bird_probe,
    after_bird_success,
    backoff_delay,
    count_next_hops,
    desired_pod_ips,
    desired_routes,
    diff,
    plan_bird_call,
    plan_drain,
)
from reconciler.kernel import KernelError
from reconciler.logs import fields
from reconciler.metrics import Metrics
from reconciler.node_config import NodeConfig
from reconciler.readiness import ReadinessSource

log = logging.getLogger("reconciler.loop")

# Per pass, route writes are logged one by one up to this many, then summed up
# (a cold start with thousands of prefixes must not flood the log).
_LOG_EACH = 20
# /readyz lists at most this many unreadable records and refused addresses
# (the counts are complete): 50,000 junk files must not make a 5 MB answer.
_DETAIL_EACH = 20


# -- ports: what the loop needs from its adapters ----------------------------


class StateReader(Protocol):
    def read(self) -> StateDocument:
        """A snapshot: good allocations plus ``unreadable`` {file name: CniError}.

        Raises IOFailure (netconf.errors) only when the directory itself cannot be read.
        """
        ...


class KernelPort(Protocol):
    """Implemented by ``kernel.KernelRoutes``; raises ``kernel.KernelError``."""

    def list_routes(self) -> dict[IPNetwork, frozenset[NextHop]]: ...

    def device_for(self, address: IPAddress) -> str | None: ...

    def list_local_addresses(self) -> frozenset[IPAddress]: ...

    def ensure_route(self, prefix: IPNetwork, next_hops: frozenset[NextHop]) -> None: ...

    def delete_route(self, prefix: IPNetwork) -> bool: ...

    def close(self) -> None: ...


class ExportResult(Protocol):
    """What one export achieved (``bird.ExportOutcome``); read-only, so a frozen dataclass satisfies it."""

    @property
    def ok(self) -> bool: ...

    @property
    def reloaded(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    @property
    def unreachable(self) -> bool:
        """Nothing listened on BIRD's socket (as opposed to BIRD refusing the config)."""
        ...

    @property
    def staged(self) -> bool:
        """The include on disk holds the requested set although BIRD did not confirm it."""
        ...


class BirdPort(Protocol):
    """Implemented by ``bird.BirdExporter``; never raises for BIRD down or a rejected config."""

    def ensure_exported(self, prefixes: Collection[IPNetwork]) -> ExportResult: ...

    def probe(self) -> bool:
        """Does something accept connections on BIRD's control socket now? Cheap; never raises."""
        ...

    def peer_addresses(self) -> frozenset[IPAddress]:
        """The BGP neighbors' addresses known to the adapter (never routed)."""
        ...

    def status(self) -> dict[str, Any]: ...

    def ensure_bootstrap_files(self) -> list[str]:
        """Create the files BIRD needs to start (never overwriting); the paths written."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class TimerClock(Clock, Protocol):
    """A clock that can also block: what the :class:`Waker` and the :class:`Scheduler` wait with."""

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        """Wait on ``condition`` (held by the caller) until notified or until :meth:`monotonic` reaches ``deadline``.

        May return early (a spurious wake-up); callers re-check.
        """
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait_until(self, condition: threading.Condition, deadline: float) -> None:
        condition.wait(max(0.0, deadline - time.monotonic()))


# -- settings and results ------------------------------------------------------


@dataclass(frozen=True)
class LoopSettings:
    drain_delay: float = 2.0
    resync_interval: float = 30.0
    debounce: float = 0.05
    max_wait: float = 0.5
    retry_initial: float = 0.5
    retry_maximum: float = 30.0
    bird_probe_interval: float = 0.5

    @classmethod
    def from_config(cls, config: NodeConfig) -> LoopSettings:
        return cls(
            drain_delay=config.drain_delay,
            resync_interval=config.resync_interval,
            debounce=config.debounce,
            max_wait=config.max_wait,
            retry_initial=config.bird.retry.initial,
            retry_maximum=config.bird.retry.maximum,
            bird_probe_interval=config.bird.probe_interval,
        )


@dataclass(frozen=True)
class PassReport:
    """What one pass did; for tests, ``--once`` and logs."""

    result: str  # "ok", "error" or "skipped"
    plan: RoutePlan | None = None
    written: tuple[IPNetwork, ...] = ()
    deleted: tuple[IPNetwork, ...] = ()
    bird_called: bool = False
    exported: frozenset[IPNetwork] | None = None
    draining: dict[IPNetwork, float] = field(default_factory=dict)
    skipped: tuple[SkippedNextHop, ...] = ()
    refused: tuple[RefusedAddress, ...] = ()
    unreadable: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result == "ok"


@dataclass(frozen=True)
class Health:
    """For /readyz. ``problems`` make the node unready; ``warnings`` do not.

    An unreadable record or a refused address is a warning: it concerns one
    attachment, every other pod is still served correctly, and an unready
    reconciler pod would only stall a DaemonSet rollout (the fix) without
    protecting anything. Both are listed (at most ``_DETAIL_EACH`` each, with
    full counts) so the operator sees them.
    """

    state_ok: bool
    kernel_ok: bool
    bird_ok: bool
    readiness_ok: bool
    passes: int
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    unreadable_records: int = 0
    refused_addresses: int = 0

    @property
    def ready(self) -> bool:
        return self.passes > 0 and not self.problems


@dataclass(frozen=True)
class NodeView:
    """What the observe step saw of the node in one pass (inputs of the plan step)."""

    allocations: list[Allocation]
    is_ready: Callable[[Allocation], bool]
    devices: Mapping[IPAddress, str | None]
    local_addresses: frozenset[IPAddress]
    peer_addresses: frozenset[IPAddress]
    routes: Mapping[IPNetwork, frozenset[NextHop]]


@dataclass(frozen=True)
class _ExportAnswer:
    ok: bool
    reloaded: bool
    error: str | None
    unreachable: bool
    staged: bool


# -- the reconciler ------------------------------------------------------------


class Reconciler:
    """Runs passes; remembers between them what BIRD confirmed and which routes drain.

    Single-threaded: only the scheduler's thread calls :meth:`reconcile`;
    :meth:`health` and :meth:`snapshot` may be read from other threads.
    """

    def __init__(
        self,
        *,
        store: StateReader,
        readiness: ReadinessSource,
        kernel: KernelPort,
        bird: BirdPort,
        settings: LoopSettings,
        pools: Sequence[IPNetwork],
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``pools``: the only networks whose addresses may be routed (node config ``pools``)."""
        if not pools:
            raise ValueError("the reconciler needs at least one pool")
        self.pools = tuple(pools)
        self.store = store
        self.readiness = readiness
        self.kernel = kernel
        self.bird = bird
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        # observe: the state records (see _observe_allocations)
        self._allocations: list[Allocation] | None = None
        self._state_error: str | None = None
        # The last good allocation of each record file, by file name; a
        # record that turns unreadable keeps its entry, one removed loses it.
        self._last_good: dict[str, Allocation] = {}
        self._file_names: dict[AllocationKey, str] = {}
        self._unreadable: Mapping[str, CniError] = {}
        self._unreadable_text: dict[str, str] = {}
        self._kernel_error: str | None = None
        # plan: what was refused or skipped (logged once, listed in /readyz)
        self._refused: tuple[RefusedAddress, ...] = ()
        self._refused_logged: frozenset[tuple[Any, ...]] = frozenset()
        self._skipped_logged: frozenset[tuple[Any, ...]] = frozenset()
        # export: one pure value, replaced by desired.after_bird_* (never mutated)
        self._bird = BirdState()
        # withdraw: drain deadlines (monotonic) of stale routes
        self._draining: dict[IPNetwork, float] = {}
        self._passes = 0

    # -- read-only views (any thread) --------------------------------------

    @property
    def exported(self) -> frozenset[IPNetwork] | None:
        """The export set BIRD last confirmed (None: not yet)."""
        return self._bird.exported

    @property
    def bird_state(self) -> BirdState:
        """What BIRD confirmed, the last failure, retry and probe times (a frozen value)."""
        return self._bird

    @property
    def draining(self) -> dict[IPNetwork, float]:
        return dict(self._draining)

    def next_deadline(self) -> float | None:
        """The earliest monotonic time a pass is due without any event (drain end, BIRD retry)."""
        deadlines = list(self._draining.values())
        if self._bird.retry_at is not None:
            deadlines.append(self._bird.retry_at)
        return min(deadlines) if deadlines else None

    def next_bird_probe(self) -> float | None:
        """When to probe BIRD's socket next (monotonic); None unless BIRD was found unreachable."""
        return self._bird.probe_at

    def probe_bird(self) -> bool:
        """Probe BIRD's socket; True when BIRD is back and a pass should re-apply at once.

        Called by the scheduler's thread when :meth:`next_bird_probe` is due.
        A success drops the back-off wait; a failure schedules the next probe.
        """
        now = self.clock.monotonic()
        try:
            back = bool(self.bird.probe())
        except Exception:  # noqa: BLE001 - the adapter should not raise; a failed probe is "not yet"
            back = False
        with self._lock:
            self._bird = after_bird_probe(self._bird, back, now, self.settings.bird_probe_interval)
        if back:
            log.info("BIRD's socket accepts connections again, re-applying now")
        return back

    def health(self) -> Health:
        with self._lock:
            bird = self._bird
            readiness_status = self.readiness.status()
            problems = []
            if self._state_error:
                problems.append(f"state: {self._state_error}")
            if self._kernel_error:
                problems.append(f"kernel: {self._kernel_error}")
            if bird.error:
                problems.append(f"bird: {bird.error}")
            if not readiness_status.healthy:
                problems.append(f"readiness: {readiness_status.detail}")
            if self._passes == 0:
                problems.append("no pass completed yet")
            warnings = [
                f"state record {name} unreadable ("
                + ("its last good allocation is kept" if name in self._last_good else "never read good, ignored")
                + f"): {text}"
                for name, text in sorted(self._unreadable_text.items())[:_DETAIL_EACH]
            ]
            if len(self._unreadable_text) > _DETAIL_EACH:
                warnings.append(f"... {len(self._unreadable_text) - _DETAIL_EACH} more unreadable state records")
            warnings += [
                f"refused {item.anycast} of {item.pod} ({item.reason}): {item.detail}"
                for item in self._refused[:_DETAIL_EACH]
            ]
            if len(self._refused) > _DETAIL_EACH:
                warnings.append(f"... {len(self._refused) - _DETAIL_EACH} more refused addresses")
            return Health(
                state_ok=self._state_error is None and self._allocations is not None,
                kernel_ok=self._kernel_error is None,
                bird_ok=bird.error is None and bird.exported is not None,
                readiness_ok=readiness_status.healthy,
                passes=self._passes,
                problems=tuple(problems),
                warnings=tuple(warnings),
                unreadable_records=len(self._unreadable_text),
                refused_addresses=len(self._refused),
            )

    # -- the pass -----------------------------------------------------------

    def reconcile(self, full: bool = False) -> PassReport:
        """One level-triggered pass; never raises for adapter failures (they are reported).

        ``full``: a periodic resync — BIRD is asked to confirm the export set
        even when it did not change (the adapter skips unchanged reloads).
        """
        started = time.perf_counter()
        try:
            report = self._reconcile(full)
        except Exception as exc:  # noqa: BLE001 - the daemon must outlive any one pass
            log.exception("reconcile pass failed", extra=fields(error=repr(exc)))
            report = PassReport("error", errors=(repr(exc),))
        self.metrics.passes.labels(report.result).inc()
        self.metrics.pass_duration.observe(time.perf_counter() - started)
        self.metrics.last_pass.set(self.clock.time())
        with self._lock:
            self._passes += 1
        return report

    def _reconcile(self, full: bool) -> PassReport:
        now = self.clock.monotonic()
        # 1. observe
        allocations = self._observe_allocations()
        if allocations is None:
            # No good view of the allocations ever: touching anything could
            # withdraw every pod on the node. Wait for a readable file.
            return PassReport("skipped", errors=(self._state_error or "no state",))
        try:
            node = self._observe_node(allocations)
        except KernelError as exc:
            self._note_kernel_error(str(exc))
            return PassReport("error", errors=(str(exc),))
        # 2. plan
        desired, plan = self._plan(node)
        # 3. advertise: the kernel route must exist before BIRD exports it.
        written, write_errors = self._ensure_routes(plan.ensure)
        routes = dict(node.routes)
        routes.update((action.prefix, action.next_hops) for action in written)
        # 4. export (advertise step 2, withdraw step 1): only prefixes whose route is in place.
        bird_called = self._export(frozenset(prefix for prefix in plan.export if prefix in routes), full, now)
        # 5. withdraw: delete stale routes once BIRD dropped them and the drain delay passed.
        deleted, delete_errors = self._drain(plan.stale, now)
        for prefix in deleted:
            routes.pop(prefix, None)
        # 6. report
        return self._report(
            plan,
            desired,
            routes,
            written=tuple(action.prefix for action in written),
            deleted=deleted,
            bird_called=bird_called,
            errors=write_errors + delete_errors,
        )

    # -- steps --------------------------------------------------------------

    def _observe_allocations(self) -> list[Allocation] | None:
        try:
            document = self.store.read()
        except CniError as exc:  # IOFailure: the directory itself cannot be read
            message = _error_text(exc)
            self.metrics.state_read_errors.inc()
            if message != self._state_error:
                log.error(
                    "state directory unreadable, keeping the last good view",
                    extra=fields(error=message, have_view=self._allocations is not None),
                )
            with self._lock:
                self._state_error = message
            return self._allocations
        if self._state_error is not None:
            log.info("state directory readable again")
        allocations, last_good = self._merge_last_good(document.allocations, document.unreadable)
        self._note_unreadable(document.unreadable, last_good)
        with self._lock:
            self._state_error = None
            self._last_good = last_good
            self._allocations = allocations
        return self._allocations

    def _merge_last_good(
        self, good: list[Allocation], unreadable: Mapping[str, CniError]
    ) -> tuple[list[Allocation], dict[str, Allocation]]:
        """The allocations to use, and the new last-good map by file name.

        A good record is used as read. An unreadable one contributes the
        allocation last read good from the same file, if any. A file gone
        from the directory is in neither, so its last good view is forgotten.
        """
        names = self._file_names
        file_names: dict[AllocationKey, str] = {}
        last_good: dict[str, Allocation] = {}
        for allocation in good:
            key = allocation.key
            name = names.get(key)
            if name is None:
                name = record_file_name(key)  # escaping is not free: once per key, not per pass
            file_names[key] = name
            last_good[name] = allocation
        self._file_names = file_names
        if not unreadable:
            return list(good), last_good
        kept = []
        for name in unreadable:
            previous_good = self._last_good.get(name)
            if previous_good is not None:
                last_good[name] = previous_good
                file_names[previous_good.key] = name
                kept.append(previous_good)
        if not kept:
            return list(good), last_good
        return sorted([*good, *kept], key=lambda item: item.key), last_good

    def _note_unreadable(self, unreadable: Mapping[str, CniError], last_good: Mapping[str, Allocation]) -> None:
        """Log a record when it turns unreadable or its error changes, and when it recovers; once, not per pass."""
        previous = self._unreadable
        if not unreadable and not previous:
            return
        texts = self._unreadable_text
        # The store hands back the same error object for an unchanged file:
        # identity is the cheap test at 50,000 junk files.
        changed = [name for name, error in unreadable.items() if previous.get(name) is not error]
        gone = [name for name in previous if name not in unreadable]
        if changed or gone:
            texts = dict(texts)
            logged = 0
            for name in sorted(changed):
                text = _error_text(unreadable[name])
                if texts.get(name) != text:
                    logged += 1
                    if logged <= _LOG_EACH:
                        log.error(
                            "state record unreadable, keeping its last good allocation"
                            if name in last_good
                            else "state record unreadable and never read good, ignoring it",
                            extra=fields(record=name, error=text),
                        )
                texts[name] = text
            if logged > _LOG_EACH:
                log.error(
                    "more state records unreadable",
                    extra=fields(count=logged - _LOG_EACH, unreadable=len(unreadable)),
                )
            for index, name in enumerate(sorted(gone)):
                texts.pop(name, None)
                if index < _LOG_EACH:
                    log.info(
                        "state record readable again" if name in last_good else "unreadable state record removed",
                        extra=fields(record=name),
                    )
            if len(gone) > _LOG_EACH:
                log.info("more state records recovered or removed", extra=fields(count=len(gone) - _LOG_EACH))
        self.metrics.state_unreadable_records.set(len(unreadable))
        self.metrics.state_records_kept.set(sum(1 for name in unreadable if name in last_good))
        with self._lock:
            self._unreadable = unreadable  # a fresh mapping every read
            self._unreadable_text = texts

    def _peer_addresses(self) -> frozenset[IPAddress]:
        try:
            return frozenset(self.bird.peer_addresses())
        except Exception as exc:  # noqa: BLE001 - the adapter should not raise; pools still apply
            log.warning("cannot learn BGP peer addresses", extra=fields(error=repr(exc)))
            return frozenset()

    def _observe_node(self, allocations: list[Allocation]) -> NodeView:
        """Readiness, then the kernel (devices, own addresses, our routes), then the BGP peers.

        Raises KernelError when the kernel cannot be asked (the pass stops there).
        """
        view = self.readiness.observe()
        devices = {address: self.kernel.device_for(address) for address in desired_pod_ips(allocations, view.is_ready)}
        local_addresses = self.kernel.list_local_addresses()
        routes = self.kernel.list_routes()
        return NodeView(allocations, view.is_ready, devices, local_addresses, self._peer_addresses(), routes)

    def _plan(self, node: NodeView) -> tuple[DesiredRoutes, RoutePlan]:
        """Desired routes under the address policy (skipped and refused ones noted), diffed with the kernel."""
        policy = AddressPolicy(self.pools, node.local_addresses, node.peer_addresses)
        desired = desired_routes(node.allocations, node.is_ready, node.devices.get, policy)
        self._note_skipped(desired.skipped)
        self._note_refused(desired.refused)
        return desired, diff(desired.routes, node.routes, self._bird.exported)

    def _ensure_routes(self, actions: Sequence[RouteAction]) -> tuple[tuple[RouteAction, ...], tuple[str, ...]]:
        """Apply the route adds and replaces; returns those written and the errors of those that failed."""
        written: list[RouteAction] = []
        errors: list[str] = []
        for action in actions:
            try:
                self.kernel.ensure_route(action.prefix, action.next_hops)
            except KernelError as exc:
                errors.append(str(exc))
                self.metrics.route_writes.labels(action.op, "error").inc()
                log.error(
                    "route write failed",
                    extra=fields(op=action.op, prefix=action.prefix, error=str(exc)),
                )
                continue
            self.metrics.route_writes.labels(action.op, "ok").inc()
            written.append(action)
            if len(written) <= _LOG_EACH:
                log.info(
                    "route " + ("added" if action.op == "add" else "replaced"),
                    extra=fields(
                        prefix=action.prefix, next_hops=_hops_text(action.next_hops), was=_hops_text(action.previous)
                    ),
                )
        if len(written) > _LOG_EACH:
            log.info("more routes written", extra=fields(count=len(written) - _LOG_EACH, total=len(written)))
        return tuple(written), tuple(errors)

    def _export(self, export: frozenset[IPNetwork], full: bool, now: float) -> bool:
        """Hand BIRD ``export`` when :func:`plan_bird_call` says so; True when BIRD was called."""
        before = self._bird
        if not plan_bird_call(before, export, full, now):
            return False
        answer = self._call_bird(export)
        if answer.reloaded:
            self.metrics.bird_reloads.inc()
        if answer.ok:
            after = after_bird_success(before, export)
        else:
            after = after_bird_failure(
                before,
                export,
                answer.error or "BIRD apply failed",
                unreachable=answer.unreachable,
                staged=answer.staged,
                now=now,
                retry_initial=self.settings.retry_initial,
                retry_maximum=self.settings.retry_maximum,
                probe_interval=self.settings.bird_probe_interval,
            )
        with self._lock:
            self._bird = after
        if answer.ok:
            self._note_bird_success(before, export, answer.reloaded)
        else:
            self._note_bird_failure(after, answer.staged)
        return True

    def _call_bird(self, export: frozenset[IPNetwork]) -> _ExportAnswer:
        try:
            outcome = self.bird.ensure_exported(export)
        except Exception as exc:  # noqa: BLE001 - the adapter should not raise; never let it kill us
            return _ExportAnswer(False, False, f"BIRD adapter raised {exc!r}", unreachable=False, staged=False)
        return _ExportAnswer(outcome.ok, outcome.reloaded, outcome.error, outcome.unreachable, outcome.staged)

    def _drain(self, stale: Sequence[RouteAction], now: float) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
        """Delete the stale routes :func:`plan_drain` lets go; returns those deleted and the errors."""
        drain = plan_drain(
            (action.prefix for action in stale),
            self._bird.may_advertise,
            self._draining,
            now,
            self.settings.drain_delay,
        )
        draining = dict(drain.draining)
        deleted: list[IPNetwork] = []
        errors: list[str] = []
        for prefix in sorted(drain.delete, key=lambda p: (p.version, p)):
            try:
                self.kernel.delete_route(prefix)
            except KernelError as exc:
                errors.append(str(exc))
                self.metrics.route_writes.labels("delete", "error").inc()
                draining[prefix] = now + self.settings.retry_initial  # try again soon
                log.error("route delete failed", extra=fields(prefix=prefix, error=str(exc)))
                continue
            self.metrics.route_writes.labels("delete", "ok").inc()
            deleted.append(prefix)
            if len(deleted) <= _LOG_EACH:
                log.info("route deleted", extra=fields(prefix=prefix, reason="withdrawn and drained"))
        if len(deleted) > _LOG_EACH:
            log.info("more routes deleted", extra=fields(count=len(deleted) - _LOG_EACH, total=len(deleted)))
        started_draining = sorted(set(draining) - set(self._draining), key=lambda p: (p.version, p))
        if started_draining:
            log.info(
                "routes draining",
                extra=fields(
                    prefixes=_prefixes_text(started_draining),
                    delete_in=f"{max(0.0, min(draining.values()) - now):.3f}s",
                ),
            )
        self._draining = draining
        return tuple(deleted), tuple(errors)

    def _report(
        self,
        plan: RoutePlan,
        desired: DesiredRoutes,
        routes: Mapping[IPNetwork, frozenset[NextHop]],
        *,
        written: tuple[IPNetwork, ...],
        deleted: tuple[IPNetwork, ...],
        bird_called: bool,
        errors: tuple[str, ...],
    ) -> PassReport:
        """Gauges of the routes after the pass, and the pass's report."""
        self._note_kernel_error(None)
        self._update_gauges(routes)
        bird = self._bird
        return PassReport(
            "error" if errors or bird.error else "ok",
            plan=plan,
            written=written,
            deleted=deleted,
            bird_called=bird_called,
            exported=bird.exported,
            draining=dict(self._draining),
            skipped=desired.skipped,
            refused=desired.refused,
            unreadable=tuple(sorted(self._unreadable)),
            errors=errors + ((f"bird: {bird.error}",) if bird.error else ()),
        )

    # -- notes: logs, metrics and what health() shows ---------------------------

    def _note_bird_success(self, before: BirdState, export: frozenset[IPNetwork], reloaded: bool) -> None:
        self.metrics.bird_calls.labels("ok").inc()
        if before.error is not None:
            log.info("BIRD apply succeeded again", extra=fields(after_failures=before.failures))
        added = export - (before.exported or frozenset())
        removed = (before.exported or frozenset()) - export
        if added or removed or reloaded:
            log.info(
                "BIRD export applied",
                extra=fields(
                    advertised=_prefixes_text(added),
                    withdrawn=_prefixes_text(removed),
                    total=len(export),
                    reloaded=reloaded,
                ),
            )
        self.metrics.bird_last_success.set(self.clock.time())
        for family, version in (("ipv4", 4), ("ipv6", 6)):
            self.metrics.advertised_prefixes.labels(family).set(
                sum(1 for prefix in export if prefix.version == version)
            )

    def _note_bird_failure(self, after: BirdState, staged: bool) -> None:
        self.metrics.bird_calls.labels("error").inc()
        self.metrics.bird_apply_failures.inc()
        delay = backoff_delay(after.failures, self.settings.retry_initial, self.settings.retry_maximum)
        log.error(
            "BIRD apply failed, will retry",
            extra=fields(
                error=after.error,
                failures=after.failures,
                retry_in=f"{delay:.3f}s",
                include_on_disk="rewritten for BIRD's next start" if staged else "unchanged",
            ),
        )

    def _note_kernel_error(self, message: str | None) -> None:
        if message is not None and message != self._kernel_error:
            log.error("kernel unreachable", extra=fields(error=message))
        with self._lock:
            self._kernel_error = message

    def _note_skipped(self, skipped: tuple[SkippedNextHop, ...]) -> None:
        keys = frozenset((item.allocation, item.anycast, item.reason) for item in skipped)
        if keys != self._skipped_logged:
            for item in skipped:
                if (item.allocation, item.anycast, item.reason) not in self._skipped_logged:
                    log.warning(
                        "allocation skipped",
                        extra=fields(
                            pod=item.pod,
                            container=item.allocation[1][:12],
                            anycast=item.anycast,
                            reason=item.reason,
                            detail=item.detail,
                        ),
                    )
            self._skipped_logged = keys
        for reason in ("no-pod-ip-of-family", "no-device"):
            self.metrics.skipped_next_hops.labels(reason).set(sum(1 for item in skipped if item.reason == reason))

    def _note_refused(self, refused: tuple[RefusedAddress, ...]) -> None:
        """Log each refused address once (per record, address and reason), count them, keep them for /readyz."""
        keys = frozenset((item.allocation, item.anycast, item.reason) for item in refused)
        if keys != self._refused_logged:
            fresh = [item for item in refused if (item.allocation, item.anycast, item.reason) not in self._refused_logged]
            for item in fresh[:_LOG_EACH]:
                log.error(
                    "anycast address refused, not routed or advertised",
                    extra=fields(
                        pod=item.pod,
                        record=item.allocation[1][:12],
                        anycast=item.anycast,
                        reason=item.reason,
                        detail=item.detail,
                    ),
                )
            if len(fresh) > _LOG_EACH:
                log.error("more anycast addresses refused", extra=fields(count=len(fresh) - _LOG_EACH))
            self._refused_logged = keys
        for reason in REFUSE_REASONS:
            self.metrics.refused_addresses.labels(reason).set(sum(1 for item in refused if item.reason == reason))
        with self._lock:
            self._refused = refused

    def _update_gauges(self, routes: Mapping[IPNetwork, frozenset[NextHop]]) -> None:
        for family, version in (("ipv4", 4), ("ipv6", 6)):
            self.metrics.routes.labels(family).set(sum(1 for prefix in routes if prefix.version == version))
        self.metrics.next_hops.set(count_next_hops(routes))
        self.metrics.draining_prefixes.set(len(self._draining))


# -- scheduling ----------------------------------------------------------------


def coalesced_due(first_event: float, last_event: float, debounce: float, max_wait: float) -> float:
    """When a burst of wake-ups should run its pass: quiet for ``debounce``, at most ``max_wait`` after the first."""
    return min(last_event + debounce, first_event + max_wait)


class Waker:
    """Thread-safe wake-up box: event sources call :meth:`wake`, the scheduler drains it.

    Times are ``clock``'s (default :class:`SystemClock`), and so are waits.
    """

    def __init__(self, metrics: Metrics | None = None, clock: TimerClock | None = None) -> None:
        self.clock: TimerClock = clock or SystemClock()
        self._condition = threading.Condition()
        self._reasons: set[str] = set()
        self._first: float | None = None
        self._last: float | None = None
        self._stopped = False
        self._metrics = metrics
        self.last_tick = self.clock.monotonic()

    def wake(self, reason: str) -> None:
        now = self.clock.monotonic()
        with self._condition:
            self._reasons.add(reason)
            if self._first is None:
                self._first = now
            self._last = now
            self._condition.notify_all()
        if self._metrics is not None:
            self._metrics.wakeups.labels(reason).inc()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def wait(
        self,
        timer_due: float,
        debounce: float,
        max_wait: float,
        heartbeat: float = 1.0,
        events_not_before: float = 0.0,
    ) -> set[str] | None:
        """Block until a pass is due; returns the wake reasons (empty for a timer), or None to stop.

        Wakes at least every ``heartbeat`` seconds internally; returns only
        when the coalesced events (not before ``events_not_before``) or
        ``timer_due`` (monotonic) are due.
        """
        with self._condition:
            while not self._stopped:
                now = self.clock.monotonic()
                due = timer_due
                if self._first is not None and self._last is not None:
                    event_due = coalesced_due(self._first, self._last, debounce, max_wait)
                    due = min(due, max(event_due, events_not_before))
                if now >= due:
                    reasons = set(self._reasons)
                    self._reasons.clear()
                    self._first = self._last = None
                    return reasons
                self.clock.wait_until(self._condition, min(due, now + heartbeat))
                self.last_tick = self.clock.monotonic()
            return None


class Scheduler:
    """Runs the reconciler until stopped: start pass, events, deadlines, periodic resync.

    ``clock`` (default: the waker's) times the resync, the pass spacing and
    :meth:`tick_age`; it must be the waker's clock, and the reconciler's
    too for its deadlines to mean the same time.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        waker: Waker,
        settings: LoopSettings,
        on_pass: Callable[[PassReport], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.waker = waker
        self.settings = settings
        self.clock: Clock = clock or waker.clock
        self.last_tick = self.clock.monotonic()
        self.on_pass = on_pass
        # Called before each pass (e.g. re-adding an inotify watch on a directory created late).
        self.before_pass: Callable[[], object] | None = None

    # Timer-driven passes (drain ends, BIRD retries) come at least this long
    # after the previous pass, and at least retry_initial after a failed one,
    # so a deadline a failing pass could not clear never spins the loop.
    min_spacing = 0.05
    # Event-driven passes come at least this long after the previous one: if
    # a route kept differing from what we write, the route events our own
    # writes cause could otherwise loop as fast as the CPU allows.
    min_event_spacing = 0.02

    def run(self) -> None:
        next_resync = self.clock.monotonic()  # the first pass runs at once, as a full resync
        earliest = 0.0  # for timer-driven passes
        events_not_before = 0.0
        while True:
            timer_due = next_resync
            deadline = self.reconciler.next_deadline()
            if deadline is not None:
                timer_due = min(timer_due, max(deadline, earliest))
            probe_due = self.reconciler.next_bird_probe()
            if probe_due is not None:
                timer_due = min(timer_due, probe_due)
            self.tick()
            reasons = self.waker.wait(
                timer_due,
                self.settings.debounce,
                self.settings.max_wait,
                events_not_before=events_not_before,
            )
            if reasons is None:
                return
            now = self.clock.monotonic()
            full = now >= next_resync
            if full:
                reasons.add("resync")
                next_resync = now + self.settings.resync_interval
            elif not reasons:
                pass_due = deadline is not None and now >= max(deadline, earliest)
                if probe_due is not None and now >= probe_due:
                    # A probe is a connect() on BIRD's socket, not a pass: a
                    # pass (kernel dumps...) runs only once BIRD is back.
                    if self.reconciler.probe_bird():
                        reasons.add("bird-back")
                    elif not pass_due:
                        continue
                if not reasons:
                    reasons.add("timer")
            log.debug("pass", extra=fields(reasons=",".join(sorted(reasons)), full=full))
            if self.before_pass is not None:
                try:
                    self.before_pass()
                except Exception as exc:  # noqa: BLE001 - a hook must not stop the loop
                    log.warning("pre-pass hook failed", extra=fields(error=repr(exc)))
            report = self.reconciler.reconcile(full=full)
            self.tick()
            events_not_before = self.last_tick + self.min_event_spacing
            spacing = self.min_spacing if report.result != "error" else max(self.min_spacing, self.settings.retry_initial)
            earliest = self.last_tick + spacing
            if self.on_pass is not None:
                self.on_pass(report)

    def tick(self) -> None:
        """Mark the loop alive now (also while ``main`` holds the first pass for a readiness view)."""
        self.last_tick = self.clock.monotonic()

    def tick_age(self) -> float:
        return max(0.0, self.clock.monotonic() - max(self.last_tick, self.waker.last_tick))


def _error_text(error: CniError) -> str:
    return f"{error.msg} ({error.details})" if error.details else error.msg


def _hops_text(hops: Iterable[NextHop]) -> str:
    return ",".join(f"{hop.gateway}@{hop.device}" for hop in sorted(hops)) or "-"


def _prefixes_text(prefixes: Iterable[IPNetwork]) -> str:
    ordered = sorted(prefixes, key=lambda p: (p.version, p))
    if len(ordered) > 20:
        return ",".join(str(p) for p in ordered[:20]) + f",...(+{len(ordered) - 20})"
    return ",".join(str(p) for p in ordered) or "-"

