"""Which anycast addresses an attachment gets, and whether it may have them.

Pure: reads the parsed config and environment, raises CNI errors, no I/O.
The pod annotation is read by an adapter (``verbs.PodAnnotations``); what
its value may hold is judged here, like every other source.
"""

from __future__ import annotations

import ipaddress
from itertools import islice

from netconf.addresses import pool_edge_name, special_address_reason, usable_in_pool, usable_next_hop
from netconf.errors import AnycastLimitExceeded, AnycastOutsidePools, InvalidAnycastAddress, NoPodAddressOfFamily

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing/collections.abc imports at run time (start-up budget)
    from collections.abc import Iterable, Sequence

    from netconf.config import NetworkConfig
    from netconf.values import IPAddress

ANYCAST_ARG = "FLOCK_ANYCAST"

# At most this many addresses per attachment, counted as given (duplicates
# and all), before any of them is parsed. A DNS service needs a handful per
# pod (two or three resolver addresses per family; an authoritative
# operator's NS set is rarely over 13); each address is a host route on the
# node and a prefix at every BGP peer, per Ready pod, and peers commonly cap
# a session at a few hundred prefixes. 64 leaves room for a pod serving many
# services without letting one pod spec flood the node or the session.
MAX_ADDRESSES = 64
# 64 addresses in their longest text with ", " between them take under
# 3,300 bytes; an annotation may hold up to the API server's object limit.
MAX_ANNOTATION_BYTES = 4096


class AnycastRequest:
    """The addresses an attachment asks for, and which source named them."""

    __slots__ = ("source", "addresses")

    def __init__(self, source: str, addresses: tuple[IPAddress, ...]) -> None:
        self.source = source
        self.addresses = addresses


def requested_anycast(config: NetworkConfig, cni_args: dict[str, str]) -> AnycastRequest | None:
    """The first explicit source that names addresses, or None.

    Order (README, "Where the anycast addresses come from"):
    ``runtimeConfig.anycast`` (capability), then ``args.cni.anycast``, then
    CNI_ARGS ``FLOCK_ANYCAST``. An empty list in
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


def annotated_anycast(value: str | None, source: str) -> AnycastRequest | None:
    """The request in a pod annotation's ``value`` (None: no annotation, or no address in it).

    Raises AnycastLimitExceeded for a value over MAX_ANNOTATION_BYTES or
    with more than MAX_ADDRESSES items (both before any address is parsed),
    and InvalidAnycastAddress for a malformed one.
    """
    if value is not None and (
        len(value) > MAX_ANNOTATION_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ANNOTATION_BYTES
    ):
        raise AnycastLimitExceeded(
            f"{source} is longer than {MAX_ANNOTATION_BYTES} bytes",
            f"at most {MAX_ANNOTATION_BYTES} bytes of comma-separated addresses are read",
        )
    items = split_addresses(value, source)
    if not items:
        return None
    return AnycastRequest(source, parse_anycast_addresses(items, source))


def split_addresses(value: Iterable[str] | str | None, source: str = "the request") -> list[str]:
    """Comma-separated text or a list → non-empty stripped items, at most MAX_ADDRESSES.

    Stops at the first item over the limit, before any address is parsed,
    so refusing 100,000 items costs a split, not 100,000 parses. Raises
    AnycastLimitExceeded.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    # C-level iteration (map, filter, islice): no Python bytecode runs per empty item.
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
    reason = special_address_reason(address)
    if reason is not None:
        raise InvalidAnycastAddress(f"anycast address {item!r} from {source} cannot be routed as anycast", reason)
    return address


def _too_many(source: str) -> AnycastLimitExceeded:
    return AnycastLimitExceeded(
        f"more than {MAX_ADDRESSES} anycast addresses from {source}",
        f"an attachment may hold at most {MAX_ADDRESSES} anycast addresses",
    )


def check_pools(addresses: Iterable[IPAddress], config: NetworkConfig) -> None:
    """Every address must be a usable host address of one of ``flock.pools``.

    Usable as in ``netconf.addresses.usable_in_pool``: not a pool's network
    or broadcast (IPv6: Subnet-Router anycast) address. Raises
    AnycastOutsidePools.
    """
    pools = config.flock.pools
    for address in addresses:
        containing = [pool for pool in pools if address.version == pool.version and address in pool]
        if any(usable_in_pool(address, pool) for pool in containing):
            continue
        if containing:
            pool = containing[0]
            raise AnycastOutsidePools(
                f"anycast address {address} is the {pool_edge_name(address, pool)} address of pool {pool}",
                "a pool's network and broadcast (IPv6: Subnet-Router anycast) addresses are not handed out",
            )
        allowed = ", ".join(str(pool) for pool in pools) or "none (pools is empty)"
        raise AnycastOutsidePools(
            f"anycast address {address} is outside the allowed pools",
            f"network {config.name!r} allows {allowed}",
        )


def usable_pod_addresses(pod_ips: Iterable[IPAddress], anycast_addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """The pod IPs the reconciler can route anycast traffic to, in the given order.

    Pure. Usable as in ``netconf.addresses.usable_next_hop``, and not itself
    one of ``anycast_addresses`` (a next hop that is the destination routes
    nowhere).
    """
    anycast = set(anycast_addresses)
    return tuple(ip for ip in pod_ips if ip not in anycast and usable_next_hop(ip))


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
