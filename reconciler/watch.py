"""Event sources that only wake the loop: file changes (inotify) and route events (netlink).

May: watch directories with inotify, listen on rtnetlink multicast groups,
run one background thread per source, call a ``wake(reason)`` callback.
May not: read the state file, change routes, or decide anything — the loop
is level-triggered, so an event carries no data the loop relies on, and a
lost event is caught by the periodic resync.

inotify is used through libc (``inotify_init1``/``inotify_add_watch``) with
ctypes, as ``pyroute2.inotify`` does, but with a non-blocking close-on-exec
descriptor, checked return values and the event mask we need: files are
replaced by rename, so the *directory* is watched for ``IN_MOVED_TO``,
``IN_CLOSE_WRITE``, ``IN_CREATE`` and ``IN_DELETE`` of the file name.

Route events are split by the rtnetlink transport and decoded by pyroute2's ``rtmsg``;
the socket is the one ``open_netlink_socket`` makes (inside a netns path
without ``setns``), read in a selector next to a stop pipe.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable

from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_NEWROUTE, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from reconciler.kernel import RT_TABLE_COMPAT, open_netlink_socket
from rtnetlink.transport import NetlinkError, notifications

# The notifications the route monitor reads; every other type is skipped undecoded.
_ROUTE_MESSAGES = {RTM_NEWROUTE: rtmsg, RTM_DELROUTE: rtmsg}

log = logging.getLogger(__name__)

Wake = Callable[[str], None]

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_FILE_EVENTS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_MODIFY
_DIR_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT = struct.Struct("=iIII")
# A file name in FileWatch's map that stands for every entry of its
# directory except dot files (the temp files writers rename into place).
ANY_FILE = "*"

_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


class WatchError(Exception):
    """inotify could not be set up (e.g. the directory does not exist)."""


def _wake_and_join(stop_write: int, thread: threading.Thread | None) -> None:
    """Tell a source's thread to end (a byte on its stop pipe) and wait for it."""
    if stop_write >= 0:
        try:
            os.write(stop_write, b"x")
        except OSError:
            pass
    if thread is not None:
        thread.join(timeout=5)


class FileWatch:
    """Wakes the loop when given files change; each is watched through its directory.

    ``files`` maps an absolute file path to the wake reason; a path whose
    name is ``ANY_FILE`` stands for every non-dot entry of its directory
    (the state's record files). A directory that
    does not exist yet (or disappears) is retried by :meth:`ensure_watches`,
    which the loop calls on every pass; until then the periodic resync covers it.
    """

    def __init__(self, files: dict[str, str], wake: Wake) -> None:
        self._wake = wake
        self._targets: dict[str, dict[str, str]] = {}
        for path, reason in files.items():
            directory, name = os.path.split(os.path.abspath(path))
            self._targets.setdefault(directory, {})[name] = reason
        self._descriptors: dict[int, str] = {}
        self._lock = threading.Lock()
        self._fd = -1
        self._stop_read, self._stop_write = -1, -1
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._descriptors.values())

    def start(self) -> None:
        """Create the inotify instance and its thread; raises WatchError when inotify fails."""
        fd = _c_library().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise WatchError(f"inotify_init1 failed: {os.strerror(code)}")
        self._fd = fd
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.ensure_watches()
        self._thread = threading.Thread(target=self._run, name="flock-file-watch", daemon=True)
        self._thread.start()

    def ensure_watches(self) -> list[str]:
        """(Re-)add missing directory watches; returns the directories still missing."""
        missing = []
        with self._lock:
            if self._fd < 0:
                return list(self._targets)
            present = set(self._descriptors.values())
            for directory in self._targets:
                if directory in present:
                    continue
                wd = _c_library().inotify_add_watch(
                    self._fd, os.fsencode(directory), _FILE_EVENTS | _DIR_GONE | IN_ONLYDIR
                )
                if wd < 0:
                    missing.append(directory)
                    continue
                self._descriptors[wd] = directory
        return missing

    def stop(self) -> None:
        _wake_and_join(self._stop_write, self._thread)
        self._thread = None
        for fd in (self._fd, self._stop_read, self._stop_write):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_read = self._stop_write = -1
        self._descriptors.clear()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            selector.register(self._stop_read, selectors.EVENT_READ)
            while True:
                ready = [key.fd for key, _ in selector.select()]
                if self._stop_read in ready:
                    return
                try:
                    data = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    log.error("inotify read failed", extra={"fields": {"error": str(exc)}})
                    return
                for reason in self._reasons(data):
                    self._wake(reason)

    def _reasons(self, data: bytes) -> set[str]:
        reasons: set[str] = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                reasons.update(reason for names in self._targets.values() for reason in names.values())
                continue
            with self._lock:
                directory = self._descriptors.get(wd)
                if directory is not None and mask & _DIR_GONE:
                    # The directory went away: its watch is dead; ensure_watches re-adds it.
                    del self._descriptors[wd]
            if directory is None:
                continue
            names = self._targets.get(directory, {})
            if mask & _DIR_GONE:
                reasons.update(names.values())
            elif name:
                text = os.fsdecode(name)
                reason = names.get(text)
                if reason is None and not text.startswith("."):
                    reason = names.get(ANY_FILE)
                if reason is not None:
                    reasons.add(reason)
        return reasons


