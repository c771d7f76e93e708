"""The rtnetlink transport shared by the plugin and the reconciler.

pyroute2 encodes every request and decodes every reply (its message
classes: ``ifaddrmsg``, ``rtmsg``, ``ifinfmsg``, ``LinkHeader`` below);
this module is the rest, and the only place that touches pyroute2's
internals:

* opening a NETLINK_ROUTE socket — in the current namespace, in a
  namespace given by path through a forked helper (the calling thread never
  changes namespace: what a long-lived, threaded process must do), or by
  entering a namespace with the calling thread (only for a short-lived,
  single-threaded process: the plugin);
* sending a request with the next sequence number and reading the replies
  that carry it (a late answer to an abandoned request is skipped), up to
  the ACK, NLMSG_DONE or, for a request without NLM_F_ACK, its one reply;
* dumps, restarted when the kernel flags one NLM_F_DUMP_INTR (the table
  changed while it was being dumped, so the parts may not fit together);
* one exception for the kernel's refusals, :class:`NetlinkError`, carrying
  the errno and the kernel's extended-ACK text. A failing socket raises
  OSError, so a caller can tell "the kernel said no" from "reopen".

Callers translate :class:`NetlinkError` into their own error tree once
(``cni_plugin.loopback`` into CNI errors, ``reconciler.kernel`` into
``KernelError``). Why not ``pyroute2.IPRoute``: it imports asyncio, ssl and
every link-kind module (the plugin's start-up), and takes every call
through its asyncio core (the reconciler's route writes).

Start-up: the plugin imports this module on every verb that reaches the
kernel, so it imports nothing from pyroute2 but ``pyroute2.netlink`` (no
``Marshal``, no ``ifinfmsg``); ``pyroute2.netns`` is imported only to open
a socket through a forked helper, which the plugin never does.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkDecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would cost every plugin exec
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import Any, TypeVar, overload

    from pyroute2.netlink import nla_slot

    _T = TypeVar("_T")

# <linux/sched.h>
CLONE_NEWNET = 0x40000000
# struct nlmsghdr: length, type, flags, sequence number, port id.
_HEADER = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")
DUMP_ATTEMPTS = 5
# <linux/netlink.h>, enum nlmsgerr_attrs
_NLMSGERR_ATTR_MSG = 1


class NetlinkError(Exception):
    """The kernel refused a request: ``code`` is the errno, ``detail`` its extended-ACK text or None.

    Also raised with EBADMSG for a reply that cannot be decoded, and with
    EINTR (:class:`DumpInterrupted`) for a dump that never completed
    consistently.
    """

    def __init__(self, code: int, detail: str | None = None) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        reason = os.strerror(self.code)
        return f"{reason} ({self.detail})" if self.detail else reason


class DumpInterrupted(NetlinkError):
    """Every attempt of a dump was flagged NLM_F_DUMP_INTR (the table kept changing)."""

    def __init__(self, attempts: int) -> None:
        super().__init__(errno.EINTR, f"dump interrupted by concurrent changes {attempts} times")


class LinkHeader(nlmsg):  # type: ignore[misc]  # pyroute2 ships no type information: nlmsg is Any
    """pyroute2's ``ifinfmsg`` reduced to the header and IFLA_IFNAME.

    ``pyroute2.netlink.rtnl.ifinfmsg`` carries the attribute tables of
    every link kind; importing it loads pyroute2.config, which imports
    multiprocessing, platform, logging and a dozen link-kind plugins: the
    plugin reads and sets one flag of ``lo``. Same fields and attribute
    number as ``ifinfmsg`` (struct ifinfomsg; IFLA_IFNAME = 3), so pyroute2
    encodes the same bytes and decodes the same values for these messages;
    other attributes of a reply are left undecoded.
    tests/unit/test_startup_netlink.py compares both.
    """

    prefix = "IFLA_"
    fields = (
        ("family", "B"),
        ("__align", "x"),
        ("ifi_type", "H"),
        ("index", "i"),
        ("flags", "I"),
        ("change", "I"),
    )
    nla_map = ((0, "IFLA_UNSPEC", "none"), (3, "IFLA_IFNAME", "asciiz"))


# -- sockets -------------------------------------------------------------------


def rtnetlink_socket(netns: str | None = None, groups: int = 0, receive_buffer: int | None = None) -> socket.socket:
    """A bound NETLINK_ROUTE socket in this thread's namespace (``netns`` None) or in the one at path ``netns``.

    For a path, pyroute2 creates the socket in a forked child that enters
    the namespace and passes the descriptor back (flags=0: a missing
    namespace is never created), so no thread of this process ever calls
    ``setns``. ``groups``: multicast groups to join (RTMGRP_*);
    ``receive_buffer``: SO_RCVBUF. Raises OSError.
    """
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    else:
        # Imported here: pyroute2.netns imports multiprocessing and pyroute2.config.
        from pyroute2 import netns as pyroute2_netns

        sock = pyroute2_netns.create_socket(
            netns=netns, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW, proto=NETLINK_ROUTE, flags=0
        )
    return _bind(sock, groups, receive_buffer)


def rtnetlink_socket_entering(namespace_fd: int) -> socket.socket:
    """A bound NETLINK_ROUTE socket created by entering the namespace ``namespace_fd`` with the calling thread.

    Only for a short-lived, single-threaded process (the plugin), as the Go
    reference plugins' ``ns.Do``; never in the reconciler, whose threads must
    never change namespace.
    Raises OSError.
    """
    return _bind(socket_entering(namespace_fd, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE), 0, None)


def socket_entering(namespace_fd: int, family: int, kind: int, proto: int) -> socket.socket:
    """A socket created inside the network namespace ``namespace_fd``; the calling thread returns at once.

    A socket stays bound to the namespace it was created in. The caller
    checks what the descriptor names first. Raises OSError.
    """
    # thread-self: setns() moves the calling thread, not the process.
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(namespace_fd)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(home)
    finally:
        os.close(home)


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    # Python 3.11 has no os.setns: call libc. pyroute2.netns.setns() would do
    # the same but imports multiprocessing, and runs a ldconfig subprocess
    # from ctypes.util.find_library on first use.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _bind(sock: socket.socket, groups: int, receive_buffer: int | None) -> socket.socket:
    try:
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, groups))  # port id 0: the kernel picks one
    except OSError:
        sock.close()
        raise
    return sock


# -- requests --------------------------------------------------------------------


class Rtnetlink:
    """Requests and dumps over one NETLINK_ROUTE socket, one exchange at a time (thread-safe).

    ``message_classes`` maps a reply's message type to the pyroute2 class
    that decodes it (others decode as a bare ``nlmsg``); the caller names
    only what it reads, so the plugin never imports ``ifinfmsg``.
    ``strict_checking`` (NETLINK_GET_STRICT_CHK, Linux >= 4.20) lets the
    kernel filter dumps by the request's fields; ``extended_acks``
    (NETLINK_EXT_ACK) adds the kernel's text to an error. Both are
    best-effort. Takes ownership of ``sock``.
    """

    def __init__(
        self,
        sock: socket.socket,
        message_classes: Mapping[int, type[nlmsg]],
        *,
        receive_size: int = 1 << 16,
        strict_checking: bool = False,
        extended_acks: bool = False,
        dump_attempts: int = DUMP_ATTEMPTS,
    ) -> None:
        self._socket = sock
        self._classes = dict(message_classes)
        self._receive_size = receive_size
        self._dump_attempts = dump_attempts
        self._sequence = 0
        self._lock = threading.Lock()
        for option, wanted in ((NETLINK_GET_STRICT_CHK, strict_checking), (NETLINK_EXT_ACK, extended_acks)):
            if wanted:
                try:
                    sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass  # older kernel: the caller filters and goes without the text

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def request(self, message: nlmsg, message_type: int, flags: int = NLM_F_ACK) -> list[nlmsg]:
        """Send ``message`` (NLM_F_REQUEST | ``flags``); the replies before its end.

        With NLM_F_ACK the answer ends with the ACK (a bare ACK gives []);
        without, with the first reply that is not part of a multipart one.
        Raises NetlinkError when the kernel refuses, OSError when the socket
        fails.
        """
        with self._lock:
            sequence = self._send(message, message_type, flags)
            replies: list[nlmsg] = []
            for kind, reply_flags, data, offset in self._answer(sequence):
                if kind == NLMSG_ERROR or kind == NLMSG_DONE:
                    _raise_refusal(kind, reply_flags, data, offset)
                    return replies  # the ACK (errno 0), or the end of a multipart answer
                replies.append(self._decode(kind, data, offset))
                if not flags & NLM_F_ACK and not reply_flags & NLM_F_MULTI:
                    return replies
        raise AssertionError("unreachable")  # _answer never ends by itself

    if TYPE_CHECKING:

        @overload
        def dump(self, message: nlmsg, message_type: int) -> list[nlmsg]: ...
        @overload
        def dump(self, message: nlmsg, message_type: int, convert: Callable[[nlmsg], _T | None]) -> list[_T]: ...

    def dump(
        self, message: nlmsg, message_type: int, convert: Callable[[nlmsg], Any] | None = None
    ) -> list[Any]:
        """Dump (NLM_F_REQUEST | NLM_F_DUMP): ``convert`` applied to each part, Nones left out.

        Parts are converted as they arrive, so pyroute2's message objects
        (each in a reference cycle only the cyclic collector frees) never
        pile up; without ``convert`` the messages themselves are returned.
        A dump the kernel flags NLM_F_DUMP_INTR is read to its end, dropped
        and requested again; after ``dump_attempts`` interrupted ones,
        raises DumpInterrupted. Raises NetlinkError when the kernel refuses,
        OSError when the socket fails.
        """
        for _attempt in range(self._dump_attempts):
            with self._lock:
                sequence = self._send(message, message_type, NLM_F_DUMP)
                results: list[Any] = []
                interrupted = False
                for kind, reply_flags, data, offset in self._answer(sequence):
                    # The kernel flags the parts sent after the change, NLMSG_DONE included.
                    if reply_flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE or kind == NLMSG_ERROR:
                        _raise_refusal(kind, reply_flags, data, offset)
                        break
                    if interrupted:
                        continue  # read on to NLMSG_DONE, so the next request starts clean
                    decoded = self._decode(kind, data, offset)
                    if convert is None:
                        results.append(decoded)
                    else:
                        result = convert(decoded)
                        if result is not None:
                            results.append(result)
            if not interrupted:
                return results
        raise DumpInterrupted(self._dump_attempts)

    # -- internals ---------------------------------------------------------------

    def _send(self, message: nlmsg, message_type: int, flags: int) -> int:
        """Encode ``message`` with the next sequence number and send it; returns the number."""
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF or 1
        message.reset()  # the same message object may be sent again (a dump's retry)
        message["header"] = {"type": message_type, "flags": NLM_F_REQUEST | flags, "sequence_number": self._sequence}
        message.encode()
        self._socket.send(message.data)
        return self._sequence

    def _answer(self, sequence: int) -> Iterator[tuple[int, int, bytes, int]]:
        """(type, flags, buffer, offset) of each received message carrying ``sequence``, endlessly.

        Messages with another number (late answers to an abandoned request,
        multicast notifications) are skipped without being decoded.
        """
        receive = self._socket.recv
        size = self._receive_size
        while True:
            data = receive(size)
            for kind, flags, number, offset in _split(data):
                if number == sequence:
                    yield kind, flags, data, offset

    def _decode(self, kind: int, data: bytes, offset: int) -> nlmsg:
        return _decoded(self._classes.get(kind, nlmsg), kind, data, offset)


def notifications(data: bytes, message_classes: Mapping[int, type[nlmsg]]) -> Iterator[nlmsg]:
    """Decode the messages of one datagram of multicast notifications (a route monitor's socket).

    Only types in ``message_classes`` are decoded (lazily: a caller that
    stops at the first interesting one decodes no more); a truncated or
    undecodable message raises NetlinkError (EBADMSG).
    """
    for kind, _flags, _number, offset in _split(data):
        message_class = message_classes.get(kind)
        if message_class is not None:
            yield _decoded(message_class, kind, data, offset)


def _split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, sequence number, offset) of each message in one datagram; raises NetlinkError on truncation."""
    offset, end = 0, len(data)
    while offset + _HEADER.size <= end:
        length, kind, flags, number, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > end:
            raise NetlinkError(errno.EBADMSG, f"truncated netlink message ({length} bytes at {offset} of {end})")
        yield kind, flags, number, offset
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def _decoded(message_class: type[nlmsg], kind: int, data: bytes, offset: int) -> nlmsg:
    message = message_class(data, offset=offset)
    try:
        message.decode()
    except NetlinkDecodeError as exc:
        raise NetlinkError(errno.EBADMSG, f"cannot decode netlink message type {kind}: {exc!r}") from exc
    return message


def _raise_refusal(kind: int, flags: int, data: bytes, offset: int) -> None:
    """Raise NetlinkError if the NLMSG_ERROR or NLMSG_DONE at ``offset`` carries an errno.

    NLMSG_ERROR with errno 0 is an ACK. NLMSG_DONE carries the dump's own
    result (e.g. ENOENT for a strict dump of a table that does not exist).
    """
    (length,) = struct.unpack_from("=I", data, offset)
    if length < _HEADER.size + _ERRNO.size:
        return  # a bare NLMSG_DONE (never sent by Linux >= 4.0, but allowed)
    (code,) = _ERRNO.unpack_from(data, offset + _HEADER.size)
    if not code:
        return
    detail = None
    if flags & NLM_F_ACK_TLVS:
        detail = _extended_ack_text(kind, flags, data, offset, length)
    raise NetlinkError(abs(code), detail)


def _extended_ack_text(kind: int, flags: int, data: bytes, offset: int, length: int) -> str | None:
    """NLMSGERR_ATTR_MSG of an error with TLVs (NETLINK_EXT_ACK), or None.

    In NLMSG_ERROR the TLVs follow the echoed request: its header alone
    with NLM_F_CAPPED, else all of it. In NLMSG_DONE they follow the errno.
    (pyroute2's ``nlmsgerr`` reads them from right after the errno, which
    only works for an uncapped echo.)
    """
    start = offset + _HEADER.size + _ERRNO.size
    end = offset + length
    if kind == NLMSG_ERROR:
        if flags & NLM_F_CAPPED:
            start += _HEADER.size
        elif start + 4 <= end:
            (echoed,) = struct.unpack_from("=I", data, start)
            start += (echoed + 3) & ~3
    while start + 4 <= end:
        attribute_length, attribute_type = struct.unpack_from("=HH", data, start)
        if attribute_length < 4 or start + attribute_length > end:
            return None
        if attribute_type & 0x3FFF == _NLMSGERR_ATTR_MSG:
            text = bytes(data[start + 4 : start + attribute_length]).split(b"\0", 1)[0]
            return text.decode("utf-8", "replace") or None
        start += (attribute_length + 3) & ~3
    return None


# -- attributes --------------------------------------------------------------------


def attribute_slots(message: nlmsg, names: Iterable[str]) -> dict[str, nla_slot]:
    """The received attributes of ``message`` named in ``names``, first occurrence wins.

    pyroute2 decodes an attribute's value only when ``.value`` is read, so
    attributes nobody needs (cache info, preference, metrics...) never are.
    """
    slots: dict[str, nla_slot] = {}
    for slot in message["attrs"]:
        if slot.name in names and slot.name not in slots:
            slots[slot.name] = slot
    return slots


def received_bytes(slot: nla_slot) -> bytes:
    """An attribute exactly as received, header included and not decoded: a memo key."""
    attribute = slot.cell[1]
    received: bytes = attribute.data[attribute.offset : attribute.offset + attribute.length]
    return received
