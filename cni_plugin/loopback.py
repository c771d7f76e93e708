"""Addresses on ``lo`` inside a pod's network namespace, through pyroute2.

The only module of the plugin that talks netlink. Netlink errors are
translated here, once, into the CNI error tree. ``PodLoopback`` is the
interface the verbs use; tests of pure logic pass an in-memory fake, and
the real adapter is exercised in throwaway namespaces.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Protocol

from netconf.errors import NetlinkFailure, PodNetnsUnusable
from netconf.state import IPAddress

IFA_F_NODAD = 0x02
_LOOPBACK = "lo"


class PodLoopback(Protocol):
    def ensure_addresses(self, netns: str, addresses: Iterable[IPAddress]) -> None:
        """Add each address as a host prefix on ``lo`` (idempotent), bringing ``lo`` up."""

    def delete_addresses(self, netns: str, addresses: Iterable[IPAddress]) -> None:
        """Remove the addresses; ones already gone, or a gone netns, are fine."""

    def list_addresses(self, netns: str) -> set[tuple[IPAddress, int]]:
        """(address, prefix length) pairs on ``lo``."""


def host_prefixlen(address: IPAddress) -> int:
    return 32 if address.version == 4 else 128


class NetlinkPodLoopback:
    """The real adapter: one netlink socket opened inside the pod netns per call."""

    def ensure_addresses(self, netns: str, addresses: Iterable[IPAddress]) -> None:
        with _open_netns(netns) as ipr:
            index = _loopback_index(ipr, netns)
            link = ipr.get_links(index)[0]
            if not link["flags"] & 1:  # IFF_UP
                _netlink(lambda: ipr.link("set", index=index, state="up"), f"bring up lo in {netns}")
            for address in addresses:
                # IFA_F_NODAD: an anycast /128 is shared by design, so duplicate
                # address detection would only keep it tentative.
                _netlink(
                    lambda address=address: ipr.addr(
                        "replace",
                        index=index,
                        address=str(address),
                        prefixlen=host_prefixlen(address),
                        flags=IFA_F_NODAD if address.version == 6 else 0,
                    ),
                    f"add {address}/{host_prefixlen(address)} to lo in {netns}",
                )

    def delete_addresses(self, netns: str, addresses: Iterable[IPAddress]) -> None:
        if not netns_exists(netns):
            return
        with _open_netns(netns) as ipr:
            index = _loopback_index(ipr, netns)
            for address in addresses:
                _netlink(
                    lambda address=address: ipr.addr(
                        "del", index=index, address=str(address), prefixlen=host_prefixlen(address)
                    ),
                    f"remove {address} from lo in {netns}",
                    tolerate=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH),
                )

    def list_addresses(self, netns: str) -> set[tuple[IPAddress, int]]:
        import ipaddress

        with _open_netns(netns) as ipr:
            index = _loopback_index(ipr, netns)
            found = set()
            for message in ipr.get_addr(index=index):
                found.add((ipaddress.ip_address(message.get("IFA_ADDRESS")), message["prefixlen"]))
            return found


def netns_exists(netns: str) -> bool:
    return bool(netns) and os.path.exists(netns)


def _open_netns(netns: str):
    from pyroute2.iproute.linux import IPRoute

    if not netns_exists(netns):
        raise PodNetnsUnusable(f"pod network namespace {netns!r} does not exist")
    try:
        # flags=0: never create a namespace at a path that is gone.
        return IPRoute(netns=netns, flags=0)
    except OSError as exc:
        raise PodNetnsUnusable(f"cannot enter pod network namespace {netns!r}", repr(exc)) from exc


def _loopback_index(ipr, netns: str) -> int:
    indexes = ipr.link_lookup(ifname=_LOOPBACK)
    if not indexes:
        raise PodNetnsUnusable(f"no loopback interface in {netns!r}")
    return indexes[0]


def _netlink(operation, what: str, tolerate: tuple[int, ...] = ()) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        operation()
    except NetlinkError as exc:
        if exc.code in tolerate:
            return
        raise NetlinkFailure(f"cannot {what}: {os.strerror(exc.code)}", repr(exc)) from exc
