"""The network configuration a runtime hands to ``flock-anycast`` on stdin.

Two layers of strictness, as the CNI conventions ask: the envelope the
runtime builds (``cniVersion``, ``name``, ``runtimeConfig``, ``prevResult``,
``args`` and whatever else it passes through) tolerates unknown keys, while
our own ``flock`` block is strict so that a typo in an operator's conflist is
reported (code 2, naming key and value) instead of silently ignored.

The fields are declared in ``netconf.declarations``; these are the records
pydantic-core validates into (``netconf.records``).

Pure: parsing and validation only, no I/O.
"""

from __future__ import annotations

import ipaddress

from netconf.errors import InvalidConfig, UnsupportedField
from netconf.records import Record, validation_error_class

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_STATE_DIR = "/var/lib/flock"
DEFAULT_ANNOTATION = "flock.fritzlab.net/anycast"


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


class FlockBlock(Record):
    """Our own settings, under the ``flock`` key of the plugin's entry."""


class CniArgs(Record):
    """``args.cni`` of the network config; other keys in ``extra``."""


class ConfigArgs(Record):
    pass


class RuntimeConfig(Record):
    pass


class NetworkConfig(Record):
    """The runtime's envelope around our plugin entry; unknown keys are kept."""

    def gc_attachments(self) -> set[tuple[str, str]] | None:
        """(containerID, ifname) pairs the runtime still uses, from either GC key."""
        listed = self.valid_attachments if self.valid_attachments is not None else self.attachments
        if listed is None:
            return None
        return {(str(item.get("containerID", "")), str(item.get("ifname", ""))) for item in listed}


def parse_network_config(document: dict[str, Any]) -> NetworkConfig:
    """Validate the decoded stdin document.

    Raises UnsupportedField (code 2) for an unknown key in our ``flock``
    block and InvalidConfig (code 7) for anything else that is wrong, with
    pydantic's field paths in ``details``.
    """
    if "flock" not in document:
        raise InvalidConfig(
            "network config has no \"flock\" block",
            "the flock-anycast entry needs at least {\"flock\": {\"pools\": [...]}}",
        )
    try:
        return NetworkConfig.validate(document)
    except validation_error_class() as exc:
        raise _translate_validation_error(exc) from exc


def _translate_validation_error(exc) -> InvalidConfig | UnsupportedField:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            return UnsupportedField(
                f"unsupported field {location!r} in the network config",
                f"{location}={error.get('input')!r}",
            )
        problems.append(f"{location}: {error['msg']}")
    return InvalidConfig("invalid network config", "; ".join(problems))
