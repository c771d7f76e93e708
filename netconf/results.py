"""CNI results (``prevResult`` in, the ADD result out) for spec 0.3.0–1.1.0.

A chained plugin that adds no interface must hand the previous result on
unchanged in the config's version, keeping keys it does not know and the
order of ``ips`` (runtimes take the pod IP from there). So the models allow
extra keys, the addresses stay the strings the main plugin wrote, and the
only edits are the documented differences between versions.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from netconf.errors import InvalidConfig
from netconf.versions import at_least

# Fields that only exist from spec 1.1.0 on (SPEC.md 1.1.0 "Success").
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Interface(_Open):
    name: str
    mac: str | None = None
    sandbox: str | None = None


class IPConfig(_Open):
    address: str
    gateway: str | None = None
    interface: int | None = None
    version: str | None = None

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str) -> str:
        ipaddress.ip_interface(value)
        return value

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_interface(self.address).ip


class Route(_Open):
    dst: str
    gw: str | None = None


class Result(_Open):
    cni_version: str | None = Field(None, alias="cniVersion")
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
        return Result.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            "prevResult." + ".".join(str(part) for part in error["loc"]) + ": " + error["msg"]
            for error in exc.errors()
        )
        raise InvalidConfig("invalid prevResult", problems) from exc


def render_result(result: Result, cni_version: str) -> dict[str, Any]:
    """The result as JSON-ready data in ``cni_version``'s shape.

    0.3.x and 0.4.0 carry ``ips[].version``; 1.0.0 dropped it; 1.1.0 added
    interface and route fields older versions do not know.
    """
    data = result.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data["cniVersion"] = cni_version
    modern = at_least(cni_version, "1.0.0")
    for ip in data.get("ips") or []:
        if modern:
            ip.pop("version", None)
        else:
            ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
    if not at_least(cni_version, "1.1.0"):
        for interface in data.get("interfaces") or []:
            for field in _INTERFACE_FIELDS_1_1:
                interface.pop(field, None)
        for route in data.get("routes") or []:
            for field in _ROUTE_FIELDS_1_1:
                route.pop(field, None)
    return data
