"""``flock-reconciler --config FILE [--once]``: the node daemon's process.

Start it inside the node's network namespace (``nsenter --net=PATH``, or a
host-network DaemonSet pod): every netlink socket it opens lives in the
namespace of the process.

- ``--once``: one pass (read, plan, kernel, BIRD), then wait out the drain
  delay of any withdrawal and delete those routes; exit 0 when everything
  applied, 1 when something failed (state directory unreadable, kernel or
  BIRD error) — also when a record was unreadable or an address refused,
  after everything else was applied.
- Without ``--once``: run until SIGTERM/SIGINT. Wake-ups: the state file
  (inotify on its directory), the readiness source, netlink route events
  of our protocol, drain deadlines, BIRD retries and the resync interval.
- A readiness source with a first sync (``kubernetes``: the first pod list)
  holds the first pass until it has its view, at most its stale hold; with
  ``--once``, no view in that time means exit 1 and nothing changed.

**Shutdown leaves routes and the BIRD export in place.** A restart (upgrade,
crash, node agent rollout) must not flap the fabric: the next instance
adopts the routes it finds (same protocol number) without deleting and
re-adding them, and BIRD keeps advertising from its include file meanwhile.
To withdraw a node on purpose, make its pods NotReady (or stop BIRD).

Exit codes: 0 clean stop / ``--once`` success, 1 runtime failure, 2 bad
command line or node config (the message names the field).

Process-wide state (logging handler, signal handlers) is set up only by
the default :class:`Runtime`; tests pass their own to :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netconf.state import StateStore
from reconciler.endpoints import HttpEndpoints, ListenError, parse_listen
from reconciler.kernel import KernelError, KernelRoutes
from reconciler.logs import KeyValueFormatter, fields
from reconciler.loop import (
    BirdPort,
    KernelPort,
    LoopSettings,
    PassReport,
    Reconciler,
    Scheduler,
    SystemClock,
    TimerClock,
    Waker,
)
from reconciler.metrics import Metrics
from reconciler.node_config import NodeConfig, NodeConfigError, ReadinessSettings, load_node_config
from reconciler.readiness import AlwaysReady, FileReadiness, ReadinessSource, wait_for_first_view
from reconciler.watch import ANY_FILE, FileWatch, RouteMonitor, WatchError

log = logging.getLogger("reconciler.main")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class StartupError(Exception):
    """A component could not be created; the message says which and why."""


def make_bird(config: NodeConfig) -> BirdPort:
    # Imported here: the BIRD adapter is its own module, loaded only by the daemon.
    try:
        from reconciler.bird import BirdExporter
    except ImportError as exc:
        raise StartupError(f"the BIRD adapter (reconciler.bird) cannot be imported: {exc}") from exc
    return BirdExporter(config.bird, config.bgp)


def make_readiness_source(settings: ReadinessSettings, node_name: str | None = None) -> ReadinessSource:
    """The source named by the node config.

    Raises ValueError when it cannot be built: ``kubernetes`` without a node
    name or without a usable kubeconfig (``KubernetesConfigError``).
    """
    if settings.source == "always":
        return AlwaysReady()
    if settings.source == "file":
        assert settings.file is not None  # the config model requires it
        return FileReadiness(settings.file)
    if not node_name:
        raise ValueError("readiness.source 'kubernetes' needs nodeName (the pods of that node are watched)")
    # Imported here: lightkube is loaded only by daemons that use it.
    from reconciler.kubernetes_source import KubernetesReadiness

    return KubernetesReadiness(settings.kubernetes, node_name)


def make_kernel(config: NodeConfig) -> KernelPort:
    return KernelRoutes(protocol=config.routes.protocol, table=config.routes.table)


def make_route_monitor(config: NodeConfig, wake: Callable[[str], None]) -> RouteMonitor:
    return RouteMonitor(wake, protocol=config.routes.protocol, table=config.routes.table)


def install_process_state(config: NodeConfig, stop: Callable[[], None]) -> Callable[[], None]:
    """Logging to stderr and SIGTERM/SIGINT -> stop; returns a function restoring both."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    # lightkube's HTTP client logs every request (each watch resume) at info.
    http_client_log = logging.getLogger("httpx2")
    previous_http_level = http_client_log.level
    http_client_log.setLevel(logging.WARNING)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda number, frame: stop())

    def restore() -> None:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        http_client_log.setLevel(previous_http_level)

    return restore


