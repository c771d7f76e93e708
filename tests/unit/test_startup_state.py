"""The state store's start-up work changes no result: same addresses, same bytes, same errors.

Issue 4 made the per-exec state handling cheaper (C address parsing and
formatting, one-pass validation, no second validation of bytes already
known). Each shortcut is checked here against the slow path it replaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random

import pytest

from netconf.errors import StateCorrupt
from netconf.state import Allocation, PodRef, StateDocument, StateStore, format_ip_address, parse_ip_address, utc_now

TEXTS = [
    "192.0.2.53", "0.0.0.0", "255.255.255.255", "10.0.0.1",
    "2001:db8:a::53", "::", "::1", "fe80::1", "2001:DB8::A", "2001:0db8:0000:0000:0000:0000:0000:0001",
    "::ffff:192.0.2.1", "::192.0.2.1", "64:ff9b::192.0.2.1", "1:0:0:1::1", "1::1:0:0:1", "0:0:1::",
    "fe80::1%eth0", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
]
BAD = [
    "", " ", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", "1.2.3.4 ", "::ffff:01.2.3.4", "1:2:3:4:5:6:7:8:9",
    "1::2::3", "12345::", "g::1", "1.2.3.4/32", "١.٢.٣.٤", "1.2.3.4\x00", "::1%", "1:2:3:4:5:6:7::8", ":1::",
]


@pytest.mark.parametrize("text", TEXTS)
def test_parse_equals_ipaddress(text):
    ours = parse_ip_address(text)
    theirs = ipaddress.ip_address(text)
    assert ours == theirs and type(ours) is type(theirs)
    assert getattr(ours, "scope_id", None) == getattr(theirs, "scope_id", None)


@pytest.mark.parametrize("text", BAD)
def test_parse_refuses_what_ipaddress_refuses(text):
    with pytest.raises(ValueError):
        ipaddress.ip_address(text)
    with pytest.raises(ValueError):
        parse_ip_address(text)


@pytest.mark.parametrize("value", [3232235777, 2**100, b"\xc0\x00\x02\x35", bytes(16), ipaddress.ip_address("192.0.2.1")])
def test_parse_non_text_like_ipaddress(value):
    assert parse_ip_address(value) == ipaddress.ip_address(value)


def test_format_equals_str_for_random_and_special_addresses():
    rng = random.Random(4)
    addresses = [ipaddress.ip_address(text) for text in TEXTS]
    for _ in range(20000):
        # Many zero groups, so that run-of-zeros compression is exercised.
        groups = [rng.choice([0, 0, 0, rng.randrange(1 << 16)]) for _ in range(8)]
        addresses.append(ipaddress.IPv6Address(int("".join(f"{group:04x}" for group in groups), 16)))
        addresses.append(ipaddress.IPv4Address(rng.randrange(1 << 32)))
    for address in addresses:
        assert format_ip_address(address) == str(address)


def allocation(number: int, state: str = "committed") -> Allocation:
    now = utc_now()
    return Allocation(
        network="n",
        container_id=f"c{number:04d}",
        ifname="eth0",
        netns=f"/run/netns/p{number}",
        pod=PodRef(namespace="ns", name=f"p{number}"),
        anycast=(ipaddress.ip_address(f"2001:db8:a::{number + 1:x}"), ipaddress.ip_address(f"192.0.2.{number % 250 + 1}")),
        pod_ips=(ipaddress.ip_address(f"10.244.{number // 250}.{number % 250 + 2}"),),
        state=state,
        created_at=now,
        updated_at=now,
    )


def test_round_trip_bytes_are_stable(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        for number in range(50):
            transaction.put(allocation(number))
    raw = open(store.path, "rb").read()
    document = StateStore(str(tmp_path)).read()
    assert document.model_dump_json(by_alias=True, indent=1).encode() + b"\n" == raw
    # The one-pass strict validation and the original lax path agree.
    assert document == StateDocument.model_validate(json.loads(raw))


def test_known_bytes_are_not_validated_again_but_changed_bytes_are(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation(1))
    first, second = store.read(), store.read()
    assert first == second and first.allocations is not second.allocations
    # Another writer changes the file: this store must see it.
    other = StateStore(str(tmp_path))
    with other.transaction() as transaction:
        transaction.put(allocation(2))
    assert [item.container_id for item in store.read().allocations] == ["c0001", "c0002"]
    # Same length, different bytes: validated again (and refused here).
    raw = open(store.path, "rb").read()
    corrupt = raw.replace(b'"committed"', b'"committee"', 1)
    assert len(corrupt) == len(raw)
    with open(store.path, "wb") as handle:
        handle.write(corrupt)
    with pytest.raises(StateCorrupt, match="does not match schema"):
        store.read()


@pytest.mark.parametrize(
    "version, message",
    [('"1"', "schema version '1'"), ("2", "schema version 2"), ("true", None), ("1.0", None)],
)
def test_version_field_is_judged_as_before(tmp_path, version, message):
    """What the lax json.loads path decided about odd versions, the one-pass path must not change."""
    store = StateStore(str(tmp_path))
    with open(store.path, "w") as handle:
        handle.write(f'{{"version": {version}, "allocations": []}}')
    if message is None:
        # json: True == 1 and 1.0 == 1 pass the version check, as they always did.
        assert store.read().allocations == []
    else:
        with pytest.raises(StateCorrupt, match=message):
            store.read()


def test_lax_values_the_strict_pass_refuses_still_validate(tmp_path):
    """A timestamp as a number is valid lax input: the fallback path keeps accepting it."""
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation(1))
    data = json.loads(open(store.path, "rb").read())
    data["allocations"][0]["createdAt"] = 1700000000
    with open(store.path, "w") as handle:
        json.dump(data, handle)
    [record] = StateStore(str(tmp_path)).read().allocations
    assert record.created_at.year == 2023


def test_python_mode_dump_keeps_address_objects():
    dumped = allocation(1).model_dump()
    assert isinstance(dumped["anycast"][0], ipaddress.IPv6Address)
    assert json.loads(allocation(1).model_dump_json(by_alias=True))["anycast"] == ["2001:db8:a::2", "192.0.2.2"]
    assert os.sep  # keep os imported for tmp path helpers above
