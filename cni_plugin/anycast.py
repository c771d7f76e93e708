"""Which anycast addresses an attachment gets, and whether it may have them.

Pure: reads the parsed config and environment, raises CNI errors, no I/O.
The Kubernetes annotation source needs the network and lives elsewhere.
"""

from __future__ import annotations

import ipaddress

from netconf.errors import AnycastOutsidePools, InvalidAnycastAddress, NoPodAddressOfFamily

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing/collections.abc imports at run time (start-up budget)
    from collections.abc import Iterable, Sequence

    from netconf.config import NetworkConfig
    from netconf.state import IPAddress

ANYCAST_ARG = "FLOCK_ANYCAST"


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
    capability does not hide the others. Raises InvalidAnycastAddress.
    """
    candidates: list[tuple[str, Iterable[str] | str | None]] = [
        ("runtimeConfig.anycast", config.runtime_config.anycast),
        ("args.cni.anycast", config.args.cni.anycast if config.args and config.args.cni else None),
        (f"CNI_ARGS {ANYCAST_ARG}", cni_args.get(ANYCAST_ARG)),
    ]
    for source, value in candidates:
        items = split_addresses(value)
        if items:
            return AnycastRequest(source, parse_anycast_addresses(items, source))
    return None


def split_addresses(value: Iterable[str] | str | None) -> list[str]:
    """Comma-separated text or a list → non-empty stripped items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


def parse_anycast_addresses(items: Sequence[str], source: str) -> tuple[IPAddress, ...]:
    """Host addresses, deduplicated in order; ``a/32`` and ``a/128`` are accepted."""
    addresses: list[IPAddress] = []
    for item in items:
        try:
            interface = ipaddress.ip_interface(item)
        except ValueError as exc:
            raise InvalidAnycastAddress(f"anycast address {item!r} from {source} is not an IP address") from exc
        if interface.network.prefixlen != interface.max_prefixlen:
            raise InvalidAnycastAddress(
                f"anycast address {item!r} from {source} is a prefix, not a host address"
            )
        address = interface.ip
        if address.is_multicast or address.is_unspecified or address.is_loopback or address.is_link_local:
            raise InvalidAnycastAddress(
                f"anycast address {item!r} from {source} cannot be routed as anycast",
                "multicast, unspecified, loopback and link-local addresses are refused",
            )
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def check_pools(addresses: Iterable[IPAddress], config: NetworkConfig) -> None:
    """Every address must lie in one of ``flock.pools``; raises AnycastOutsidePools."""
    pools = config.flock.pools
    for address in addresses:
        if not any(address.version == pool.version and address in pool for pool in pools):
            allowed = ", ".join(str(pool) for pool in pools) or "none (pools is empty)"
            raise AnycastOutsidePools(
                f"anycast address {address} is outside the allowed pools",
                f"network {config.name!r} allows {allowed}",
            )


def check_families(addresses: Iterable[IPAddress], pod_ips: Sequence[IPAddress], ifname: str) -> None:
    """Each anycast family needs a pod unicast IP of that family as next hop.

    Raises NoPodAddressOfFamily: the reconciler could never route the
    address, so accepting it would only hide the mistake.
    """
    families = {ip.version for ip in pod_ips}
    for address in addresses:
        if address.version not in families:
            raise NoPodAddressOfFamily(
                f"anycast address {address} is IPv{address.version} but the pod has no "
                f"IPv{address.version} address on {ifname}",
                f"pod addresses from prevResult: {', '.join(map(str, pod_ips)) or 'none'}",
            )
