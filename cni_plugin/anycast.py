"""Which anycast addresses an attachment gets, and whether it may have them.

Pure: reads the parsed config and environment, raises CNI errors, no I/O.
The Kubernetes annotation source needs the network and lives elsewhere.
"""

from __future__ import annotations

import ipaddress
from itertools import islice

from netconf.errors import AnycastLimitExceeded, AnycastOutsidePools, InvalidAnycastAddress, NoPodAddressOfFamily

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing/collections.abc imports at run time (start-up budget)
    from collections.abc import Iterable, Sequence

    from netconf.config import NetworkConfig
    from netconf.state import IPAddress

ANYCAST_ARG = "FLOCK_ANYCAST"

# At most this many addresses per attachment, counted as given (duplicates
# and all), before any of them is parsed. A DNS service needs a handful per
# pod (two or three resolver addresses per family; an authoritative
# operator's NS set is rarely over 13); each address is a host route on the
# node and a prefix at every BGP peer, per Ready pod, and peers commonly cap
# a session at a few hundred prefixes. 64 leaves room for a pod serving many
# services without letting one pod spec flood the node or the session.
MAX_ADDRESSES = 64

# Never routable as a unicast service address, whatever the pools say.
_CLASS_E = ipaddress.IPv4Network("240.0.0.0/4")  # includes 255.255.255.255
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_IPV6_RESERVED = ipaddress.IPv6Network("::/8")  # ::, ::1, IPv4-mapped and -compatible
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class AnycastRequest:
    """The addresses an attachment asks for, and which source named them."""

    __slots__ = ("source", "addresses")

    def __init__(self, source: str, addresses: tuple[IPAddress, ...]) -> None:
        self.source = source
        self.addresses = addresses


def requested_anycast(config: NetworkConfig, cni_args: dict[str, str]) -> AnycastRequest | None:
    """The first explicit source that names addresses, or None.

    Order (DESIGN part 1): ``runtimeConfig.anycast`` (capability), then
    ``args.cni.anycast``, then CNI_ARGS ``FLOCK_ANYCAST``. An empty list in
    a source counts as "no source", so a runtime that always passes the
    capability does not hide the others. Raises InvalidAnycastAddress and
    AnycastLimitExceeded.
    """
    candidates: list[tuple[str, Iterable[str] | str | None]] = [
        ("runtimeConfig.anycast", config.runtime_config.anycast),
        ("args.cni.anycast", config.args.cni.anycast if config.args and config.args.cni else None),
        (f"CNI_ARGS {ANYCAST_ARG}", cni_args.get(ANYCAST_ARG)),
    ]
    for source, value in candidates:
        items = split_addresses(value, source)
        if items:
            return AnycastRequest(source, parse_anycast_addresses(items, source))
    return None