@dataclass
class Runtime:
    """Everything :func:`run` creates, injectable for tests."""

    make_kernel: Callable[[NodeConfig], KernelPort] = make_kernel
    make_bird: Callable[[NodeConfig], BirdPort] = make_bird
    make_readiness: Callable[[NodeConfig], ReadinessSource] = lambda config: make_readiness_source(
        config.readiness, config.node_name
    )
    make_route_monitor: Callable[[NodeConfig, Callable[[str], None]], Any] | None = make_route_monitor
    make_file_watch: Callable[[dict[str, str], Callable[[str], None]], Any] | None = FileWatch
    install_process_state: Callable[[NodeConfig, Callable[[], None]], Callable[[], None]] = install_process_state
    # Every timer's clock: the reconciler's, the scheduler's and the waker's.
    clock: TimerClock = field(default_factory=SystemClock)
    sleep: Callable[[float], None] | None = None
    # Set by run(): lets a test stop the daemon and look at its parts.
    waker: Waker | None = None
    reconciler: Reconciler | None = None
    http: HttpEndpoints | None = None
    scheduler: Scheduler | None = None
    started: threading.Event = field(default_factory=threading.Event)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="flock-reconciler",
        description="Advertise anycast addresses of Ready local pods: host routes + BIRD export.",
    )
    parser.add_argument("--config", required=True, help="node config file (YAML)")
    parser.add_argument("--once", action="store_true", help="one reconcile pass (plus drain), then exit")
    return parser.parse_args(list(argv))


