"""A blocking rtnetlink socket opened inside a pod's network namespace.

pyroute2 does the netlink: its message classes (``ifaddrmsg``, and
``LinkHeader`` below, built on pyroute2's ``nlmsg``) encode every request
and its ``Marshal`` decodes every reply, turning an ``NLMSG_ERROR`` into
pyroute2's ``NetlinkError``. This module only opens the socket in the right
namespace and pairs one request with its replies.

Why not ``pyroute2.IPRoute(netns=...)`` (what the plugin used first):

* start-up: ``pyroute2.iproute.linux`` imports asyncio, ssl, unittest.mock,
  every tc and link-kind module and NDB's dependencies, ~75 ms here, for
  four small requests; the message classes used here cost a few ms.
* a forked child per socket: pyroute2 0.9 creates a netns socket by forking
  a helper that calls setns() and passes the descriptor back, which keeps
  the caller's thread out of the namespace. That is the right choice in a
  long-lived threaded process (STYLE rule 8) and only overhead in this
  short-lived, single-threaded one. Here the calling thread enters the
  namespace, creates the socket and returns at once, as the Go reference
  plugins' ``ns.Do`` does; a netlink socket stays bound to the namespace it
  was created in.

Never use this module from a long-lived or multi-threaded process (the
reconciler uses pyroute2's netns sockets).
"""

from __future__ import annotations

import fcntl
import os
import socket

from pyroute2.netlink import nlmsg

# <linux/sched.h>
CLONE_NEWNET = 0x40000000
# Larger than any rtnetlink datagram the kernel sends for these requests.
_RECV_BUFFER = 1 << 16


class LinkHeader(nlmsg):
    """pyroute2's ``ifinfmsg`` reduced to what the plugin uses: the header and IFLA_IFNAME.

    ``pyroute2.netlink.rtnl.ifinfmsg`` carries the attribute tables of
    every link kind; importing it loads pyroute2.config, which imports
    multiprocessing, platform, logging and a dozen link-kind plugins:
    ~25 ms of each ADD, DEL and CHECK for reading and setting one flag of
    ``lo``. Same fields and attribute number as ``ifinfmsg`` (struct
    ifinfomsg; IFLA_IFNAME = 3), so pyroute2 encodes the same bytes and
    decodes the same values for these messages; other attributes of a reply
    are left undecoded. tests/unit/test_startup_netlink.py compares both.
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


class NamespaceRefused(Exception):
    """The path names no network namespace, or one the plugin must not change."""


# <linux/nsfs.h>: _IO(0xb7, 0x3), the type (CLONE_NEW*) of a namespace file.
NS_GET_NSTYPE = 0xB703


def open_pod_netns(netns_path: str, inode: int | None = None) -> int:
    """An O_RDONLY descriptor of the pod network namespace at ``netns_path``.

    Refuses (NamespaceRefused) anything but a network namespace file, the
    namespace this process runs in, and that of PID 1 (the host's): a
    runtime's CNI_NETNS or a state record must never make the plugin put
    addresses on, or take them from, the host's ``lo``. With ``inode``,
    the namespace must be the one recorded at ADD (paths are reused).
    O_NONBLOCK: a FIFO planted at the path opens at once and is refused by
    its type instead of hanging the plugin. Raises OSError when the path
    cannot be opened.
    """
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        check_pod_netns(os.fstat(fd), netns_path, inode)
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            raise NamespaceRefused(f"{netns_path!r} is not a namespace file") from exc
        if kind != CLONE_NEWNET:
            raise NamespaceRefused(f"{netns_path!r} is a namespace, but not a network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_pod_netns(info: os.stat_result, netns_path: str, inode: int | None = None) -> None:
    """Judge the ``stat`` of a would-be pod namespace; raises NamespaceRefused.

    Every namespace file lives on the one nsfs pseudo file system, so its
    device is that of our own ``/proc/self/ns/net``.
    """
    own = os.stat("/proc/self/ns/net")
    if info.st_dev != own.st_dev:
        raise NamespaceRefused(f"{netns_path!r} is not a network namespace file (nsfs)")
    if info.st_ino == own.st_ino:
        raise NamespaceRefused(f"{netns_path!r} is the network namespace flock-anycast runs in, not a pod's")
    try:
        host = os.stat("/proc/1/ns/net")
    except OSError:
        host = None  # no access to PID 1: our own namespace was checked above
    if host is not None and info.st_ino == host.st_ino:
        raise NamespaceRefused(f"{netns_path!r} is the host's network namespace (that of PID 1), not a pod's")
    if inode is not None and info.st_ino != inode:
        raise NamespaceRefused(f"{netns_path!r} is no longer the network namespace recorded at ADD")


def socket_in_netns(netns_path: str, family: int, kind: int, proto: int, inode: int | None = None) -> socket.socket:
    """A socket created inside the pod network namespace at ``netns_path``.

    The calling thread enters the namespace, creates the socket and returns
    to its own namespace before this function returns. Raises
    NamespaceRefused (see open_pod_netns) and OSError when the path cannot
    be opened; it never creates a namespace.
    """
    target = open_pod_netns(netns_path, inode)
    try:
        # thread-self: setns() moves the calling thread, not the process.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(family, kind, proto)
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    # Python 3.11 has no os.setns: call libc. pyroute2.netns.setns() would do
    # the same but costs ~25 ms to import (multiprocessing, and a ldconfig
    # subprocess from ctypes.util.find_library on first use).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class RtnlSocket:
    """An rtnetlink socket in a network namespace; one request at a time.

    ``request`` raises pyroute2's NetlinkError when the kernel answers with
    an error, and OSError when the socket itself fails.
    """

    def __init__(self, netns_path: str, inode: int | None = None) -> None:
        # Imported here, not at the top: only verbs that reach the kernel
        # pay for pyroute2 (see cni_plugin.loopback).
        from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR
        from pyroute2.netlink.marshal import Marshal
        from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        self._socket = socket_in_netns(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE, inode)
        try:
            self._socket.bind((0, 0))  # the kernel picks the port id
        except OSError:
            self._socket.close()
            raise
        self._marshal = Marshal()
        # The replies these requests get: links, addresses, and the ACK or
        # end-of-dump that ends each exchange.
        self._marshal.msg_map = {RTM_NEWLINK: LinkHeader, RTM_NEWADDR: ifaddrmsg}
        self._last_message_types = (NLMSG_DONE, NLMSG_ERROR)
        self._sequence = 0

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def request(self, message, message_type: int, flags: int) -> list:
        """Send ``message`` and return the kernel's reply messages (empty for a bare ACK).

        A dump (``NLM_F_DUMP``) returns every part up to ``NLMSG_DONE``; any
        other request should carry ``NLM_F_ACK``, whose ACK ends the reply.
        """
        self._sequence += 1
        message["header"]["type"] = message_type
        message["header"]["flags"] = flags
        message["header"]["sequence_number"] = self._sequence
        message.encode()
        self._socket.send(message.data)
        replies = []
        while True:
            data = self._socket.recv(_RECV_BUFFER)
            for reply in self._marshal.parse(data):
                header = reply["header"]
                if header["sequence_number"] != self._sequence:
                    continue  # a late answer to an earlier request
                if header.get("error") is not None:
                    raise header["error"]
                if header["type"] in self._last_message_types:
                    return replies  # end of dump, or the ACK (error 0)
                replies.append(reply)
