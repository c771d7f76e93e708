"""Readiness source ``kubernetes``: this node's pods from the API server, through lightkube.

How the API is followed (client-go's list-then-watch, for one resource):

1. **list** the pods with ``fieldSelector=spec.nodeName=<node>`` in all
   namespaces and build a new readiness map; it replaces the old one in one
   step, and only a map that differs is published — a re-list that finds the
   same Ready pods changes nothing, so nothing flaps;
2. **watch** from the list's resourceVersion, with ``allowWatchBookmarks``:
   ADDED/MODIFIED/DELETED update the map, BOOKMARKs only move the version.
   When the server ends a watch (its ``timeoutSeconds``), lightkube resumes it
   from the last version seen; bookmarks keep that version fresh on a node
   whose pods rarely change, so the resume does not run into ``410 Gone``;
3. on ``410 Expired`` (an ERROR event or a status), a dropped connection,
   an HTTP error or a watch silent for too long: back off (exponential,
   bounded, jittered) and go back to 1.

Ready = the ``Ready`` condition is ``True`` and there is no
``deletionTimestamp``. An allocation is matched to a pod by namespace/name;
when both carry a UID they must be equal (a pod recreated under the same
name is another pod). A pod the API no longer has is not Ready.

While the API cannot be read the last known readiness is kept for
``staleHold`` seconds; then every allocation is withdrawn and the log, the
``flock_reconciler_readiness_stale`` gauge and :meth:`status` (``/readyz``)
say so until a list succeeds again. Before the first list nothing is Ready:
the daemon holds its first pass for :meth:`wait_synced` (bounded by
staleHold), so a restart does not withdraw what the previous instance
advertised.

Threading: lightkube's AsyncClient runs on an asyncio loop in a thread of its
own, so :meth:`stop` can cancel a blocked watch read at once and the
stale-hold timer and back-off sleeps live on the same loop. The view is an
immutable object swapped under a lock; ``wake`` is called from that thread
after each change of the view, never with the lock held.

May: read pods from the API server (list, watch), run its thread, call wake,
update its own metrics. May not: read the state file, touch the kernel or BIRD.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from netconf.values import Allocation
from reconciler.logs import fields
from reconciler.metrics import PREFIX
from reconciler.node_config import KubernetesSettings
from reconciler.readiness import ReadinessStatus

log = logging.getLogger(__name__)

Wake = Callable[[str], None]
PodKey = tuple[str, str]  # (namespace, name)

WAKE_REASON = "readiness-kubernetes"
SOURCE = "kubernetes"
# A watch that delivers nothing (no event, no bookmark) for its server-side
# timeout plus this long is treated as dead (a half-open TCP connection never
# errors by itself) and replaced by a re-list.
IDLE_GRACE = 30.0


class KubernetesConfigError(ValueError):
    """No usable kubeconfig / in-cluster configuration; the message says which and why."""


class WatchStalled(Exception):
    """The watch delivered nothing for longer than its timeout allows."""


class WatchEnded(Exception):
    """lightkube's watch iterator ended, which it only does when told to stop."""


# -- pure: pods -> readiness ------------------------------------------------


def pod_key(pod: Any) -> PodKey | None:
    metadata = getattr(pod, "metadata", None)
    if metadata is None or not metadata.namespace or not metadata.name:
        return None
    return (metadata.namespace, metadata.name)


def pod_is_ready(pod: Any) -> bool:
    """``Ready`` condition ``True`` and not terminating (no ``deletionTimestamp``)."""
    metadata = getattr(pod, "metadata", None)
    if metadata is not None and metadata.deletionTimestamp is not None:
        return False
    status = getattr(pod, "status", None)
    for condition in (status.conditions or []) if status is not None else []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def ready_pods(pods: Iterable[Any]) -> dict[PodKey, str]:
    """(namespace, name) -> UID of the Ready pods in a list."""
    ready: dict[PodKey, str] = {}
    for pod in pods:
        key = pod_key(pod)
        if key is not None and pod_is_ready(pod):
            ready[key] = pod.metadata.uid or ""
    return ready


def apply_event(ready: Mapping[PodKey, str], kind: str, pod: Any) -> dict[PodKey, str]:
    """The Ready map after one watch event (ADDED, MODIFIED, DELETED); a new dict."""
    updated = dict(ready)
    key = pod_key(pod)
    if key is None:
        return updated
    uid = pod.metadata.uid or ""
    if kind == "DELETED":
        # Only the incarnation that is gone; a newer pod of the same name stays.
        if key in updated and (not uid or not updated[key] or updated[key] == uid):
            del updated[key]
    elif pod_is_ready(pod):
        updated[key] = uid
    else:
        updated.pop(key, None)
    return updated


