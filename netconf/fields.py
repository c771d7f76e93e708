"""How the record fields are read and written: the validators and serializers their declarations name.

The compiled schemas (``netconf.compiled_schemas``, generated) call these
functions, so they live in a module of their own that imports no record
module: the generated module imports only this one, and the records import
the generated one, with no cycle between them.

Pure: ``ipaddress``, ``socket`` and ``datetime`` only (the plugin imports
this on every exec that validates a record).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from netconf.values import IPAddress, IPNetwork


# -- addresses ----------------------------------------------------------------

# The reconciler reads every record, four addresses each. pydantic's own
# ipaddress support parses each text with both IPv4Address and IPv6Address
# in pure Python and formats it back with str(). These two functions give
# the same values and the same text through the C parser and formatter, and
# hand everything unusual to the ipaddress module.


def parse_ip_address(value: Any) -> IPAddress:
    """Validate one address as ``ipaddress.ip_address`` does; raises ValueError.

    Texts ``inet_pton`` accepts are a subset of those ipaddress accepts, with
    equal values (both refuse leading zeros in IPv4); the rest (scope ids,
    ints, packed bytes, junk) goes to ``ipaddress.ip_address`` itself.
    """
    if type(value) is str:
        try:
            if ":" in value:
                return IPv6Address(socket.inet_pton(socket.AF_INET6, value))
            return IPv4Address(socket.inet_pton(socket.AF_INET, value))
        except (OSError, ValueError):
            pass
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    return ipaddress.ip_address(value)


def format_ip_address(address: IPAddress) -> str:
    """``str(address)``, through ``inet_ntop`` where both agree (RFC 5952 text).

    glibc writes IPv4-mapped and -compatible IPv6 addresses with a dotted
    quad, and inet_ntop knows no scope id: those keep ``str()``.
    """
    if address.version == 6 and address.scope_id is None:
        text = socket.inet_ntop(socket.AF_INET6, address.packed)
        if "." not in text:
            return text
    return str(address)


def parse_pool(value: Any) -> IPNetwork:
    """A pool CIDR; raises ValueError.

    ``strict=True`` refuses ``10.0.0.1/24``: a pool with host bits set is
    almost always a typo for a different prefix.
    """
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a pool is a CIDR string, not {type(value).__name__}")
    return ipaddress.ip_network(value, strict=True)


def format_network(network: IPNetwork) -> str:
    return str(network)


def check_interface_address(value: str) -> str:
    """``ips[].address`` must be an address with a prefix length; raises ValueError.

    SPEC.md: "an IP address in CIDR notation". ``ipaddress`` would take a
    bare address as a host prefix and an IPv6 scope id; libcni's Go parser
    (net.ParseCIDR) takes neither, so neither do we.
    """
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length (CIDR notation, e.g. 10.0.0.5/24)")
    if "%" in value:
        raise ValueError(f"{value!r} has a scope id")
    ipaddress.ip_interface(value)
    return value


# -- paths ----------------------------------------------------------------------


def absolute_path(value: str) -> str:
    """An absolute path the kernel can take; raises ValueError."""
    if not value.startswith("/"):
        raise ValueError("stateDir must be an absolute path")
    return file_path(value)


def file_path(value: str) -> str:
    """A path without NUL bytes; raises ValueError.

    The kernel's paths end at the first NUL, so Python refuses them at
    open() with ValueError: caught here, it is a config error (code 7)
    instead of an unexpected failure (999) halfway through a verb.
    """
    if "\0" in value:
        raise ValueError("path contains a NUL byte")
    return value


# -- times ----------------------------------------------------------------------


def format_datetime(moment: datetime) -> str:
    """A datetime as pydantic writes it in JSON: ISO 8601, ``Z`` for UTC.

    An offset with seconds, which pydantic-core cannot read back, is written
    as the same instant in UTC.
    """
    offset = moment.utcoffset()
    if offset is not None and offset.seconds % 60:
        from datetime import UTC

        moment = moment.astimezone(UTC)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
