"""Readiness sources: which committed allocations belong to a Ready pod.

One interface (:class:`ReadinessSource`) with a source per setting of
``readiness.source``:

- ``always`` — every committed allocation is Ready (non-Kubernetes runtimes, the demo).
- ``file`` — a JSON or YAML mapping written by an external health checker:
  the hook for anything that knows better than the runtime whether a pod can
  serve. Keys are a pod UID, ``namespace/name`` or a container ID; values
  ``true``/``false``. The most specific key present wins (UID, then
  ``namespace/name``, then container ID); an allocation with no key is not
  Ready. An unreadable, missing or invalid file keeps the last good view
  (empty at start: nothing Ready) and is reported, so a checker rewriting
  its file never flaps the fabric. Write it atomically (temp + rename).
- ``kubernetes`` — the pods of this node from the API server
  (``reconciler.kubernetes_source``, imported only for that setting): a
  thread lists and watches, keeps a cache and calls ``wake`` on readiness
  changes; :meth:`observe` hands the loop an immutable view of that cache.

Every source declares the whole protocol. One that needs a first sync
before its view means anything (``kubernetes``, ``needs_first_sync``)
blocks in ``wait_synced(timeout)`` up to ``sync_timeout``, and the daemon
holds its first pass for it (:func:`wait_for_first_view`); the others
answer at once. ``register_metrics(registry)`` adds a source's own metrics
(none for most).

May: read the readiness file, read pods from the API server (the
``kubernetes`` source), run watcher threads that call ``wake``.
May not: read the state file, touch the kernel or BIRD.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from netconf.values import Allocation
from reconciler.watch import FileWatch, Wake, WatchError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


class ReadinessView(Protocol):
    """An immutable snapshot the loop uses for one pass."""

    def is_ready(self, allocation: Allocation) -> bool: ...


class ReadinessSource(Protocol):
    """A readiness source; ``start`` may spawn a watcher that calls ``wake(reason)``.

    ``needs_first_sync``: the view means nothing until a first list from
    elsewhere arrived (kubernetes); the daemon then holds its first pass
    (``wait_synced``) for at most ``sync_timeout`` seconds, since a pass on
    an empty view would withdraw everything. Sources without one answer
    ``wait_synced`` at once.
    """

    name: str
    needs_first_sync: bool

    @property
    def sync_timeout(self) -> float: ...

    def start(self, wake: Wake) -> None: ...

    def stop(self) -> None: ...

    def observe(self) -> ReadinessView:
        """The current view; never raises (keeps the last good view on errors)."""
        ...

    def status(self) -> ReadinessStatus: ...

    def wait_synced(self, timeout: float | None = None) -> bool: ...

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add the source's own metrics to the daemon's registry (none for most)."""
        ...


@dataclass(frozen=True)
class ReadinessStatus:
    healthy: bool
    detail: str = ""


class _AllReady:
    def is_ready(self, allocation: Allocation) -> bool:
        return True


@dataclass(frozen=True)
class MappingView:
    """Readiness from a key -> bool mapping; see the module docstring for key lookup."""

    ready: Mapping[str, bool] = field(default_factory=dict)

    def is_ready(self, allocation: Allocation) -> bool:
        for key in readiness_keys(allocation):
            if key in self.ready:
                return self.ready[key]
        return False


def readiness_keys(allocation: Allocation) -> list[str]:
    """Keys an allocation is looked up by, most specific first."""
    keys = []
    pod = allocation.pod
    if pod.uid:
        keys.append(pod.uid)
    if pod.namespace and pod.name:
        keys.append(f"{pod.namespace}/{pod.name}")
    keys.append(allocation.container_id)
    return keys


class _ViewFromStart:
    """For sources whose view is valid from the start: no first sync, no metrics of their own."""

    needs_first_sync = False
    sync_timeout = 0.0

    def wait_synced(self, timeout: float | None = None) -> bool:
        return True

    def register_metrics(self, registry: CollectorRegistry) -> None:
        pass


