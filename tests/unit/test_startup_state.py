"""The state store's start-up work changes no result: same addresses, same records, same errors.

The per-exec state handling takes shortcuts (C address parsing and
formatting, a record encoder generated from the declarations instead of
pydantic-core's serializer, one strict validation pass before the lax one).
Each shortcut is checked here against the slow path it replaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest

from netconf import compile_schemas
from netconf.errors import StateCorrupt
from netconf.fields import format_ip_address, parse_ip_address
from netconf.records import validation_error_class
from netconf.state import StateStore
from netconf.values import (
    Allocation,
    AllocationFile,
    PodRef,
    encode_record,
    utc_now,
)

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


def key(number: int):
    return ("n", f"c{number:04d}", "eth0")


# --- encode_record against pydantic-core's serializer -----------------------------

# Whole-minute offsets: what an ISO 8601 / RFC 3339 timestamp can carry.
OFFSETS = [UTC, timezone(timedelta(0)), timezone(timedelta(hours=2)), timezone(timedelta(hours=-3, minutes=-30)),
           timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), timezone(timedelta(minutes=45)), None]


def random_address(rng: random.Random):
    kind = rng.randrange(4)
    if kind == 0:
        return ipaddress.IPv4Address(rng.randrange(1 << 32))
    if kind == 1:
        groups = [rng.choice([0, 0, rng.randrange(1 << 16)]) for _ in range(8)]
        return ipaddress.IPv6Address(int("".join(f"{group:04x}" for group in groups), 16))
    if kind == 2:
        return ipaddress.ip_address(rng.choice(TEXTS))
    return ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(rng.randrange(1 << 32))}")


def random_text(rng: random.Random, alphabet=string.ascii_letters + string.digits + "-._/ +%\"\\üé网\u2028\x7f"):
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24)))


def random_time(rng: random.Random) -> datetime:
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**9))
    if rng.random() < 0.5:
        moment = moment.replace(microsecond=rng.choice([rng.randrange(1, 10**6), 500000, 1, 999999]))
    zone = rng.choice(OFFSETS)
    return moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone)


def random_allocation(rng: random.Random) -> Allocation:
    def maybe():
        return None if rng.random() < 0.3 else random_text(rng)

    created = random_time(rng)
    return Allocation(
        network=random_text(rng),
        container_id=random_text(rng, string.hexdigits),
        ifname=rng.choice(["eth0", "net1", "e"]),
        netns=random_text(rng),
        pod=rng.choice([PodRef(), PodRef(namespace=maybe(), name=maybe(), uid=maybe())]),
        anycast=tuple(random_address(rng) for _ in range(rng.randrange(0, 5))),
        pod_ips=tuple(random_address(rng) for _ in range(rng.randrange(0, 3))),
        state=rng.choice(["pending", "committed"]),
        created_at=created,
        updated_at=rng.choice([created, random_time(rng)]),
    )


def test_encode_record_equals_the_serializer():
    rng = random.Random(7)
    allocations = [random_allocation(rng) for _ in range(3000)] + [allocation(number) for number in range(5)]
    for item in allocations:
        ours = json.loads(encode_record(item))
        theirs = json.loads(AllocationFile(version=2, allocation=item).dump_json(by_alias=True))
        assert ours == theirs, item


def test_encode_record_covers_every_declared_field():
    """The generated encoder writes every field of the declarations, by alias, and nothing else."""
    models = compile_schemas.models()

    def aliases(record_class):
        return {field.alias or name for name, field in models[record_class].model_fields.items()}

    document = json.loads(encode_record(allocation(1)))
    assert set(document) == aliases(AllocationFile)
    assert set(document["allocation"]) == aliases(Allocation)
    assert set(document["allocation"]["pod"]) == aliases(PodRef)


def test_encoded_records_validate_back_to_the_same_allocation():
    rng = random.Random(11)
    for item in [random_allocation(rng) for _ in range(500)]:
        raw = encode_record(item)
        assert raw.endswith(b"}\n")
        # Both the strict one-pass path and the lax path give the original back.
        assert AllocationFile.validate_json(raw, strict=True).allocation == item
        assert AllocationFile.validate(json.loads(raw)).allocation == item


# --- reading: strict one-pass and lax paths agree ---------------------------------


MODELS = compile_schemas.models()


def test_strict_pass_and_lax_path_agree(tmp_path):
    store = StateStore(str(tmp_path))
    originals = [allocation(number, state=("pending" if number % 7 == 0 else "committed")) for number in range(50)]
    with store.transaction() as transaction:
        for item in originals:
            transaction.put(item)
    assert StateStore(str(tmp_path)).read().allocations == originals
    for item in originals:
        raw = open(store.path_of(item.key), "rb").read()
        strict = AllocationFile.validate_json(raw, strict=True)
        lax = AllocationFile.validate(json.loads(raw))
        assert strict == lax
        assert strict.allocation == item == store.get(item.key)
        # ... and both are what the pydantic model the schema was compiled from makes of the bytes.
        model = MODELS[AllocationFile].model_validate_json(raw)
        assert model.model_dump() == strict.dump()


def test_store_sees_other_writers_and_validates_changed_bytes(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation(1))
    first, second = store.read(), store.read()
    assert first.allocations == second.allocations and first.allocations is not second.allocations
    # Another writer changes the directory: this store must see it.
    other = StateStore(str(tmp_path))
    with other.transaction() as transaction:
        transaction.put(allocation(2))
        transaction.put(transaction.get(key(1)).replace(state="pending"))
    assert [item.container_id for item in store.read().allocations] == ["c0001", "c0002"]
    assert store.get(key(1)).state == "pending"
    # Same length, different bytes: validated again (and refused here).
    path = store.path_of(key(2))
    raw = open(path, "rb").read()
    corrupt = raw.replace(b'"committed"', b'"committee"', 1)
    assert len(corrupt) == len(raw) and corrupt != raw
    with open(path, "wb") as handle:
        handle.write(corrupt)
    with pytest.raises(StateCorrupt, match="does not match schema"):
        store.get(key(2))
    document = store.read()
    assert "does not match schema" in document.unreadable[os.path.basename(path)].msg
    assert [item.key for item in document.allocations] == [key(1)]


def record_text(version: str) -> str:
    document = json.loads(encode_record(allocation(1)))
    text = json.dumps(document, indent=1)
    assert '"version": 2,' in text
    return text.replace('"version": 2,', f'"version": {version},', 1)


@pytest.mark.parametrize(
    "version, message",
    [
        ('"2"', "schema version '2'"),
        ("1", "schema version 1,"),
        ("3", "schema version 3,"),
        ("null", "schema version None"),
        # json: true == 1, so it reads as version 1 and is refused (and named as Python prints it).
        ("true", "schema version True"),
        ("false", "schema version False"),
        ("[2]", r"schema version \[2\]"),
        # json: 2.0 == 2 passes the version check, and the lax path takes 2.0 for 2.
        ("2.0", None),
    ],
)
def test_odd_version_values_in_a_record(tmp_path, version, message):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    text = record_text(version)
    with open(store.path_of(key(1)), "w") as handle:
        handle.write(text)
    if message is None:
        assert store.get(key(1)).container_id == "c0001"
        assert [item.key for item in store.read().allocations] == [key(1)]
    else:
        with pytest.raises(StateCorrupt, match=message) as raised:
            store.get(key(1))
        assert raised.value.code == 5 and store.path_of(key(1)) in raised.value.msg
        [error] = store.read().unreadable.values()
        assert re.search(message, error.msg)
        assert open(store.path_of(key(1))).read() == text


def test_missing_version_is_refused(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    document = json.loads(encode_record(allocation(1)))
    del document["version"]
    with open(store.path_of(key(1)), "w") as handle:
        json.dump(document, handle)
    with pytest.raises(StateCorrupt, match="schema version None"):
        store.get(key(1))


def test_lax_values_the_strict_pass_refuses_still_validate(tmp_path):
    """A timestamp as a number is valid lax input: the fallback path keeps accepting it."""
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation(1))
    path = store.path_of(key(1))
    data = json.loads(open(path, "rb").read())
    data["allocation"]["createdAt"] = 1700000000
    raw = json.dumps(data).encode()
    with pytest.raises(validation_error_class()):
        AllocationFile.validate_json(raw, strict=True)  # so the lax path is what accepts it below
    with open(path, "wb") as handle:
        handle.write(raw)
    record = StateStore(str(tmp_path)).get(key(1))
    assert record.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    [listed] = StateStore(str(tmp_path)).read().allocations
    assert listed == record


def test_python_mode_dump_keeps_address_objects():
    record = allocation(1)
    dumped = record.dump()
    assert isinstance(dumped["anycast"][0], ipaddress.IPv6Address)
    assert isinstance(dumped["pod_ips"][0], ipaddress.IPv4Address)
    assert isinstance(dumped["created_at"], datetime)
    by_alias = record.dump(mode="json", by_alias=True)
    assert by_alias["anycast"] == ["2001:db8:a::2", "192.0.2.2"]
    assert by_alias["podIPs"] == ["10.244.0.3"]
    assert json.loads(record.dump_json(by_alias=True))["anycast"] == ["2001:db8:a::2", "192.0.2.2"]
