"""The pod's network namespace: what a path may name, and an rtnetlink socket opened inside it.

The socket and its requests are ``rtnetlink.transport``'s (shared with the
reconciler; pyroute2's message classes encode and decode, the transport
pairs each request with its replies). This module is the plugin's policy
around it: which paths are a pod's network namespace, and entering one.

Why not ``pyroute2.IPRoute(netns=...)`` (what the plugin used first):

* start-up: ``pyroute2.iproute.linux`` imports asyncio, ssl, unittest.mock,
  every tc and link-kind module and NDB's dependencies for four small
  requests; the message classes used here are a small fraction of that
  (docs/frozen-binary.md).
* a forked child per socket: pyroute2 0.9 creates a netns socket by forking
  a helper that calls setns() and passes the descriptor back, which keeps
  the caller's thread out of the namespace. That is the right choice in a
  long-lived threaded process, which must never move a thread into another
  namespace (the reconciler's way), and only overhead in this short-lived,
  single-threaded one. Here the calling
  thread enters the namespace, creates the socket and returns at once, as
  the Go reference plugins' ``ns.Do`` does; a netlink socket stays bound to
  the namespace it was created in.

Never use this module from a long-lived or multi-threaded process.
"""

from __future__ import annotations

import fcntl
import os
import socket

from rtnetlink.transport import CLONE_NEWNET, LinkHeader, Rtnetlink, rtnetlink_socket_entering, socket_entering

__all__ = [
    "LinkHeader",
    "NamespaceRefused",
    "check_pod_netns",
    "open_pod_netns",
    "open_pod_rtnetlink",
    "pod_rtnetlink",
    "socket_in_netns",
]


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
        return socket_entering(target, family, kind, proto)
    finally:
        os.close(target)


def open_pod_rtnetlink(netns_path: str, inode: int | None = None) -> Rtnetlink:
    """The transport over an rtnetlink socket inside the pod network namespace at ``netns_path``.

    Raises NamespaceRefused (see open_pod_netns) and OSError.
    """
    target = open_pod_netns(netns_path, inode)
    try:
        sock = rtnetlink_socket_entering(target)
    finally:
        os.close(target)
    return pod_rtnetlink(sock)


def pod_rtnetlink(sock: socket.socket) -> Rtnetlink:
    """The transport over ``sock`` with the replies the plugin reads.

    Links decode as ``LinkHeader`` and addresses as ``ifaddrmsg``: the plugin
    never imports ``ifinfmsg``.
    """
    # Imported on first use, like the message classes in cni_plugin.loopback.
    from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    return Rtnetlink(sock, {RTM_NEWLINK: LinkHeader, RTM_NEWADDR: ifaddrmsg})
