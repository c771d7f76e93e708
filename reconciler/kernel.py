"""Kernel adapter: the host routes of our route protocol, through rtnetlink.

May: open netlink sockets in the process's own network namespace (the daemon
is started inside the node netns with ``nsenter --net=...``) or, for tests,
in a namespace given by path — ``rtnetlink.transport.rtnetlink_socket``
creates that socket in a forked child (pyroute2's ``create_socket``,
flags=0 so a missing namespace is never created), so no thread ever calls
``setns``; list, replace and delete ``/32`` and ``/128`` routes of our
protocol in our table; ask the kernel which device reaches a pod IP.
May not: touch routes of any other protocol or table, decide what is
desired (``desired.py``), log, or retry — it reports and the loop decides.

pyroute2 does all of the netlink encoding and decoding: requests are its
``rtmsg``/``ifinfmsg`` objects (next hops through ``rtmsg``'s
``RTA_MULTIPATH`` definition), and replies are decoded by the same
classes. The socket loop around them — send one request, read until its
ACK or NLMSG_DONE, restart an interrupted dump, the kernel's extended-ACK
text — is ``rtnetlink.transport``'s, shared with the plugin, because
``IPRoute`` 0.9 takes every call through its asyncio core and request
filters, which more than doubles the cost of the same messages.
pyroute2's generic codec is still most of the cost: measured side by
side (``benchmarks/kernel_routes_bench.py`` has the current figures), its
Python-level encoding and decoding costs several times what
``struct``-packed messages did for each route write (most for IPv4, where
the kernel's own work is smallest) and for each listed route, so at
10,000s of prefixes the listing every pass makes is real CPU time.
Hence the kernel filters dumps by protocol and table
(``NETLINK_GET_STRICT_CHK``), each distinct next-hop set is decoded once
per dump, and dump messages are converted as they arrive. The netns tests
check every write against ``IPRoute`` as an independent reader.

Every netlink error (the transport's ``NetlinkError``, or OSError from the
socket) is translated once, here, into :class:`KernelError` subclasses by
errno (ENODEV, ESRCH, EEXIST, ENETUNREACH...).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, nlmsg
from pyroute2.netlink.rtnl import (  # noqa: F401 - RTMGRP_* stay importable with open_netlink_socket
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    rt_scope,
    rt_type,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netconf.values import IPAddress, IPNetwork
from reconciler.desired import NextHop
from rtnetlink.transport import (
    DumpInterrupted,
    NetlinkError,
    Rtnetlink,
    attribute_slots,
    received_bytes,
    rtnetlink_socket,
)

RTN_UNICAST = rt_type["unicast"]
RT_SCOPE_UNIVERSE = rt_scope["universe"]
RT_SCOPE_NOWHERE = rt_scope["nowhere"]
RT_TABLE_UNSPEC = 0
# rtm_table of a route in a table >= 256 (the full id is in RTA_TABLE); the
# kernel puts any smaller id in rtm_table itself.
RT_TABLE_COMPAT = 252
_RECV_BUFFER = 1 << 20
_T = TypeVar("_T")


class KernelError(Exception):
    """A netlink operation failed; ``code`` is the errno (0 when not from the kernel)."""

    code: int = 0

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NamespaceMissing(KernelError):
    """The network namespace path does not exist (never created here: flags=0)."""

    code = errno.ENOENT


class DeviceMissing(KernelError):
    """ENODEV: the host device of a next hop is gone (e.g. the pod's veth was deleted)."""

    code = errno.ENODEV


class RouteMissing(KernelError):
    """ESRCH: no such route."""

    code = errno.ESRCH


class RouteExists(KernelError):
    """EEXIST: a route with this key exists (not expected: we write with replace)."""

    code = errno.EEXIST


class GatewayUnreachable(KernelError):
    """ENETUNREACH/EHOSTUNREACH/EINVAL on a write: the pod IP is not on-link via that device."""


_BY_ERRNO: dict[int, type[KernelError]] = {
    errno.ENODEV: DeviceMissing,
    errno.ESRCH: RouteMissing,
    errno.EEXIST: RouteExists,
    errno.ENETUNREACH: GatewayUnreachable,
    errno.EHOSTUNREACH: GatewayUnreachable,
    errno.EINVAL: GatewayUnreachable,
}


def translate_error(exc: BaseException | int, context: str) -> KernelError:
    """The one place mapping an errno, a NetlinkError or an OSError to the KernelError tree."""
    if isinstance(exc, int):
        code = exc
    else:
        # NetlinkError (ours or pyroute2's) carries the errno as ``code``.
        found = getattr(exc, "code", None)
        if found is None and isinstance(exc, OSError):
            found = exc.errno
        code = int(found or 0)
    kind = _BY_ERRNO.get(code, KernelError)
    reason = os.strerror(code) if code else repr(exc)
    return kind(f"{context}: {reason}", code)


class KernelRoutes:
    """Host routes of one protocol number in one table.

    ``netns`` None: the namespace of the process. A path: that namespace,
    which must exist (:class:`NamespaceMissing` otherwise). One socket, used
    under a lock; the loop thread is the only writer. Methods raise
    :class:`KernelError` subclasses only.
    """

    def __init__(self, protocol: int = 70, table: int = 254, netns: str | None = None) -> None:
        self.protocol = protocol
        self.table = table
        self.netns = netns
        self._rtnl: _Rtnl | None = None
        self._names: dict[int, str] = {}
        self._indexes: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Open the socket now (otherwise done on first use)."""
        self._client()

    def close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def __enter__(self) -> KernelRoutes:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------

    def list_routes(self) -> dict[IPNetwork, frozenset[NextHop]]:
        """``{prefix: next hops}`` of every /32 and /128 unicast route of our protocol and table.

        A next hop without a gateway shows as the unspecified address and an
        unknown device as ``#<ifindex>``, so it never equals a desired one.
        Also refreshes the ifindex<->name cache used by the writes.
        """
        with self._guard("cannot list routes") as rtnl:
            self._learn_links(rtnl)
            routes: dict[IPNetwork, frozenset[NextHop]] = {}
            # Thousands of prefixes share a handful of next-hop sets: build each once.
            hop_sets: dict[tuple[int, tuple[tuple[str | None, int], ...]], frozenset[NextHop]] = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                for destination, hops in rtnl.dump_routes(family, self.table, self.protocol):
                    key = (family, hops)
                    hop_set = hop_sets.get(key)
                    if hop_set is None:
                        hop_set = hop_sets[key] = frozenset(
                            NextHop(_gateway(family, gateway), self._names.get(index, f"#{index}"))
                            for gateway, index in hops
                        )
                    routes[_host_network(family, destination)] = hop_set
            return routes

    def device_for(self, address: IPAddress) -> str | None:
        """The device the host uses to reach a pod IP (``ip route get``), or None.

        None when there is no route, or when the route is not on-link (it
        goes via a gateway, e.g. the default route): a pod whose IP is not
        directly reachable from this host is not a local next hop.
        """
        with self._guard(f"cannot look up the route to {address}") as rtnl:
            answer = rtnl.get_route(address)
            if answer is None:
                return None
            route_type, via_gateway, oif = answer
            if route_type != RTN_UNICAST or via_gateway or not oif:
                return None
            name = self._names.get(oif)
            if name is None:
                self._learn_links(rtnl)
                name = self._names.get(oif)
            return name

    def list_local_addresses(self) -> frozenset[IPAddress]:
        """Every address on any interface of the namespace (``ip addr``), all scopes.

        The reconciler never routes one of these as an anycast prefix: a /32
        or /128 route would take the address away from the node itself.
        """
        with self._guard("cannot list the node's addresses") as rtnl:
            return frozenset(rtnl.dump_addresses())

    # -- writes ------------------------------------------------------------

    def ensure_route(self, prefix: IPNetwork, next_hops: frozenset[NextHop]) -> None:
        """Install ``prefix`` with exactly these next hops (NLM_F_CREATE|NLM_F_REPLACE).

        One next hop: ``via G dev D``; several: one RTA_MULTIPATH route.
        Raises DeviceMissing, GatewayUnreachable or KernelError.
        """
        if not next_hops:
            raise ValueError(f"route {prefix} needs at least one next hop")
        hops = sorted(next_hops)
        context = f"cannot install route {prefix} {_hops_text(hops)}"
        with self._guard(context) as rtnl:
            indexed = [(hop.gateway, self._index_of(rtnl, hop.device)) for hop in hops]
            code = rtnl.write_route(prefix, indexed, self.table, self.protocol)
            if code == errno.ENODEV:
                self._names, self._indexes = {}, {}  # an index we cached is gone
            if code:
                raise translate_error(code, _with_detail(context, rtnl.last_error_message))

    def delete_route(self, prefix: IPNetwork) -> bool:
        """Delete our route for ``prefix`` (all next hops); False when it was already gone.

        Only a route carrying our protocol in our table is deleted: the
        kernel matches the protocol given in the request.
        """
        context = f"cannot delete route {prefix}"
        with self._guard(context) as rtnl:
            code = rtnl.delete_route(prefix, self.table, self.protocol)
            if code == errno.ESRCH:
                return False
            if code:
                raise translate_error(code, _with_detail(context, rtnl.last_error_message))
            return True

    # -- internals ---------------------------------------------------------

    def _client(self) -> _Rtnl:
        if self._rtnl is None:
            self._rtnl = _Rtnl(
                Rtnetlink(
                    open_netlink_socket(self.netns),
                    _REPLY_CLASSES,
                    receive_size=_RECV_BUFFER,
                    # Strict checking lets the kernel filter dumps by
                    # protocol and table (Linux >= 4.20); without it the
                    # filter in dump_routes applies.
                    strict_checking=True,
                    extended_acks=True,
                )
            )
        return self._rtnl

    def _guard(self, context: str) -> _Guard:
        return _Guard(self, context)

    def _learn_links(self, rtnl: _Rtnl) -> None:
        self._names = rtnl.dump_links()
        self._indexes = {name: index for index, name in self._names.items()}

    def _index_of(self, rtnl: _Rtnl, device: str) -> int:
        index = self._indexes.get(device)
        if index is None:
            self._learn_links(rtnl)
            index = self._indexes.get(device)
        if index is None:
            raise DeviceMissing(f"device {device} does not exist")
        return index


class _Guard:
    """Runs one adapter operation: translates socket errors and drops a broken socket."""

    def __init__(self, routes: KernelRoutes, context: str) -> None:
        self.routes = routes
        self.context = context

    def __enter__(self) -> _Rtnl:
        return self.routes._client()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> Literal[False]:
        if exc is None or isinstance(exc, KernelError):
            return False
        if isinstance(exc, OSError):
            # The namespace may be gone or the socket broken: reopen next time.
            self.routes.close()
            raise translate_error(exc, self.context) from exc
        return False


def open_netlink_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A raw NETLINK_ROUTE socket in ``netns`` (path; None = our own), bound to ``groups``.

    For a path, the transport creates it in a forked child (no ``setns``
    here). Raises NamespaceMissing or KernelError.
    """
    if netns is not None and not os.path.exists(netns):
        raise NamespaceMissing(f"network namespace {netns} does not exist")
    try:
        return rtnetlink_socket(netns, groups, receive_buffer=_RECV_BUFFER)
    except OSError as exc:
        raise translate_error(exc, "cannot open a netlink socket") from exc


# The replies the adapter reads; anything else decodes as a bare nlmsg.
_REPLY_CLASSES = {RTM_NEWLINK: ifinfmsg, RTM_NEWADDR: ifaddrmsg, RTM_NEWROUTE: rtmsg}


class _Rtnl:
    """The route requests and filtered dumps, over the shared transport (thread-safe: one exchange at a time)."""

    def __init__(self, transport: Rtnetlink) -> None:
        self._transport = transport

    def close(self) -> None:
        self._transport.close()

    last_error_message: str | None = None

    # -- requests -------------------------------------------------------------

    def write_route(self, prefix: IPNetwork, hops: list[tuple[IPAddress, int]], table: int, protocol: int) -> int:
        """RTM_NEWROUTE with create+replace; returns 0 or the kernel's errno."""
        message = _route_message(prefix, table, protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST)
        if len(hops) == 1:
            gateway, index = hops[0]
            message["attrs"] += [("RTA_GATEWAY", _text(gateway)), ("RTA_OIF", index)]
        else:
            paths = [{"oif": index, "attrs": [("RTA_GATEWAY", _text(gateway))]} for gateway, index in hops]
            message["attrs"].append(("RTA_MULTIPATH", paths))
        return self._request(message, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)

    def delete_route(self, prefix: IPNetwork, table: int, protocol: int) -> int:
        """RTM_DELROUTE of our protocol (any scope, any type, all next hops); 0 or errno."""
        return self._request(_route_message(prefix, table, protocol, RT_SCOPE_NOWHERE, 0), RTM_DELROUTE, 0)

    def get_route(self, address: IPAddress) -> tuple[int, bool, int] | None:
        """``ip route get ADDRESS`` -> (route type, via a gateway, oif), None when unreachable."""
        message = rtmsg()
        message["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
        message["dst_len"] = address.max_prefixlen
        message["attrs"] = [("RTA_DST", _text(address))]
        try:
            # No NLM_F_ACK: the answer is the one route.
            replies = self._transport.request(message, RTM_GETROUTE, 0)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ENODEV):
                return None
            raise translate_error(exc.code, f"cannot look up the route to {address}") from exc
        for reply in replies:
            if reply["header"]["type"] == RTM_NEWROUTE:
                attrs = _attributes(reply, ("RTA_GATEWAY", "RTA_MULTIPATH", "RTA_OIF"))
                # Via a gateway, or several paths: never on-link.
                via_gateway = "RTA_GATEWAY" in attrs or "RTA_MULTIPATH" in attrs
                return reply["type"], via_gateway, attrs.get("RTA_OIF") or 0
        return None

    # -- dumps ------------------------------------------------------------------

    def dump_links(self) -> dict[int, str]:
        def name_of(message: nlmsg) -> tuple[int, str] | None:
            name = message.get_attr("IFLA_IFNAME") if message["header"]["type"] == RTM_NEWLINK else None
            return None if name is None else (message["index"], name)

        return dict(self._dump(ifinfmsg(), RTM_GETLINK, name_of))

    def dump_addresses(self) -> list[IPAddress]:
        """IFA_LOCAL and IFA_ADDRESS of every address (the latter is the peer's on point-to-point links)."""

        def addresses_of(message: nlmsg) -> list[IPAddress] | None:
            if message["header"]["type"] != RTM_NEWADDR:
                return None
            found = []
            for name in ("IFA_LOCAL", "IFA_ADDRESS"):
                text = message.get_attr(name)
                if text:
                    found.append(IPv6Address(text) if ":" in text else IPv4Address(text))
            return found

        request = ifaddrmsg()
        request["family"] = socket.AF_UNSPEC
        return [address for found in self._dump(request, RTM_GETADDR, addresses_of) for address in found]

    def dump_routes(self, family: int, table: int, protocol: int) -> list[tuple[str, tuple[tuple[str | None, int], ...]]]:
        """[(destination, ((gateway or None, oif), ...)), ...] of our unicast host routes in ``table``.

        Routes with the same next hops share one tuple of them.
        """
        request = rtmsg()
        request["family"] = family
        request["table"] = table if table < 256 else RT_TABLE_COMPAT
        request["proto"] = protocol
        request["attrs"] = [("RTA_TABLE", table)]
        full = 32 if family == socket.AF_INET else 128
        # Thousands of routes share a handful of next-hop sets, and decoding
        # RTA_MULTIPATH is the dearest part of a route: decode each distinct
        # set once, keyed by its attributes as received.
        next_hops: dict[bytes, tuple[tuple[str | None, int], ...]] = {}

        def route_of(message: nlmsg) -> tuple[str, tuple[tuple[str | None, int], ...]] | None:
            # The kernel filters by table and protocol only with strict
            # checking (Linux >= 4.20), and never by prefix length or type.
            if (
                message["header"]["type"] != RTM_NEWROUTE
                or message["family"] != family
                or message["dst_len"] != full
                or message["proto"] != protocol
                or message["type"] != RTN_UNICAST
            ):
                return None
            slots = attribute_slots(message, _ROUTE_ATTRIBUTES)
            route_table = message["table"]
            if route_table == RT_TABLE_COMPAT and "RTA_TABLE" in slots:
                route_table = slots["RTA_TABLE"].value  # the id did not fit rtm_table
            if route_table != table or "RTA_DST" not in slots:
                return None
            key = b"".join(received_bytes(slots[name]) for name in _NEXT_HOP_ATTRIBUTES if name in slots)
            hops = next_hops.get(key)
            if hops is None:
                hops = next_hops[key] = _next_hops(slots)
            return slots["RTA_DST"].value, hops

        try:
            return self._dump(request, RTM_GETROUTE, route_of)
        except KernelError as exc:
            if exc.code == errno.ENOENT:  # strict dump of a table that does not exist yet
                return []
            raise

    # -- exchanges -----------------------------------------------------------------

    def _request(self, message: nlmsg, msg_type: int, flags: int) -> int:
        """Send with NLM_F_ACK; 0 or the kernel's errno (its text in ``last_error_message``)."""
        try:
            self._transport.request(message, msg_type, NLM_F_ACK | flags)
        except NetlinkError as exc:
            # The kernel's text for a failed request (NETLINK_EXT_ACK), e.g. "Nexthop has invalid gateway".
            self.last_error_message = exc.detail
            return exc.code
        self.last_error_message = None
        return 0

    def _dump(self, message: nlmsg, msg_type: int, convert: Callable[[nlmsg], _T | None]) -> list[_T]:
        """``convert`` applied to each message of a dump, as they arrive, Nones left out.

        The transport restarts a dump the kernel flags interrupted.
        """
        try:
            return self._transport.dump(message, msg_type, convert)
        except DumpInterrupted as exc:
            raise KernelError("netlink dump kept being interrupted by concurrent changes", errno.EINTR) from exc
        except NetlinkError as exc:
            raise KernelError(f"netlink dump failed: {os.strerror(exc.code)}", exc.code) from exc


def _route_message(prefix: IPNetwork, table: int, protocol: int, scope: int, route_type: int) -> rtmsg:
    """An rtmsg for ``prefix`` in our table and protocol."""
    message = rtmsg()
    message["family"] = socket.AF_INET if prefix.version == 4 else socket.AF_INET6
    message["dst_len"] = prefix.prefixlen
    message["table"] = table if table < 256 else RT_TABLE_UNSPEC
    message["proto"] = protocol
    message["scope"] = scope
    message["type"] = route_type
    message["attrs"] = [("RTA_DST", _text(prefix.network_address))]
    if table >= 256:
        # The kernel reads rtm_table when RTA_TABLE is absent; the attribute
        # is needed only for ids that do not fit it (and costs an encode).
        message["attrs"].append(("RTA_TABLE", table))
    return message


def _text(address: IPAddress) -> str:
    # pyroute2 takes addresses as text; inet_ntop formats in C, str() of an IPv6Address in Python.
    return socket.inet_ntop(socket.AF_INET if address.version == 4 else socket.AF_INET6, address.packed)


_NEXT_HOP_ATTRIBUTES = ("RTA_GATEWAY", "RTA_OIF", "RTA_MULTIPATH")
_ROUTE_ATTRIBUTES = frozenset({"RTA_DST", "RTA_TABLE", *_NEXT_HOP_ATTRIBUTES})


def _attributes(message: nlmsg, names: tuple[str, ...]) -> dict[str, Any]:
    """``{name: decoded value}`` of the attributes of ``message`` named in ``names``."""
    return {name: slot.value for name, slot in attribute_slots(message, names).items()}


def _next_hops(slots: dict[str, Any]) -> tuple[tuple[str | None, int], ...]:
    multipath = slots.get("RTA_MULTIPATH")
    if multipath is not None:
        return tuple((path.get_attr("RTA_GATEWAY"), path["oif"]) for path in multipath.value)
    gateway = slots["RTA_GATEWAY"].value if "RTA_GATEWAY" in slots else None
    return ((gateway, slots["RTA_OIF"].value if "RTA_OIF" in slots else 0),)


def _host_network(family: int, destination: str) -> IPNetwork:
    # ipaddress parses packed bytes much faster than text.
    if family == socket.AF_INET:
        return IPv4Network((socket.inet_pton(family, destination), 32))
    return IPv6Network((socket.inet_pton(family, destination), 128))


def _gateway(family: int, gateway: str | None) -> IPAddress:
    # A next hop without a gateway shows as the unspecified address.
    packed = socket.inet_pton(family, gateway) if gateway else 0
    return IPv4Address(packed) if family == socket.AF_INET else IPv6Address(packed)


def _with_detail(context: str, detail: str | None) -> str:
    return f"{context} ({detail})" if detail else context


def _hops_text(hops: list[NextHop]) -> str:
    return ", ".join(str(hop) for hop in hops)