def run(argv: Sequence[str], runtime: Runtime | None = None) -> int:
    """The daemon; returns the exit code. See the module docstring."""
    runtime = runtime or Runtime()
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        config = load_node_config(args.config)
        if config.http.listen:
            parse_listen(config.http.listen)
    except (NodeConfigError, ListenError) as exc:
        print(f"flock-reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE

    metrics = Metrics()
    waker = Waker(metrics, clock=runtime.clock)
    runtime.waker = waker
    restore = runtime.install_process_state(config, waker.stop)
    try:
        return _run_configured(config, args.once, runtime, waker, metrics)
    finally:
        restore()


def _run_configured(config: NodeConfig, once: bool, runtime: Runtime, waker: Waker, metrics: Metrics) -> int:
    settings = LoopSettings.from_config(config)
    try:
        readiness = runtime.make_readiness(config)
        kernel = runtime.make_kernel(config)
        bird = runtime.make_bird(config)
    except ValueError as exc:  # a setting the components refuse (e.g. an unusable kubeconfig)
        print(f"flock-reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StartupError, KernelError) as exc:
        log.error("cannot start", extra=fields(error=str(exc)))
        return EXIT_FAILURE
    readiness.register_metrics(metrics.registry)
    _bootstrap_bird_files(bird)
    store = StateStore(config.state_dir)
    reconciler = Reconciler(
        store=store,
        readiness=readiness,
        kernel=kernel,
        bird=bird,
        settings=settings,
        pools=config.pools,
        clock=runtime.clock,
        metrics=metrics,
    )
    runtime.reconciler = reconciler
    log.info(
        "starting",
        extra=fields(
            node=config.node_name,
            state=store.state_dir,
            readiness=readiness.name,
            protocol=config.routes.protocol,
            table=config.routes.table,
            bird_mode=config.bird.mode,
            pools=",".join(str(pool) for pool in config.pools),
            once=once,
        ),
    )
    try:
        if once:
            return _run_once_with_readiness(reconciler, readiness, runtime, waker, settings)
        return _run_daemon(config, store, reconciler, readiness, runtime, waker, settings, metrics)
    finally:
        kernel.close()


def _bootstrap_bird_files(bird: BirdPort) -> None:
    # BIRD refuses to start while its include file is missing; creating an
    # empty one (never overwriting) lets BIRD start before or after us.
    try:
        written = bird.ensure_bootstrap_files()
    except OSError as exc:
        log.warning("cannot create BIRD's initial files", extra=fields(error=str(exc)))
        return
    if written:
        log.info("created BIRD's initial files", extra=fields(paths=",".join(written)))


def _run_once_with_readiness(
    reconciler: Reconciler, readiness: ReadinessSource, runtime: Runtime, waker: Waker, settings: LoopSettings
) -> int:
    # A source with a first sync (kubernetes) must have its view before the
    # pass: without it nothing is Ready and the pass would withdraw everything.
    if not readiness.needs_first_sync:
        return _run_once(reconciler, runtime, waker, settings)
    readiness.start(waker.wake)
    try:
        if not wait_for_first_view(readiness, lambda: waker.stopped):
            log.error(
                "no readiness view, nothing changed",
                extra=fields(readiness=readiness.name, detail=readiness.status().detail),
            )
            return EXIT_FAILURE
        return _run_once(reconciler, runtime, waker, settings)
    finally:
        readiness.stop()


def _run_once(reconciler: Reconciler, runtime: Runtime, waker: Waker, settings: LoopSettings) -> int:
    report = reconciler.reconcile(full=True)
    # Withdrawals wait out the drain delay: sleep until each deadline and pass again.
    limit = runtime.clock.monotonic() + settings.drain_delay + 5.0
    while report.result != "skipped" and reconciler.draining and not waker.stopped:
        deadline = min(reconciler.draining.values())
        now = runtime.clock.monotonic()
        if now > limit:
            break
        _sleep(runtime, waker, max(0.0, deadline - now))
        report = reconciler.reconcile()
    _log_report(report)
    # Everything else was applied; a record that could not be read or an
    # address that was refused still means the node is not as asked.
    clean = report.ok and not reconciler.draining and not report.unreadable and not report.refused
    return EXIT_OK if clean else EXIT_FAILURE


def _sleep(runtime: Runtime, waker: Waker, seconds: float) -> None:
    if runtime.sleep is not None:
        runtime.sleep(seconds)
    else:
        waker.wait(waker.clock.monotonic() + seconds, 0.0, 0.0)


def _run_daemon(
    config: NodeConfig,
    store: StateStore,
    reconciler: Reconciler,
    readiness: ReadinessSource,
    runtime: Runtime,
    waker: Waker,
    settings: LoopSettings,
    metrics: Metrics,
) -> int:
    stoppers: list[Callable[[], None]] = []
    scheduler = Scheduler(reconciler, waker, settings, clock=runtime.clock)
    runtime.scheduler = scheduler
    try:
        file_watch = None
        if runtime.make_file_watch is not None:
            try:
                store.ensure_directory()
            except Exception as exc:  # noqa: BLE001 - the plugin creates it later; resync covers us
                log.warning("state directory not usable yet", extra=fields(error=str(exc)))
            try:
                # Any record file of the directory, and flock 0.1's state.json
                # until the first plugin exec migrates it.
                watched = {os.path.join(store.allocations_dir, ANY_FILE): "state-file", store.legacy_path: "state-file"}
                file_watch = runtime.make_file_watch(watched, waker.wake)
                file_watch.start()
                stoppers.append(file_watch.stop)
                scheduler.before_pass = file_watch.ensure_watches
            except WatchError as exc:
                log.warning("state file not watched, relying on resync", extra=fields(error=str(exc)))
        readiness.start(waker.wake)
        stoppers.append(readiness.stop)
        if runtime.make_route_monitor is not None:
            monitor = runtime.make_route_monitor(config, waker.wake)
            try:
                monitor.start()
                stoppers.append(monitor.stop)
            except KernelError as exc:
                log.warning("route events not monitored, relying on resync", extra=fields(error=str(exc)))
        if config.http.listen:
            endpoints = HttpEndpoints(
                config.http.listen,
                metrics.registry,
                healthz=lambda: _healthz(scheduler, settings),
                readyz=lambda: _readyz(reconciler),
            )
            try:
                endpoints.start()
            except OSError as exc:
                log.error("cannot serve HTTP", extra=fields(listen=config.http.listen, error=str(exc)))
                return EXIT_FAILURE
            runtime.http = endpoints
            stoppers.append(endpoints.stop)
            log.info("serving HTTP", extra=fields(listen="%s:%d" % endpoints.address))
        # Hold the first pass until the readiness source has a view (bounded
        # by its stale hold): passing with none would withdraw everything a
        # previous instance left advertised.
        if not wait_for_first_view(readiness, lambda: waker.stopped, scheduler.tick):  # ticks for /healthz
            if not waker.stopped:
                log.warning(
                    "readiness source has no view yet; passing with nothing Ready",
                    extra=fields(readiness=readiness.name, detail=readiness.status().detail),
                )
        runtime.started.set()
        scheduler.run()
        log.info("stopping; routes and BIRD export are left in place")
        return EXIT_OK
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - finish shutting down the rest
                log.warning("error while stopping", extra=fields(error=repr(exc)))


def _healthz(scheduler: Scheduler, settings: LoopSettings) -> tuple[bool, dict[str, Any]]:
    # A pass may legitimately take a while (a cold start with thousands of
    # routes); only a loop silent for much longer than that is unhealthy.
    limit = max(60.0, 2 * settings.resync_interval)
    age = scheduler.tick_age()
    return age < limit, {"loop_tick_age_seconds": round(age, 3), "limit_seconds": limit}


def _readyz(reconciler: Reconciler) -> tuple[bool, dict[str, Any]]:
    health = reconciler.health()
    detail: dict[str, Any] = {
        "state_file": health.state_ok,
        "kernel": health.kernel_ok,
        "bird": health.bird_ok,
        "readiness": health.readiness_ok,
        "passes": health.passes,
        "problems": list(health.problems),
        # Not problems: /readyz stays 200 for them (see loop.Health).
        "warnings": list(health.warnings),
        "unreadable_records": health.unreadable_records,
        "refused_addresses": health.refused_addresses,
    }
    exported = reconciler.exported
    if exported is not None:
        detail["exported"] = len(exported)
    return health.ready, detail


def _log_report(report: PassReport) -> None:
    log.info(
        "pass done",
        extra=fields(
            result=report.result,
            written=len(report.written),
            deleted=len(report.deleted),
            exported=len(report.exported) if report.exported is not None else "unknown",
            unreadable_records=len(report.unreadable),
            refused_addresses=len(report.refused),
            errors="; ".join(report.errors) or "-",
        ),
    )


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
