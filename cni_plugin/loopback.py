"""Addresses on ``lo`` inside a pod's network namespace, through pyroute2.

The only module of the plugin that talks netlink: requests built from
pyroute2's message classes, sent over ``rtnetlink.transport`` (opened in the
pod netns by ``cni_plugin.rtnl``). The transport's NetlinkError is
translated here, once, into the CNI error tree.
``PodLoopback`` is the interface the verbs use; tests of pure logic pass an
in-memory fake, and the real adapter is exercised in throwaway namespaces.

pyroute2 is imported inside the methods, not at the top: the dispatcher
imports this module for every verb but VERSION, and a DEL of an unknown
attachment, STATUS, an ADD without anycast addresses or a refused ADD never
reach the kernel (start-up budget, docs/frozen-binary.md).
"""

from __future__ import annotations

import errno
import os

from netconf.errors import NetlinkFailure, PodNetnsUnusable

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would cost every exec
    from collections.abc import Callable, Iterable
    from typing import Protocol, TypeVar, overload

    from pyroute2.netlink import nlmsg
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    from netconf.values import IPAddress
    from rtnetlink.transport import Rtnetlink

    _T = TypeVar("_T")
    # cni_plugin.rtnl.open_pod_rtnetlink, or a stand-in over a scripted socket.
    OpenSocket = Callable[[str, int | None], Rtnetlink]

IFA_F_NODAD = 0x02
IFF_UP = 0x01
_LOOPBACK = "lo"


if TYPE_CHECKING:

    class PodLoopback(Protocol):
        """The interface the verbs use; NetlinkPodLoopback here, a fake in the unit tests.

        ``inode``, where given, is the namespace's inode recorded at ADD: the
        call acts only while ``netns`` still names that namespace.
        """

        def identify(self, netns: str) -> int | None:
            """The inode of the pod namespace at ``netns``, None if nothing is there.

            Raises PodNetnsUnusable for a path that is no network namespace,
            or is the plugin's own or the host's.
            """

        def ensure_addresses(self, netns: str, addresses: Iterable[IPAddress], inode: int | None = None) -> None:
            """Add each address as a host prefix on ``lo`` (idempotent), bringing ``lo`` up."""

        def delete_addresses(self, netns: str, addresses: Iterable[IPAddress], inode: int | None = None) -> None:
            """Remove the addresses; ones already gone, or a gone netns, are fine."""

        def list_addresses(self, netns: str, inode: int | None = None) -> set[tuple[IPAddress, int]]:
            """(address, prefix length) pairs on ``lo``."""


def host_prefixlen(address: IPAddress) -> int:
    return 32 if address.version == 4 else 128


class NetlinkPodLoopback:
    """The real adapter: one netlink socket opened inside the pod netns per call.

    The requests are the ones ``pyroute2.IPRoute`` sends for ``link_lookup``,
    ``link('set', state='up')`` and ``addr('replace'|'del'|dump)``.
    ``open_socket(netns_path, inode)`` defaults to
    ``cni_plugin.rtnl.open_pod_rtnetlink``, which checks what the path names
    before entering it and returns an ``rtnetlink.transport.Rtnetlink``;
    tests pass one over a scripted socket to check the requests without a
    kernel.
    """

    def __init__(self, open_socket: OpenSocket | None = None) -> None:
        self._open_socket = open_socket

    def identify(self, netns: str) -> int | None:
        # Also loads the netlink code: ADD calls this just before it takes
        # the node's state lock, which should not be held while Python
        # imports modules.
        from cni_plugin import rtnl

        if not netns:
            return None
        try:
            info = os.stat(netns)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as exc:
            raise PodNetnsUnusable(f"cannot inspect pod network namespace {netns!r}", repr(exc)) from exc
        try:
            rtnl.check_pod_netns(info, netns)
        except rtnl.NamespaceRefused as exc:
            raise PodNetnsUnusable(f"refusing CNI_NETNS: {exc}", _NETNS_HINT) from exc
        return info.st_ino

    def ensure_addresses(self, netns: str, addresses: Iterable[IPAddress], inode: int | None = None) -> None:
        from functools import partial

        from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE
        from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        from rtnetlink.transport import LinkHeader

        with _open_netns(netns, inode, self._open_socket) as rtnl:
            index, flags = _loopback_link(rtnl, netns)
            if not flags & IFF_UP:
                up = LinkHeader()
                up["index"] = index
                up["flags"] = up["change"] = IFF_UP
                _netlink(lambda: rtnl.request(up, RTM_NEWLINK, NLM_F_ACK), f"bring up lo in {netns}")
            for address in addresses:
                # IFA_F_NODAD: an anycast /128 is shared by design, so duplicate
                # address detection would only keep it tentative.
                flags = IFA_F_NODAD if address.version == 6 else 0
                message = _address_message(ifaddrmsg(), index, address, flags)
                _netlink(
                    partial(rtnl.request, message, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE),
                    f"add {address}/{host_prefixlen(address)} to lo in {netns}",
                )

    def delete_addresses(self, netns: str, addresses: Iterable[IPAddress], inode: int | None = None) -> None:
        addresses = list(addresses)
        if not addresses or not netns_exists(netns):
            return
        from functools import partial

        from pyroute2.netlink import NLM_F_ACK
        from pyroute2.netlink.rtnl import RTM_DELADDR
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        with _open_netns(netns, inode, self._open_socket) as rtnl:
            index, _ = _loopback_link(rtnl, netns)
            for address in addresses:
                message = _address_message(ifaddrmsg(), index, address)
                _netlink(
                    partial(rtnl.request, message, RTM_DELADDR, NLM_F_ACK),
                    f"remove {address} from lo in {netns}",
                    tolerate=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH),
                )

    def list_addresses(self, netns: str, inode: int | None = None) -> set[tuple[IPAddress, int]]:
        import ipaddress

        from pyroute2.netlink.rtnl import RTM_GETADDR
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        with _open_netns(netns, inode, self._open_socket) as rtnl:
            index, _ = _loopback_link(rtnl, netns)
            # The kernel ignores ifa_index in a dump request (no strict
            # checking): dump everything and keep what is on lo.
            dump = _netlink(lambda: rtnl.dump(ifaddrmsg(), RTM_GETADDR), f"list addresses in {netns}")
            return {
                (ipaddress.ip_address(message.get_attr("IFA_ADDRESS")), message["prefixlen"])
                for message in dump
                if message["index"] == index
            }


