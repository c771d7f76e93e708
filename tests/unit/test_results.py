"""prevResult in, result out: faithful per spec version, unknown keys kept."""

from __future__ import annotations

import copy

import pytest

from netconf.errors import InvalidConfig
from netconf.results import parse_result, render_result

# Shapes as the reference plugins print them (ptp 1.1.1), per version.
PTP_040 = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "veth0a1b2c3d", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/pod"},
    ],
    "ips": [
        {"version": "4", "interface": 1, "address": "10.244.0.5/24", "gateway": "10.244.0.1"},
        {"version": "6", "interface": 1, "address": "fd00:244::5/64", "gateway": "fd00:244::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.96.0.10"]},
}


def _validated(document):
    """The document after parse_result accepted it, as the ADD verb renders it."""
    parse_result(document)
    return document


def as_version(document, version):
    converted = copy.deepcopy(document)
    converted["cniVersion"] = version
    if version.startswith("1."):
        for ip in converted["ips"]:
            ip.pop("version")
    return converted


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_round_trip_is_identity_in_each_version(version):
    document = as_version(PTP_040, version)
    assert render_result(_validated(document), version) == document


def test_unknown_keys_and_ip_order_survive():
    document = as_version(PTP_040, "1.1.0")
    document["ips"].reverse()
    document["x-vendor"] = {"keep": True}
    document["interfaces"][1]["mtu"] = 1450
    document["routes"][0]["priority"] = 100
    rendered = render_result(_validated(document), "1.1.0")
    assert rendered == document


def test_downgrade_adds_version_and_drops_1_1_fields():
    document = as_version(PTP_040, "1.1.0")
    document["interfaces"][1]["mtu"] = 1450
    document["routes"][0]["table"] = 100
    rendered = render_result(_validated(document), "0.4.0")
    assert [ip["version"] for ip in rendered["ips"]] == ["4", "6"]
    assert "mtu" not in rendered["interfaces"][1] and "table" not in rendered["routes"][0]


def test_upgrade_drops_ip_version():
    original = copy.deepcopy(PTP_040)
    rendered = render_result(_validated(PTP_040), "1.0.0")
    assert all("version" not in ip for ip in rendered["ips"])
    assert PTP_040 == original, "render_result must not modify the prevResult it was given"


def test_pod_addresses_come_from_the_sandbox_interface():
    result = parse_result(PTP_040)
    assert [str(ip) for ip in result.pod_addresses("eth0")] == ["10.244.0.5", "fd00:244::5"]
    assert result.pod_addresses("eth1") == []


def test_results_without_interface_index_count_as_the_pods():
    result = parse_result({"ips": [{"address": "10.0.0.2/24"}]})
    assert [str(ip) for ip in result.pod_addresses("eth0")] == ["10.0.0.2"]


@pytest.mark.parametrize("bad", [{"ips": [{"address": "nope"}]}, {"ips": "x"}, {"interfaces": [{"mac": "x"}]}])
def test_invalid_prev_result_is_code_7(bad):
    with pytest.raises(InvalidConfig) as raised:
        parse_result(bad)
    assert raised.value.code == 7 and "prevResult" in raised.value.details


@pytest.mark.parametrize(
    "address, problem",
    [
        ("10.0.0.5", "no prefix length"),
        ("fd00:244::5", "no prefix length"),
        ("fe80::5%eth0/64", "scope id"),
        ("10.0.0.5/33", "prevResult.ips.0.address"),
        ("10.0.0.5/24\n", "prevResult.ips.0.address"),
        (" 10.0.0.5/24", "prevResult.ips.0.address"),
    ],
)
def test_ip_address_must_be_cidr_notation(address, problem):
    """SPEC.md: ``ips[].address`` is CIDR; libcni's net.ParseCIDR takes no bare address and no zone."""
    with pytest.raises(InvalidConfig) as raised:
        parse_result({"ips": [{"address": address}]})
    assert problem in raised.value.details


@pytest.mark.parametrize("address", ["10.0.0.5/32", "10.0.0.5/255.255.255.0", "fd00::5/128", "2001:db8::1/0"])
def test_cidr_forms_are_accepted(address):
    parse_result({"ips": [{"address": address}]})