def split_addresses(value: Iterable[str] | str | None, source: str = "the request") -> list[str]:
    """Comma-separated text or a list → non-empty stripped items, at most MAX_ADDRESSES.

    Stops at the first item over the limit, before any address is parsed,
    so refusing 100,000 items costs a split, not 100,000 parses. Raises
    AnycastLimitExceeded.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    # C-level iteration (map, filter, islice): empty items cost ~30 ns each.
    kept = list(islice(filter(None, map(str.strip, items)), MAX_ADDRESSES + 1))
    if len(kept) > MAX_ADDRESSES:
        raise _too_many(source)
    return kept


def parse_anycast_addresses(items: Sequence[str], source: str) -> tuple[IPAddress, ...]:
    """Host addresses, deduplicated in order; ``a/32`` and ``a/128`` are accepted.

    Raises AnycastLimitExceeded (more than MAX_ADDRESSES items, checked
    before parsing any) and InvalidAnycastAddress.
    """
    if len(items) > MAX_ADDRESSES:
        raise _too_many(source)
    addresses: dict[IPAddress, None] = {}  # insertion-ordered set: linear de-duplication
    for item in items:
        address = _parse_host_address(item, source)
        addresses.setdefault(address, None)
    return tuple(addresses)


def _parse_host_address(item: str, source: str) -> IPAddress:
    if "%" in item:  # ipaddress accepts IPv6 scope ids; a routed address has none
        raise InvalidAnycastAddress(f"anycast address {item!r} from {source} has a scope id")
    try:
        interface = ipaddress.ip_interface(item)
    except ValueError as exc:
        raise InvalidAnycastAddress(f"anycast address {item!r} from {source} is not an IP address") from exc
    if interface.network.prefixlen != interface.max_prefixlen:
        raise InvalidAnycastAddress(f"anycast address {item!r} from {source} is a prefix, not a host address")
    address = interface.ip
    reason = _special_address(address)
    if reason is not None:
        raise InvalidAnycastAddress(f"anycast address {item!r} from {source} cannot be routed as anycast", reason)
    return address


def _special_address(address: IPAddress) -> str | None:
    """Why no pool may hand out ``address`` as a service address, or None.

    Multicast, unspecified, loopback and link-local never leave a host or a
    link. Class E (240.0.0.0/4, with the limited broadcast address) is
    dropped by common host stacks and routers, so clients we do not control
    could not reach it; 0.0.0.0/8 means "this network". In IPv6, ``::/8``
    holds the IPv4-mapped and -compatible forms, which are IPv4 addresses in
    disguise, not routable IPv6.
    """
    if address.is_multicast or address.is_unspecified or address.is_loopback or address.is_link_local:
        return "multicast, unspecified, loopback and link-local addresses are refused"
    if address.version == 4:
        if address in _CLASS_E:
            return "class E (240.0.0.0/4) and the broadcast address 255.255.255.255 are refused"
        if address in _THIS_NETWORK:
            return "0.0.0.0/8 (this network) is refused"
    elif address in _IPV6_RESERVED:
        return "::/8 (IPv4-mapped and IPv4-compatible addresses) is refused"
    return None


def _too_many(source: str) -> AnycastLimitExceeded:
    return AnycastLimitExceeded(
        f"more than {MAX_ADDRESSES} anycast addresses from {source}",
        f"an attachment may hold at most {MAX_ADDRESSES} anycast addresses",
    )


def check_pools(addresses: Iterable[IPAddress], config: NetworkConfig) -> None:
    """Every address must be a usable host address of one of ``flock.pools``.

    A pool's network and broadcast addresses (IPv4), and its Subnet-Router
    anycast address (IPv6: all host bits zero, RFC 4291 2.6.1), are not
    usable: many stacks treat the first two as broadcast, and routers answer
    the third themselves wherever the pool is on a link. Pools of /31, /32,
    /127 and /128 have no such addresses (RFC 3021, RFC 6164). Raises
    AnycastOutsidePools.
    """
    pools = config.flock.pools
    for address in addresses:
        containing = [pool for pool in pools if address.version == pool.version and address in pool]
        if any(_usable_in(address, pool) for pool in containing):
            continue
        if containing:
            pool = containing[0]
            edge = "network" if address == pool.network_address else "broadcast"
            if address.version == 6:
                edge = "Subnet-Router anycast"
            raise AnycastOutsidePools(
                f"anycast address {address} is the {edge} address of pool {pool}",
                "a pool's network and broadcast (IPv6: Subnet-Router anycast) addresses are not handed out",
            )
        allowed = ", ".join(str(pool) for pool in pools) or "none (pools is empty)"
        raise AnycastOutsidePools(
            f"anycast address {address} is outside the allowed pools",
            f"network {config.name!r} allows {allowed}",
        )


def _usable_in(address: IPAddress, pool) -> bool:
    if pool.max_prefixlen - pool.prefixlen <= 1:  # /31, /32, /127, /128: every address is a host
        return True
    if address == pool.network_address:
        return False
    return address.version == 6 or address != pool.broadcast_address


def usable_pod_addresses(pod_ips: Iterable[IPAddress], anycast_addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """The pod IPs the reconciler can route anycast traffic to, in the given order.

    Pure. Dropped: loopback, unspecified, multicast, link-local (not
    reachable from the node as a next hop, or not unique), IPv4-mapped and
    -compatible IPv6 (``::/8``), 0.0.0.0/8 and 255.255.255.255, and any IP
    that is itself one of ``anycast_addresses`` (a next hop that is the
    destination routes nowhere). Class E stays: some clusters number pods
    from 240.0.0.0/4, and the route to the pod never leaves the node.
    """
    anycast = set(anycast_addresses)
    return tuple(ip for ip in pod_ips if ip not in anycast and _usable_next_hop(ip))


def _usable_next_hop(ip: IPAddress) -> bool:
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if ip.version == 4:
        return ip not in _THIS_NETWORK and ip != _LIMITED_BROADCAST
    return ip not in _IPV6_RESERVED


def check_families(addresses: Iterable[IPAddress], pod_ips: Sequence[IPAddress], ifname: str) -> None:
    """Each anycast family needs a usable pod unicast IP of that family as next hop.

    Usable as in ``usable_pod_addresses``. Raises NoPodAddressOfFamily: the
    reconciler could never route the address, so accepting it would only
    hide the mistake.
    """
    addresses = tuple(addresses)
    usable = usable_pod_addresses(pod_ips, addresses)
    families = {ip.version for ip in usable}
    for address in addresses:
        if address.version not in families:
            unusable = [str(ip) for ip in pod_ips if ip not in usable]
            details = f"pod addresses from prevResult: {', '.join(map(str, pod_ips)) or 'none'}"
            if unusable:
                details += f"; not usable as next hop: {', '.join(unusable)}"
            raise NoPodAddressOfFamily(
                f"anycast address {address} is IPv{address.version} but the pod has no usable unicast "
                f"IPv{address.version} address on {ifname}",
                details,
            )
