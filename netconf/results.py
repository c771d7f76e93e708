"""CNI results (``prevResult`` in, the ADD result out) for spec 0.3.0–1.1.0.

A chained plugin that adds no interface must hand the previous result on
unchanged in the config's version, keeping keys it does not know and the
order of ``ips`` (runtimes take the pod IP from there). So the records keep
extra keys, the addresses stay the strings the main plugin wrote, and the
only edits are the documented differences between versions.

Each record's fields are declared here, once (see ``netconf.records``).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress

from netconf.errors import InvalidConfig
from netconf.records import Record, describe_validation_error, validation_error_class
from netconf.versions import at_least

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Annotated, Any

    from pydantic import AfterValidator, Field

    from netconf.fields import check_interface_address

# Fields that only exist from spec 1.1.0 on (SPEC.md 1.1.0 "Success").
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")


class _Open(Record, extra="allow", populate_by_name=True):
    """Results keep every key they do not know: a chained plugin hands them on."""


class Interface(_Open):
    name: str
    mac: str | None = None
    sandbox: str | None = None


class IPConfig(_Open):
    address: Annotated[str, AfterValidator(check_interface_address)]
    gateway: str | None = None
    interface: int | None = None
    version: str | None = None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_interface(self.address).ip


class Route(_Open):
    dst: str
    gw: str | None = None


class Result(_Open):
    cni_version: Annotated[str | None, Field(alias="cniVersion")] = None
    interfaces: list[Interface] | None = None
    ips: list[IPConfig] | None = None
    routes: list[Route] | None = None
    dns: dict[str, Any] | None = None

    def pod_addresses(self, ifname: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Unicast IPs of the pod's ``ifname`` inside the sandbox, in result order.

        An ``ips`` entry belongs to the pod when its ``interface`` index names
        ``ifname`` with a sandbox. Results of plugins that give no index are
        read as "all ips are the pod's", which is what runtimes do too.
        """
        ips = self.ips or []
        interfaces = self.interfaces or []
        pod_indexes = {
            index
            for index, interface in enumerate(interfaces)
            if interface.name == ifname and interface.sandbox
        }
        indexed = [ip.ip for ip in ips if ip.interface is not None and ip.interface in pod_indexes]
        if indexed:
            return indexed
        return [ip.ip for ip in ips if ip.interface is None]


def parse_result(document: dict[str, Any]) -> Result:
    """Validate a ``prevResult``; raises InvalidConfig (code 7) with field paths."""
    try:
        return Result.validate(document)
    except validation_error_class() as exc:
        raise InvalidConfig("invalid prevResult", describe_validation_error(exc, root="prevResult")) from exc


def render_result(document: dict[str, Any], cni_version: str) -> dict[str, Any]:
    """A validated ``prevResult`` (see parse_result) in ``cni_version``'s shape, as JSON-ready data.

    The main plugin's document is handed on as it came — every key, the
    order of ``ips`` — except for the documented differences: 0.3.x and
    0.4.0 carry ``ips[].version``; 1.0.0 dropped it; 1.1.0 added interface
    and route fields older versions do not know. Working on the document
    itself, not a dump of the records, keeps pydantic-core's serializer
    (costly to set up on first use: it imports decimal, uuid, inspect) off
    the plugin's path. The input is not modified.
    """
    data = dict(document)
    data["cniVersion"] = cni_version
    modern = at_least(cni_version, "1.0.0")
    if data.get("ips"):
        data["ips"] = ips = [dict(ip) for ip in data["ips"]]
        for ip in ips:
            if modern:
                ip.pop("version", None)
            else:
                ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
    if not at_least(cni_version, "1.1.0"):
        for key, fields in (("interfaces", _INTERFACE_FIELDS_1_1), ("routes", _ROUTE_FIELDS_1_1)):
            if data.get(key):
                data[key] = [{name: value for name, value in item.items() if name not in fields} for item in data[key]]
    return data