_NETNS_HINT = "CNI_NETNS must name a pod's network namespace file, e.g. /var/run/netns/<name>"


def netns_exists(netns: str) -> bool:
    return bool(netns) and os.path.exists(netns)  # exists() is False for a path with a NUL byte


def _open_netns(netns: str, inode: int | None, open_socket: OpenSocket | None = None) -> Rtnetlink:
    from cni_plugin.rtnl import NamespaceRefused

    if open_socket is None:
        # Imported on first use: only ADD, DEL, CHECK and GC talk netlink.
        from cni_plugin.rtnl import open_pod_rtnetlink

        open_socket = open_pod_rtnetlink

    if not netns_exists(netns):
        raise PodNetnsUnusable(f"pod network namespace {netns!r} does not exist")
    try:
        # Opening the path never creates a namespace where one is gone.
        return open_socket(netns, inode)
    except NamespaceRefused as exc:
        raise PodNetnsUnusable(f"refusing CNI_NETNS: {exc}", _NETNS_HINT) from exc
    except OSError as exc:
        raise PodNetnsUnusable(f"cannot enter pod network namespace {netns!r}", repr(exc)) from exc


def _loopback_link(rtnl: Rtnetlink, netns: str) -> tuple[int, int]:
    """Index and IFF_* flags of ``lo``; raises PodNetnsUnusable if there is none."""
    from pyroute2.netlink import NLM_F_ACK
    from pyroute2.netlink.rtnl import RTM_GETLINK

    from rtnetlink.transport import LinkHeader, NetlinkError

    query = LinkHeader()
    query["attrs"] = [("IFLA_IFNAME", _LOOPBACK)]

    def lookup() -> list[nlmsg]:
        try:
            return rtnl.request(query, RTM_GETLINK, NLM_F_ACK)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise PodNetnsUnusable(f"no loopback interface in {netns!r}") from exc
            raise

    [link] = _netlink(lookup, f"look up lo in {netns}")
    return link["index"], link["flags"]


def _address_message(message: ifaddrmsg, index: int, address: IPAddress, flags: int | None = None) -> ifaddrmsg:
    """An ifaddrmsg for ``address`` as a host prefix on interface ``index``, as IPRoute builds it."""
    import socket

    message["family"] = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    message["prefixlen"] = host_prefixlen(address)
    message["index"] = index
    message["attrs"] = [("IFA_ADDRESS", str(address))]
    if flags is not None:
        message["attrs"].append(("IFA_FLAGS", flags))
    if address.version == 4:
        # IPv4 needs the local address too (IFA_ADDRESS is the peer on p2p links).
        message["attrs"].append(("IFA_LOCAL", str(address)))
    return message


if TYPE_CHECKING:

    @overload
    def _netlink(operation: Callable[[], _T], what: str) -> _T: ...
    @overload
    def _netlink(operation: Callable[[], _T], what: str, tolerate: tuple[int, ...]) -> _T | None: ...


def _netlink(operation: Callable[[], _T], what: str, tolerate: tuple[int, ...] = ()) -> _T | None:
    """``operation()``, its NetlinkError as NetlinkFailure; None for an errno in ``tolerate``."""
    from rtnetlink.transport import NetlinkError

    try:
        return operation()
    except NetlinkError as exc:
        if exc.code in tolerate:
            return None
        raise NetlinkFailure(f"cannot {what}: {os.strerror(exc.code)}", repr(exc)) from exc
