"""What a well-formed ADD result looks like at each spec version (SPEC §5).

Pure functions returning lists of problems, so a check can report all of
them at once rather than the first.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.conformance.spec import IPS_VERSION_DROPPED, at_least

# Fields 1.1.0 added (SPEC §5 "ADD Success"); a result in an older version must not carry them.
INTERFACE_FIELDS_SINCE_1_1 = ("mtu", "socketPath", "pciID")
ROUTE_FIELDS_SINCE_1_1 = ("mtu", "advmss", "priority", "table", "scope")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_interfaces(interfaces: Any, version: str, netns: str) -> list[str]:
    if not isinstance(interfaces, list):
        return [f"'interfaces' is {type(interfaces).__name__}, not a list"]
    problems = []
    for index, interface in enumerate(interfaces):
        where = f"interfaces[{index}]"
        if not isinstance(interface, dict):
            problems.append(f"{where} is not an object")
            continue
        if not isinstance(interface.get("name"), str) or not interface["name"]:
            problems.append(f"{where}.name missing or not a string")
        for key in ("mac", "sandbox"):
            if key in interface and not isinstance(interface[key], str):
                problems.append(f"{where}.{key} is not a string")
        sandbox = interface.get("sandbox")
        if isinstance(sandbox, str) and sandbox and sandbox != netns:
            problems.append(f"{where}.sandbox is {sandbox!r}, not CNI_NETNS {netns!r}")
        for key in INTERFACE_FIELDS_SINCE_1_1:
            if key in interface and not at_least(version, "1.1.0"):
                problems.append(f"{where}.{key} exists only from spec 1.1.0, result is {version}")
        if "mtu" in interface and not _is_int(interface["mtu"]):
            problems.append(f"{where}.mtu is not an integer")
    return problems


def _check_ips(ips: Any, version: str, interface_count: int | None) -> list[str]:
    if not isinstance(ips, list):
        return [f"'ips' is {type(ips).__name__}, not a list"]
    problems = []
    for index, ip in enumerate(ips):
        where = f"ips[{index}]"
        if not isinstance(ip, dict):
            problems.append(f"{where} is not an object")
            continue
        try:
            address = ipaddress.ip_interface(ip.get("address"))
        except ValueError:
            problems.append(f"{where}.address {ip.get('address')!r} is not an address in CIDR notation")
            continue
        if "/" not in str(ip.get("address")):
            problems.append(f"{where}.address {ip.get('address')!r} lacks a prefix length")
        if "gateway" in ip:
            try:
                gateway = ipaddress.ip_address(ip["gateway"])
            except ValueError:
                problems.append(f"{where}.gateway {ip['gateway']!r} is not an IP address")
            else:
                if gateway.version != address.version:
                    problems.append(f"{where}.gateway family differs from its address")
        if "interface" in ip:
            if not _is_int(ip["interface"]) or ip["interface"] < 0:
                problems.append(f"{where}.interface is not a non-negative integer")
            elif interface_count is not None and ip["interface"] >= interface_count:
                problems.append(f"{where}.interface {ip['interface']} is past the end of 'interfaces'")
        if at_least(version, IPS_VERSION_DROPPED):
            if "version" in ip:
                problems.append(f"{where}.version exists only before spec 1.0.0, result is {version}")
        elif ip.get("version") != str(address.version):
            problems.append(
                f"{where}.version is {ip.get('version')!r}, spec {version} requires {str(address.version)!r}"
            )
    return problems


def _check_routes(routes: Any, version: str) -> list[str]:
    if not isinstance(routes, list):
        return [f"'routes' is {type(routes).__name__}, not a list"]
    problems = []
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        if not isinstance(route, dict):
            problems.append(f"{where} is not an object")
            continue
        try:
            ipaddress.ip_network(route.get("dst"), strict=False)
        except ValueError:
            problems.append(f"{where}.dst {route.get('dst')!r} is not a CIDR")
        if "gw" in route:
            try:
                ipaddress.ip_address(route["gw"])
            except ValueError:
                problems.append(f"{where}.gw {route['gw']!r} is not an IP address")
        for key in ROUTE_FIELDS_SINCE_1_1:
            if key in route:
                if not at_least(version, "1.1.0"):
                    problems.append(f"{where}.{key} exists only from spec 1.1.0, result is {version}")
                elif not _is_int(route[key]):
                    problems.append(f"{where}.{key} is not an integer")
    return problems


def _check_dns(dns: Any) -> list[str]:
    if not isinstance(dns, dict):
        return ["'dns' is not an object"]
    problems = []
    for key in ("nameservers", "search", "options"):
        if key in dns and not (isinstance(dns[key], list) and all(isinstance(item, str) for item in dns[key])):
            problems.append(f"dns.{key} is not a list of strings")
    if "domain" in dns and not isinstance(dns["domain"], str):
        problems.append("dns.domain is not a string")
    return problems


def add_result_problems(result: dict[str, Any], version: str, netns: str) -> list[str]:
    """Everything wrong with an ADD result for a request in ``version``."""
    problems = []
    if result.get("cniVersion") != version:
        problems.append(f"cniVersion is {result.get('cniVersion')!r}, the request was {version!r}")
    interfaces = result.get("interfaces")
    interface_count = len(interfaces) if isinstance(interfaces, list) else None
    if "interfaces" in result:
        problems += _check_interfaces(interfaces, version, netns)
    if "ips" in result:
        problems += _check_ips(result["ips"], version, interface_count)
    if "routes" in result:
        problems += _check_routes(result["routes"], version)
    if "dns" in result:
        problems += _check_dns(result["dns"])
    return problems


def _normal_ip(ip: dict[str, Any]) -> tuple[Any, ...]:
    try:
        address: Any = ipaddress.ip_interface(ip.get("address"))
    except ValueError:
        address = ip.get("address")
    return (address, ip.get("gateway"), ip.get("interface"), ip.get("version"))


def _interface_identity(interface: Any) -> tuple[Any, Any]:
    if not isinstance(interface, dict):
        return (interface, None)
    return (interface.get("name"), interface.get("sandbox") or "")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def prev_result_problems(result: dict[str, Any], prev_result: dict[str, Any]) -> list[str]:
    """How a chained plugin's result fails to carry ``prevResult`` through (SPEC §5 "ADD Success").

    IPs must be the same list in the same order (runtimes take the pod IP
    from it); interfaces and routes of prevResult must come first, unchanged
    in name and sandbox (a plugin may append its own, or change a MAC); dns
    must be equal.
    """
    problems = []
    previous_ips = [_normal_ip(ip) for ip in _as_list(prev_result.get("ips")) if isinstance(ip, dict)]
    result_ips = [_normal_ip(ip) for ip in _as_list(result.get("ips")) if isinstance(ip, dict)]
    if previous_ips != result_ips:
        problems.append(
            f"ips differ from prevResult (order matters): prevResult {_as_list(prev_result.get('ips'))}, "
            f"result {_as_list(result.get('ips'))}"
        )
    previous_interfaces = [_interface_identity(item) for item in _as_list(prev_result.get("interfaces"))]
    result_interfaces = [_interface_identity(item) for item in _as_list(result.get("interfaces"))]
    if result_interfaces[: len(previous_interfaces)] != previous_interfaces:
        problems.append(
            f"interfaces of prevResult are not kept in front: prevResult {previous_interfaces}, "
            f"result {result_interfaces}"
        )
    previous_routes = _as_list(prev_result.get("routes"))
    if _as_list(result.get("routes"))[: len(previous_routes)] != previous_routes:
        problems.append(f"routes of prevResult are not kept: {previous_routes} vs {result.get('routes')}")
    if prev_result.get("dns", {}) != result.get("dns", {}):
        problems.append(f"dns changed: prevResult {prev_result.get('dns')}, result {result.get('dns')}")
    return problems