class AlwaysReady(_ViewFromStart):
    """``readiness.source: always``."""

    name = "always"

    def start(self, wake: Wake) -> None:
        pass

    def stop(self) -> None:
        pass

    def observe(self) -> ReadinessView:
        return _AllReady()

    def status(self) -> ReadinessStatus:
        return ReadinessStatus(True)


class ReadinessFileError(ValueError):
    """The readiness file is not a mapping of string keys to booleans."""


def parse_readiness_document(text: str) -> dict[str, bool]:
    """Decode a JSON or YAML readiness mapping; raises ReadinessFileError.

    An empty document is an empty mapping (nothing Ready).
    """
    import yaml

    try:
        data: Any = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ReadinessFileError(f"neither JSON nor YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReadinessFileError(f"top level must be a mapping, got {type(data).__name__}")
    ready: dict[str, bool] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise ReadinessFileError(f"key {key!r} must be a non-empty string")
        if not isinstance(value, bool):
            raise ReadinessFileError(f"value of {key!r} must be true or false, got {value!r}")
        ready[key] = value
    return ready


class FileReadiness(_ViewFromStart):
    """``readiness.source: file``: a mapping file, re-read on change and on every pass."""

    name = "file"

    def __init__(self, path: str, watch_factory: Callable[[dict[str, str], Wake], FileWatch] = FileWatch) -> None:
        self.path = os.path.abspath(path)
        self._watch_factory = watch_factory
        self._watch: FileWatch | None = None
        self._lock = threading.Lock()
        self._view = MappingView()
        self._raw: bytes | None = None
        self._error: str | None = None

    def start(self, wake: Wake) -> None:
        """Watch the file's directory; without inotify the periodic resync still re-reads it."""
        try:
            self._watch = self._watch_factory({self.path: "readiness-file"}, wake)
            self._watch.start()
        except WatchError as exc:
            log.warning(
                "readiness file not watched, relying on resync",
                extra={"fields": {"path": self.path, "error": str(exc)}},
            )
            self._watch = None

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def observe(self) -> ReadinessView:
        if self._watch is not None:
            self._watch.ensure_watches()
        with self._lock:
            self._refresh()
            return self._view

    def status(self) -> ReadinessStatus:
        with self._lock:
            return ReadinessStatus(self._error is None, self._error or "")

    def _refresh(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            self._fail(f"cannot read readiness file {self.path}: {exc.strerror or exc}")
            return
        if raw == self._raw and self._error is None:
            return
        try:
            ready = parse_readiness_document(raw.decode("utf-8"))
        except (ReadinessFileError, UnicodeDecodeError) as exc:
            self._fail(f"invalid readiness file {self.path}: {exc}")
            return
        if self._error is not None:
            log.info("readiness file readable again", extra={"fields": {"path": self.path}})
        self._raw = raw
        self._error = None
        self._view = MappingView(ready)

    def _fail(self, message: str) -> None:
        if message != self._error:
            log.warning(
                "keeping last good readiness view",
                extra={"fields": {"error": message, "entries": len(self._view.ready)}},
            )
        self._error = message


def wait_for_first_view(
    source: ReadinessSource,
    stopped: Callable[[], bool],
    on_wait: Callable[[], object] | None = None,
) -> bool:
    """Block until a source with a first sync (``wait_synced``) has its first view.

    True at once for sources without one (always, file). Otherwise waits at
    most the source's ``sync_timeout`` seconds; False on timeout or when
    ``stopped()`` turns true. ``on_wait`` is called about every 0.1 s (the
    daemon keeps its liveness tick fresh with it).
    """
    if not source.needs_first_sync:
        return True
    deadline = time.monotonic() + source.sync_timeout
    while not stopped():
        remaining = deadline - time.monotonic()
        if source.wait_synced(max(0.0, min(0.1, remaining))):
            return True
        if on_wait is not None:
            on_wait()
        if remaining <= 0:
            return False
    return False