class RouteMonitor:
    """Wakes the loop on RTM_NEWROUTE/RTM_DELROUTE of our protocol and table.

    A raw rtnetlink socket bound to the IPv4 and IPv6 route groups. Our own
    writes are reported too; the pass they cause finds nothing to do. When
    the socket buffer overflows (ENOBUFS, events were lost) it wakes the
    loop anyway: a full pass is the answer to any lost event.
    """

    def __init__(self, wake: Wake, protocol: int, table: int, netns: str | None = None) -> None:
        self._wake = wake
        self.protocol = protocol
        self.table = table
        self.netns = netns
        self._sock: socket.socket | None = None
        self._stop_read, self._stop_write = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the socket and start the thread; raises KernelError."""
        self._sock = open_netlink_socket(self.netns, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        self._sock.setblocking(False)
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="flock-route-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        _wake_and_join(self._stop_write, self._thread)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._stop_read, self._stop_write):
            if fd >= 0:
                os.close(fd)
        self._stop_read = self._stop_write = -1

    def _run(self) -> None:
        assert self._sock is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._stop_read, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._stop_read in ready:
                    return
                try:
                    data = self._sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self._wake("route-events-lost")
                        continue
                    log.error("route monitor stopped", extra={"fields": {"error": str(exc)}})
                    return
                # Decoded lazily: one message of ours in the buffer is enough.
                try:
                    if any(
                        self._is_ours(message["header"]["type"], message)
                        for message in notifications(data, _ROUTE_MESSAGES)
                    ):
                        self._wake("route-event")
                except NetlinkError:  # a message we cannot read: a pass finds out what changed
                    self._wake("route-event")

    def _is_ours(self, kind: int, message: rtmsg | bytes) -> bool:
        """Whether a route message (decoded, or the raw rtmsg body after the netlink header) is ours."""
        if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
            return False
        if not isinstance(message, rtmsg):
            try:
                message = _route_body(message)
            except struct.error:  # shorter than an rtmsg
                return False
        if message["proto"] != self.protocol:
            return False
        table: int = message["table"]
        if table == RT_TABLE_COMPAT:  # the id does not fit rtm_table: it is in RTA_TABLE
            table = message.get_attr("RTA_TABLE", table)
        return table == self.table


class _RtmsgBody(rtmsg):  # type: ignore[misc]  # pyroute2 ships no types: rtmsg is Any to mypy
    """An rtmsg decoded from its payload alone (no netlink header), as a caller may hold one."""

    __slots__ = ()
    header = None


def _route_body(body: bytes) -> rtmsg:
    message = _RtmsgBody(body, length=len(body))
    message.decode()
    return message

