"""Which IP addresses may serve as anycast addresses and as next hops: rules shared by the plugin and the reconciler.

The plugin refuses a bad address when a pod asks for it; the reconciler
refuses it again when a state record names it (a record is input from a
file, not a fact). One definition keeps the two from drifting apart.

Pure: ``ipaddress`` only, no I/O (the plugin imports this on every ADD).
"""

from __future__ import annotations

import ipaddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from netconf.values import IPAddress, IPNetwork

# Never routable as a unicast service address, whatever the pools say.
_CLASS_E = ipaddress.IPv4Network("240.0.0.0/4")  # includes 255.255.255.255
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_IPV6_RESERVED = ipaddress.IPv6Network("::/8")  # ::, ::1, IPv4-mapped and -compatible
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def special_address_reason(address: IPAddress) -> str | None:
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


def usable_in_pool(address: IPAddress, pool: IPNetwork) -> bool:
    """Whether ``address`` (inside ``pool``) is a host address the pool may hand out.

    A pool's network and broadcast addresses (IPv4), and its Subnet-Router
    anycast address (IPv6: all host bits zero, RFC 4291 2.6.1), are not:
    many stacks treat the first two as broadcast, and routers answer the
    third themselves wherever the pool is on a link. Pools of /31, /32,
    /127 and /128 have no such addresses (RFC 3021, RFC 6164).
    """
    if pool.max_prefixlen - pool.prefixlen <= 1:
        return True
    if address == pool.network_address:
        return False
    return address.version == 6 or address != pool.broadcast_address


def pool_edge_name(address: IPAddress, pool: IPNetwork) -> str:
    """``network``, ``broadcast`` or ``Subnet-Router anycast``: which edge of ``pool`` an unusable address is."""
    if address.version == 6:
        return "Subnet-Router anycast"
    return "network" if address == pool.network_address else "broadcast"


def usable_next_hop(ip: IPAddress) -> bool:
    """Whether a pod IP can be the next hop of an anycast route on the node.

    Not loopback, unspecified, multicast or link-local (not reachable from
    the node as a next hop, or not unique), not in 0.0.0.0/8, not
    255.255.255.255, not IPv4-mapped or -compatible IPv6 (``::/8``). Class
    E stays: some clusters number pods from 240.0.0.0/4, and the route to
    the pod never leaves the node.
    """
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if ip.version == 4:
        return ip not in _THIS_NETWORK and ip != _LIMITED_BROADCAST
    return ip not in _IPV6_RESERVED