@dataclass(frozen=True)
class PodReadinessView:
    """An immutable snapshot: the node's Ready pods, or everything withdrawn (stale)."""

    ready: Mapping[PodKey, str] = field(default_factory=lambda: MappingProxyType({}))
    withdrawn: bool = False

    def is_ready(self, allocation: Allocation) -> bool:
        if self.withdrawn:
            return False
        pod = allocation.pod
        if pod.namespace and pod.name:
            uid = self.ready.get((pod.namespace, pod.name))
            if uid is None:
                return False
            # Both known and different: the same name, another pod.
            return not (pod.uid and uid and pod.uid != uid)
        if pod.uid:
            return pod.uid in self.ready.values()
        return False


def retry_delay(failures: int, initial: float, maximum: float, jitter: float) -> float:
    """initial, 2x, 4x... capped at maximum (failures >= 1), scaled into [50 %, 100 %] by ``jitter`` in [0, 1)."""
    # int ** int is typed Any (a negative exponent gives a float); here it is never negative.
    factor: int = 2 ** max(0, failures - 1)
    return min(maximum, initial * factor) * (0.5 + 0.5 * jitter)


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(reason, detail) of a failed list or watch; reason is a small fixed set (a metric label)."""
    import httpx2
    from lightkube.core.exceptions import ApiError

    if isinstance(exc, ApiError) and exc.status is not None:
        code = exc.status.code
        text = f"{code} {exc.status.reason or ''}: {exc.status.message or ''}".strip()
        return ("expired" if code == 410 else "http", text)
    if isinstance(exc, httpx2.HTTPStatusError):
        code = exc.response.status_code
        return ("expired" if code == 410 else "http", f"HTTP {code}")
    if isinstance(exc, httpx2.TransportError):
        return ("connection", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, WatchStalled):
        return ("stalled", str(exc))
    return ("error", repr(exc))


# -- configuration and the client ---------------------------------------------


def load_kube_config(settings: KubernetesSettings) -> Any:
    """The lightkube ``SingleConfig`` to use; raises KubernetesConfigError naming the problem.

    ``kubeconfig`` set: that file (its current context, or ``context``).
    Unset: in-cluster (service account token, CA, KUBERNETES_SERVICE_HOST),
    then ``$KUBECONFIG``, then ``~/.kube/config`` (lightkube's ``from_env``).
    """
    import yaml
    from lightkube import KubeConfig
    from lightkube.core.exceptions import ConfigError

    where = settings.kubeconfig or "in-cluster service account / $KUBECONFIG / ~/.kube/config"
    try:
        config = KubeConfig.from_file(settings.kubeconfig) if settings.kubeconfig else KubeConfig.from_env()
        single = config.get(settings.context)
    except (ConfigError, OSError, KeyError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise KubernetesConfigError(f"readiness.kubernetes: no usable kubeconfig ({where}): {exc}") from exc
    if single is None or single.user is None:
        raise KubernetesConfigError(f"readiness.kubernetes: the kubeconfig context ({where}) names no user")
    return single


def make_client(config: Any, settings: KubernetesSettings) -> Any:
    """A lightkube AsyncClient; raises KubernetesConfigError (e.g. an unreadable CA file)."""
    import ssl

    import httpx2
    from lightkube import AsyncClient
    from lightkube.core.exceptions import ConfigError

    try:
        return AsyncClient(config, timeout=httpx2.Timeout(settings.request_timeout))
    except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
        raise KubernetesConfigError(f"readiness.kubernetes: cannot set up the API client: {exc}") from exc


def open_pod_watch(client: Any, node_name: str, version: str, server_timeout: int) -> tuple[Any, bool]:
    """Start lightkube's watch of the node's pods from ``version``; returns (async iterator, bookmarks).

    lightkube's public ``watch()`` (1.0.x) has no ``allowWatchBookmarks``
    parameter, although its watch driver handles BOOKMARK events (it takes
    their resourceVersion for the next resume). The request is therefore
    built with lightkube's own request builder plus that one parameter; if
    those internals are missing the public ``watch()`` is used, without
    bookmarks (the tests notice: they assert the parameter is sent).
    """
    from lightkube.core.selector import build_selector
    from lightkube.resources.core_v1 import Pod
    from lightkube.types import on_error_raise

    selector = {"spec.nodeName": node_name}
    # lightkube internals, untyped and maybe absent: the AttributeError is caught below.
    generic: Any = getattr(client, "_client", None)
    try:
        request = generic.prepare_request(
            "list",
            res=Pod,
            namespace="*",
            watch=True,
            params={
                # A literal, so mypy infers build_selector's own (invariant) value type.
                "fieldSelector": build_selector({"spec.nodeName": node_name}, for_fields=True),
                "resourceVersion": version,
                "timeoutSeconds": server_timeout,
                "allowWatchBookmarks": "true",
            },
        )
        return generic.watch(request, on_error=on_error_raise), True
    except (AttributeError, TypeError):
        stream = client.watch(
            Pod, namespace="*", fields=selector, resource_version=version, server_timeout=server_timeout
        )
        return stream, False


# -- metrics ------------------------------------------------------------------


class KubernetesMetrics:
    """The source's metrics; registered on the daemon's registry by :meth:`register`."""

    def __init__(self) -> None:
        self.stale = Gauge(
            PREFIX + "readiness_stale",
            "1 while the readiness source could not be read for longer than its hold time "
            "and every allocation is withdrawn",
            ["source"],
            registry=None,
        )
        self.stale_withdrawals = Counter(
            PREFIX + "readiness_stale_withdrawals",
            "Times every allocation was withdrawn because the readiness source stayed unreadable",
            ["source"],
            registry=None,
        )
        self.ready_pods = Gauge(
            PREFIX + "readiness_ready_pods",
            "Pods the readiness source currently knows as Ready",
            ["source"],
            registry=None,
        )
        self.lists = Counter(
            PREFIX + "kubernetes_lists",
            "Pod lists from the API server by result (ok, error)",
            ["result"],
            registry=None,
        )
        self.failures = Counter(
            PREFIX + "kubernetes_watch_failures",
            "Failed pod lists or watches by reason (expired, connection, http, stalled, error); each re-lists",
            ["reason"],
            registry=None,
        )
        self.collectors = (self.stale, self.stale_withdrawals, self.ready_pods, self.lists, self.failures)
        self.stale.labels(SOURCE).set(0)
        self.stale_withdrawals.labels(SOURCE)
        self.ready_pods.labels(SOURCE).set(0)
        for result in ("ok", "error"):
            self.lists.labels(result)
        for reason in ("expired", "connection", "http", "stalled", "error"):
            self.failures.labels(reason)

    def register(self, registry: CollectorRegistry) -> None:
        for collector in self.collectors:
            registry.register(collector)


# -- the source ---------------------------------------------------------------


class KubernetesReadiness:
    """``readiness.source: kubernetes``; see the module docstring.

    Constructing it reads the kubeconfig and raises KubernetesConfigError (a
    ValueError) when it is unusable, so a misconfigured daemon stops at
    start-up. ``client_factory`` (returns a lightkube AsyncClient) and ``rng``
    (jitter, [0, 1)) are for tests.
    """

    name = SOURCE

    # The view means nothing before the first pod list (see ReadinessSource).
    needs_first_sync = True

    def __init__(
        self,
        settings: KubernetesSettings,
        node_name: str,
        *,
        client_factory: Callable[[], Any] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not node_name:
            raise KubernetesConfigError("readiness.source 'kubernetes' needs nodeName")
        self.settings = settings
        self.node_name = node_name
        if client_factory is None:
            config = load_kube_config(settings)
            self.server = str(config.cluster.server)
            # The first client is built here so that its errors (CA file...)
            # surface at start-up; a start after a stop gets a fresh one.
            first = [make_client(config, settings)]

            def client_factory() -> Any:
                return first.pop() if first else make_client(config, settings)

        else:
            self.server = "(injected client)"
        self._client_factory = client_factory
        self._random = rng
        self._delivered = 0
        self.metrics = KubernetesMetrics()
        self._lock = threading.Lock()
        self._view = PodReadinessView()
        self._synced = threading.Event()
        self._version: str | None = None
        self._down_since: float | None = time.monotonic()  # "down" until the first list
        self._error: str | None = None
        self._stale = False
        self._bookmarks: bool | None = None
        self._wake: Wake | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stale_timer: asyncio.TimerHandle | None = None

    # -- ReadinessSource ----------------------------------------------------

    def start(self, wake: Wake) -> None:
        """List and watch in a thread of its own; ``wake`` is called on every readiness change."""
        if self._thread is not None:
            return
        self._wake = wake
        with self._lock:
            self._down_since = time.monotonic()
        log.info(
            "watching pods",
            extra=fields(node=self.node_name, server=self.server, stale_hold=f"{self.settings.stale_hold:g}s"),
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        # Created before the loop runs: stop() can always cancel it.
        self._task = loop.create_task(self._main())
        self._thread = threading.Thread(target=self._run_loop, name="flock-kubernetes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None or loop is None or task is None:
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop already finished
            pass
        thread.join(timeout=5)
        if thread.is_alive():
            log.warning("pod watcher thread did not stop within 5s")
        self._thread = None

    def observe(self) -> PodReadinessView:
        with self._lock:
            return self._view

    def status(self) -> ReadinessStatus:
        with self._lock:
            error = f"; last error: {self._error}" if self._error else ""
            hold = f"{self.settings.stale_hold:g}s"
            if self._stale:
                age = time.monotonic() - (self._down_since or time.monotonic())
                return ReadinessStatus(
                    False,
                    f"no pod list from the API server for {age:.1f}s (staleHold {hold}): "
                    f"every allocation withdrawn{error}",
                )
            if not self._synced.is_set():
                return ReadinessStatus(False, f"waiting for the first pod list from the API server{error}")
            if self._down_since is not None:
                age = time.monotonic() - self._down_since
                return ReadinessStatus(
                    False, f"pod watch down for {age:.1f}s, keeping the last known readiness (staleHold {hold}){error}"
                )
            return ReadinessStatus(True, "")

    # -- extras used by main and tests ---------------------------------------

    @property
    def sync_timeout(self) -> float:
        """How long the daemon holds its first pass for the first list: the stale hold."""
        return self.settings.stale_hold

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once a pod list has succeeded (since start)."""
        return self._synced.wait(timeout)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        self.metrics.register(registry)

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen (list, event or bookmark)."""
        return self._version

    @property
    def bookmarks(self) -> bool | None:
        """Whether the watch asks for bookmarks (None before the first watch)."""
        return self._bookmarks

    # -- the watcher thread ---------------------------------------------------

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None and self._task is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - last resort: say so instead of dying silently
            log.error("pod watcher stopped by an unexpected error", extra=fields(error=repr(exc)))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            down_since = self._down_since or time.monotonic()
        self._arm_stale_timer(loop, down_since)
        client = self._client_factory()
        try:
            await self._follow(client)
        finally:
            if self._stale_timer is not None:
                self._stale_timer.cancel()
            try:
                await client.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection pool
                log.debug("closing the API client failed", extra=fields(error=repr(exc)))

    async def _follow(self, client: Any) -> None:
        failures = 0
        backoff = self.settings.backoff
        while True:
            watch_started: float | None = None
            self._delivered = 0
            try:
                version = await self._list(client)
                watch_started = time.monotonic()
                await self._watch(client, version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure means: back off, re-list
                reason, detail = classify_failure(exc)
                if watch_started is None:
                    self.metrics.lists.labels("error").inc()
                stable = watch_started is not None and (
                    self._delivered > 0 or time.monotonic() - watch_started >= backoff.maximum
                )
                failures = 1 if stable else failures + 1
                # Jitter spreads the re-lists of many nodes after an apiserver restart.
                delay = retry_delay(failures, backoff.initial, backoff.maximum, self._random())
                self.metrics.failures.labels(reason).inc()
                self._note_failure(reason, detail, "list" if watch_started is None else "watch", failures, delay)
                await asyncio.sleep(delay)

    async def _list(self, client: Any) -> str:
        from lightkube.resources.core_v1 import Pod

        result = client.list(Pod, namespace="*", fields={"spec.nodeName": self.node_name})
        pods = [pod async for pod in result]
        version: str = result.resourceVersion  # NotReadyError without one: a failure like any other
        self.metrics.lists.labels("ok").inc()
        self._version = version
        self._publish_list(ready_pods(pods), version)
        return version

    async def _watch(self, client: Any, version: str) -> None:
        server_timeout = int(self.settings.watch_timeout * (1 + self._random()))
        stream, bookmarks = open_pod_watch(client, self.node_name, version, server_timeout)
        if bookmarks != self._bookmarks:
            self._bookmarks = bookmarks
            if not bookmarks:
                log.info("lightkube cannot ask for watch bookmarks; watching without")
        idle = server_timeout + IDLE_GRACE
        iterator = stream.__aiter__()
        try:
            while True:
                try:
                    kind, pod = await asyncio.wait_for(iterator.__anext__(), idle)
                except TimeoutError:
                    raise WatchStalled(f"nothing from the watch for {idle:g}s") from None
                except StopAsyncIteration:
                    raise WatchEnded("the watch iterator ended") from None
                self._delivered += 1
                metadata = getattr(pod, "metadata", None)
                if metadata is not None and metadata.resourceVersion:
                    self._version = metadata.resourceVersion
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._publish_event(kind, pod)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- view changes (watcher thread) ------------------------------------------

    def _publish_list(self, ready: dict[PodKey, str], version: str) -> None:
        with self._lock:
            old = self._view
            was_stale, was_synced, down_since = self._stale, self._synced.is_set(), self._down_since
            changed = old.withdrawn or dict(old.ready) != ready
            if changed:
                self._view = PodReadinessView(MappingProxyType(ready))
            self._stale = False
            self._down_since = None
            self._error = None
            self._synced.set()
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        self.metrics.stale.labels(SOURCE).set(0)
        self.metrics.ready_pods.labels(SOURCE).set(len(ready))
        if not was_synced:
            log.info("pod list received", extra=fields(ready=len(ready), resource_version=version))
        elif was_stale:
            log.info(
                "pod list received again: readiness is current, withdrawn allocations may be advertised again",
                extra=fields(ready=len(ready), down_for=f"{time.monotonic() - (down_since or 0):.1f}s"),
            )
        elif changed:
            log.info("re-list changed readiness", extra=fields(ready=len(ready), before=len(old.ready)))
        else:
            log.debug("re-list found the same Ready pods", extra=fields(ready=len(ready), resource_version=version))
        if changed:
            self._call_wake()

    def _publish_event(self, kind: str, pod: Any) -> None:
        with self._lock:
            old = self._view
            ready = apply_event(old.ready, kind, pod)
            if ready == dict(old.ready):
                return  # an update that does not change readiness (annotations, status details...)
            self._view = PodReadinessView(MappingProxyType(ready), withdrawn=old.withdrawn)
        self.metrics.ready_pods.labels(SOURCE).set(len(ready))
        key = pod_key(pod)
        log.info(
            "pod readiness changed",
            extra=fields(pod="/".join(key) if key else "?", ready=key in ready, event=kind, uid=pod.metadata.uid),
        )
        self._call_wake()

    def _note_failure(self, reason: str, detail: str, stage: str, failures: int, delay: float) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = now
            self._error = f"{stage} {reason}: {detail}"
            stale, down_since = self._stale, self._down_since or now
        if first and self._loop is not None:
            self._arm_stale_timer(self._loop, now)
        if stale:
            holding = "withdrawn"
        else:
            holding = f"{max(0.0, down_since + self.settings.stale_hold - now):.1f}s"
        level = logging.INFO if reason == "expired" and failures == 1 else logging.WARNING
        log.log(
            level,
            "pod watch expired, re-listing" if reason == "expired" else f"pod {stage} failed, re-listing",
            extra=fields(reason=reason, error=detail, failures=failures, retry_in=f"{delay:.3f}s", holding=holding),
        )

    def _arm_stale_timer(self, loop: asyncio.AbstractEventLoop, down_since: float) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
        delay = max(0.0, down_since + self.settings.stale_hold - time.monotonic())
        self._stale_timer = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        """The stale-hold timer: still no list since the watch went down → withdraw everything."""
        self._stale_timer = None
        with self._lock:
            if self._down_since is None or self._stale:
                return
            self._stale = True
            old = self._view
            self._view = PodReadinessView(old.ready, withdrawn=True)
            down_for = time.monotonic() - self._down_since
            error = self._error
        self.metrics.stale.labels(SOURCE).set(1)
        self.metrics.stale_withdrawals.labels(SOURCE).inc()
        log.warning(
            "pod readiness stale: withdrawing every allocation",
            extra=fields(
                down_for=f"{down_for:.1f}s",
                stale_hold=f"{self.settings.stale_hold:g}s",
                ready_before=len(old.ready),
                error=error or "no pod list yet",
            ),
        )
        self._call_wake()

    def _call_wake(self) -> None:
        if self._wake is not None:
            self._wake(WAKE_REASON)
