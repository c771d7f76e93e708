"""State store semantics: one file per attachment, atomic replace, lock bounds, loud corruption, safe permissions."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import stat

import pytest

from netconf.errors import LockTimeout, StateCorrupt
from netconf.state import StateStore
from netconf.values import Allocation, PodRef, utc_now

KEY = ("n", "c1", "eth0")
OTHER = ("n", "c2", "eth0")


def allocation(container="c1", state="committed", network="n", anycast="192.0.2.53", ifname="eth0"):
    now = utc_now()
    return Allocation(
        network=network,
        container_id=container,
        ifname=ifname,
        netns="/run/netns/x",
        pod=PodRef(namespace="ns", name=f"pod-{container}", uid=f"uid-{container}"),
        anycast=(ipaddress.ip_address(anycast), ipaddress.ip_address("2001:db8:a::53")),
        pod_ips=(ipaddress.ip_address("10.0.0.2"),),
        state=state,
        created_at=now,
        updated_at=now,
    )


def listing(store):
    """Every entry of the allocations directory (dot files too) with its bytes."""
    if not os.path.isdir(store.allocations_dir):
        return {}
    directory = store.allocations_dir
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def read_refusal(store, key, message=""):
    """The error ``read()`` reports for ``key``'s record; the read itself does not fail."""
    document = store.read()
    error = document.unreadable[os.path.basename(store.path_of(key))]
    assert isinstance(error, StateCorrupt) and re.search(message, error.msg), error.msg
    assert key not in [item.key for item in document.allocations]
    return error


def plant(store, key, content: bytes):
    store.ensure_directory()
    with open(store.path_of(key), "wb") as handle:
        handle.write(content)


# --- layout, permissions, round trip --------------------------------------------


def test_missing_directory_reads_as_empty_and_directories_are_created_private(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    assert store.read().allocations == []
    assert store.get(KEY) is None
    assert not (tmp_path / "state").exists(), "a reader created the state directory"
    with store.transaction() as transaction:
        transaction.put(allocation())
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.allocations_dir).st_mode) == 0o700
    assert os.path.dirname(store.allocations_dir) == store.state_dir
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path_of(KEY)).st_mode) == 0o600
    assert [item.container_id for item in store.read().allocations] == ["c1"]


def test_directories_are_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        store = StateStore(str(tmp_path / "a" / "state"))
        with store.transaction() as transaction:
            transaction.put(allocation())
    finally:
        os.umask(old)
    for directory in (store.state_dir, store.allocations_dir):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path_of(KEY)).st_mode) == 0o600


def test_one_file_per_attachment(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
        transaction.put(allocation("c2"))
        transaction.put(allocation("c1", ifname="net1"))
    assert sorted(os.listdir(store.allocations_dir)) == ["n+c1+eth0.json", "n+c1+net1.json", "n+c2+eth0.json"]
    for name in os.listdir(store.allocations_dir):
        document = json.loads(open(os.path.join(store.allocations_dir, name), "rb").read())
        assert document["version"] == 2
        assert set(document) == {"version", "allocation"}
        record = document["allocation"]
        assert "+".join((record["network"], record["containerID"], record["ifname"])) + ".json" == name
    assert not os.path.exists(store.legacy_path), "the v1 single document must not be written any more"


def test_round_trip_keeps_every_field(tmp_path):
    store = StateStore(str(tmp_path))
    originals = [allocation("c2", state="pending"), allocation("c1"), allocation("c3", anycast="192.0.2.54")]
    with store.transaction() as transaction:
        for original in originals:
            transaction.put(original)
    fresh = StateStore(str(tmp_path))
    assert fresh.read().allocations == sorted(originals, key=lambda item: item.key)
    for original in originals:
        assert fresh.get(original.key) == original
    with fresh.transaction() as transaction:
        assert transaction.get(("n", "c3", "eth0")) == originals[2]


def test_remove_deletes_only_that_record(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
        transaction.put(allocation("c2"))
    other_bytes = open(store.path_of(OTHER), "rb").read()
    with store.transaction() as transaction:
        transaction.remove(KEY)
        assert transaction.get(KEY) is None
    assert not os.path.exists(store.path_of(KEY))
    assert store.get(KEY) is None
    assert open(store.path_of(OTHER), "rb").read() == other_bytes
    assert [item.key for item in store.read().allocations] == [OTHER]


def test_unchanged_transaction_does_not_rewrite(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation())
    before = os.stat(store.path_of(KEY))
    entries = listing(store)
    with store.transaction() as transaction:
        transaction.get(KEY)
        transaction.remove(("n", "absent", "eth0"))
        assert transaction.changes == {}
    after = os.stat(store.path_of(KEY))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert listing(store) == entries, "an unchanged transaction created or removed files"


def test_a_transaction_rewrites_only_the_records_it_changed(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
        transaction.put(allocation("c2"))
    untouched = os.stat(store.path_of(OTHER)).st_ino
    changed = os.stat(store.path_of(KEY)).st_ino
    with store.transaction() as transaction:
        transaction.put(transaction.get(KEY).replace(state="pending"))
    assert os.stat(store.path_of(OTHER)).st_ino == untouched
    assert os.stat(store.path_of(KEY)).st_ino != changed
    assert store.get(KEY).state == "pending"


def test_exception_in_transaction_leaves_files_unchanged(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation())
    entries = listing(store)
    with pytest.raises(RuntimeError):
        with store.transaction() as transaction:
            transaction.remove(KEY)
            transaction.put(allocation("c2"))
            raise RuntimeError("abort")
    assert listing(store) == entries
    assert store.get(OTHER) is None


# --- corruption ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{half", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"version": 1, "allocations": []}', "schema version 1"),
        (b'{"version": 3, "allocation": {}}', "schema version 3"),
        (b"[]", "schema version"),
        (b'{"version": 2, "allocation": {"network": "n"}}', "does not match schema"),
        (b'{"version": 2, "allocations": []}', "does not match schema"),
    ],
)
def test_corrupt_or_unknown_version_record_is_an_error_and_never_overwritten(tmp_path, content, message):
    store = StateStore(str(tmp_path))
    plant(store, KEY, content)
    path = store.path_of(KEY)

    def check(error):
        assert error.code == 5
        assert path in error.msg

    with pytest.raises(StateCorrupt, match=message) as raised:
        store.get(KEY)
    check(raised.value)
    # GC and the reconciler read every record: this one is reported, not fatal.
    check(read_refusal(store, KEY, message))
    # What the verbs do with their own attachment: ADD reads before it puts, DEL removes.
    with pytest.raises(StateCorrupt, match=message) as raised:
        with store.transaction() as transaction:
            transaction.get(KEY)
            transaction.put(allocation())
    check(raised.value)
    with pytest.raises(StateCorrupt, match=message) as raised:
        with store.transaction() as transaction:
            transaction.remove(KEY)
    check(raised.value)
    assert open(path, "rb").read() == content
    assert os.listdir(store.allocations_dir) == [os.path.basename(path)]

    # Corruption is isolated per record: another attachment still works.
    with store.transaction() as transaction:
        assert transaction.get(OTHER) is None
        transaction.put(allocation("c2"))
    assert store.get(OTHER).container_id == "c2"
    assert open(path, "rb").read() == content


def test_get_reads_only_its_own_record(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
    plant(store, OTHER, b"{corrupt")

    assert store.get(KEY).container_id == "c1"
    assert store.get(("n", "absent", "eth0")) is None
    with store.transaction() as transaction:
        record = transaction.get(KEY)
        transaction.put(record.replace(state="pending"))
        transaction.remove(("n", "absent", "eth0"))
    assert store.get(KEY).state == "pending"
    with store.transaction() as transaction:
        transaction.remove(KEY)
    assert store.get(KEY) is None
    assert open(store.path_of(OTHER), "rb").read() == b"{corrupt"
    assert store.path_of(OTHER) in read_refusal(store, OTHER).msg


def test_record_renamed_by_hand_is_corrupt(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
    content = open(store.path_of(KEY), "rb").read()
    os.rename(store.path_of(KEY), store.path_of(OTHER))

    error = read_refusal(store, OTHER, "not of its file name")
    assert error.code == 5
    assert store.path_of(OTHER) in error.msg
    with pytest.raises(StateCorrupt) as raised:
        store.get(OTHER)
    assert store.path_of(OTHER) in raised.value.msg
    with pytest.raises(StateCorrupt):
        with store.transaction() as transaction:
            transaction.remove(OTHER)
    assert open(store.path_of(OTHER), "rb").read() == content
    assert os.listdir(store.allocations_dir) == [os.path.basename(store.path_of(OTHER))]


# --- file names ------------------------------------------------------------------

ODD_KEYS = [
    ("a/b", "c1", "eth0"),
    ("../../etc", "c1", "eth0"),
    ("x+y", "c1", "eth0"),
    ("x", "y+c1", "eth0"),
    (".hidden", "c1", "eth0"),
    ("..", "c1", "eth0"),
    ("netz-ü", "c1", "eth0"),
    ("网络", "c1", "eth0"),
    ("%41", "c1", "eth0"),
    ("A", "c1", "eth0"),
    ("sp ace", "c1", "eth0"),
    ("n.x", "c1", "eth0"),
]


@pytest.mark.parametrize("key", ODD_KEYS, ids=[repr(key[0] + "|" + key[1]) for key in ODD_KEYS])
def test_record_file_name_is_one_safe_name_that_round_trips(tmp_path, key):
    store = StateStore(str(tmp_path / "state"))
    record = allocation(key[1], network=key[0], ifname=key[2])
    with store.transaction() as transaction:
        transaction.put(record)
    path = store.path_of(key)
    name = os.path.basename(path)
    assert os.path.dirname(path) == store.allocations_dir
    assert os.listdir(store.allocations_dir) == [name]
    assert sorted(os.listdir(store.state_dir)) == ["allocations", "state.lock"]
    assert re.fullmatch(r"[A-Za-z0-9_%+-][A-Za-z0-9_.%+-]*\.json", name), name
    assert name.count("+") == 2
    assert store.get(key) == record
    assert StateStore(store.state_dir).read().allocations == [record]


def test_different_keys_never_share_a_file(tmp_path):
    store = StateStore(str(tmp_path))
    records = [allocation(key[1], network=key[0], ifname=key[2]) for key in ODD_KEYS]
    records.append(allocation("c1+eth0", network="x", ifname="eth0"))
    records.append(allocation("c1", network="x+c1", ifname="eth0"))
    with store.transaction() as transaction:
        for record in records:
            transaction.put(record)
    assert len(set(map(store.path_of, (record.key for record in records)))) == len(records)
    assert len(os.listdir(store.allocations_dir)) == len(records)
    assert store.read().allocations == sorted(records, key=lambda item: item.key)


# --- lock and temp files -----------------------------------------------------------


def test_lock_wait_is_bounded(tmp_path):
    store = StateStore(str(tmp_path), lock_timeout=0.05)
    store.ensure_directory()
    holder = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(LockTimeout) as raised:
            with store.transaction() as transaction:
                transaction.put(allocation())
        assert raised.value.code == 11
        assert store.get(KEY) is None
    finally:
        os.close(holder)
    with store.transaction() as transaction:  # released: works again
        transaction.put(allocation())
    assert store.get(KEY) is not None


def test_lock_path_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.symlink(target, state_dir / "state.lock")
    store = StateStore(str(state_dir))
    with pytest.raises(Exception) as raised:
        with store.transaction():
            pass
    assert getattr(raised.value, "code", None) == 5
    assert not target.exists()


def test_leftover_temp_file_from_a_killed_writer_is_harmless(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    temp = os.path.join(store.allocations_dir, ".record.tmp")  # the writers' one temp file
    with open(temp, "wb") as handle:
        handle.write(b"{garbage")
    with open(os.path.join(store.allocations_dir, ".other.json"), "wb") as handle:
        handle.write(b"{garbage")
    assert store.read().allocations == []
    assert store.get(KEY) is None
    with store.transaction() as transaction:
        transaction.put(allocation())
    assert [item.key for item in store.read().allocations] == [KEY]
    assert store.get(KEY).container_id == "c1"
    # The next writer reused the temp file instead of leaving another one behind.
    assert sorted(os.listdir(store.allocations_dir)) == [".other.json", os.path.basename(store.path_of(KEY))]


# --- flock 0.1's state.json ----------------------------------------------------------


def legacy_entry(container, anycast="192.0.2.53", network="n"):
    return {
        "network": network,
        "containerID": container,
        "ifname": "eth0",
        "netns": f"/run/netns/{container}",
        "pod": {"namespace": "ns", "name": f"pod-{container}", "uid": None},
        "anycast": [anycast],
        "podIPs": ["10.0.0.2"],
        "state": "committed",
        "createdAt": "2025-06-01T12:00:00Z",
        "updatedAt": "2025-06-01T12:00:00.250000Z",
    }


def write_legacy(store, *entries, version=1):
    os.makedirs(store.state_dir, exist_ok=True)
    raw = json.dumps({"version": version, "allocations": list(entries)}, indent=1).encode()
    with open(store.legacy_path, "wb") as handle:
        handle.write(raw)
    return raw


def test_legacy_state_is_read_before_migration(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    write_legacy(store, legacy_entry("c2"), legacy_entry("c1", anycast="192.0.2.54"))

    document = store.read()
    assert [item.key for item in document.allocations] == [KEY, OTHER]
    assert document.allocations[0].anycast == (ipaddress.ip_address("192.0.2.54"),)
    assert document.allocations[0].updated_at.microsecond == 250000
    assert store.get(OTHER).netns == "/run/netns/c2"
    assert store.get(("n", "absent", "eth0")) is None
    # Readers never migrate.
    assert os.path.exists(store.legacy_path)
    assert not os.path.exists(store.allocations_dir)


def test_first_transaction_moves_legacy_allocations_into_record_files(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    raw = write_legacy(store, legacy_entry("c1"), legacy_entry("c2"))
    before = store.read().allocations

    with store.transaction():
        pass  # even a transaction that changes nothing migrates

    assert not os.path.exists(store.legacy_path)
    assert open(store.legacy_path + ".v1", "rb").read() == raw
    assert sorted(os.listdir(store.allocations_dir)) == ["n+c1+eth0.json", "n+c2+eth0.json"]
    assert store.read().allocations == before
    assert store.get(KEY) == before[0]
    # The kept v1 file is not read any more: a removal sticks.
    with store.transaction() as transaction:
        transaction.remove(KEY)
    assert [item.key for item in store.read().allocations] == [OTHER]
    assert store.get(KEY) is None


def test_migration_happens_before_the_transaction_reads(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    write_legacy(store, legacy_entry("c1"), legacy_entry("c2"))
    with store.transaction() as transaction:
        record = transaction.get(KEY)
        assert record is not None and record.netns == "/run/netns/c1"
        transaction.put(record.replace(state="pending"))
    assert store.get(KEY).state == "pending"
    assert store.get(OTHER).state == "committed"


def test_legacy_document_written_after_records_is_the_truth(tmp_path):
    """Downgrade to 0.1 (which writes only state.json) and upgrade again: the document wins whole."""
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as transaction:
        transaction.put(allocation("c1", anycast="198.51.100.1"))
        transaction.put(allocation("gone"))  # deleted while 0.1 ran
    write_legacy(store, legacy_entry("c1", anycast="192.0.2.99"), legacy_entry("c2"))

    assert str(store.get(KEY).anycast[0]) == "192.0.2.99"
    assert store.get(("n", "gone", "eth0")) is None
    assert [item.container_id for item in store.read().allocations] == ["c1", "c2"]

    with store.transaction():
        pass
    assert not os.path.exists(store.legacy_path)
    assert sorted(os.listdir(store.allocations_dir)) == ["n+c1+eth0.json", "n+c2+eth0.json"]
    assert str(store.get(KEY).anycast[0]) == "192.0.2.99"
    assert store.get(OTHER).netns == "/run/netns/c2"


def test_put_never_replaces_a_corrupt_record_blindly(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    with open(store.path_of(KEY), "wb") as handle:
        handle.write(b"{half")
    with pytest.raises(StateCorrupt):
        with store.transaction() as transaction:
            transaction.put(allocation("c1"))
    assert open(store.path_of(KEY), "rb").read() == b"{half"


def test_status_probe_ignores_a_corrupt_record_of_one_attachment(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    with open(store.path_of(KEY), "wb") as handle:
        handle.write(b"{half")
    store.probe()  # one pod's broken record must not refuse every new pod
    read_refusal(store, KEY)


def test_key_too_long_for_a_file_name_gets_a_hashed_name(tmp_path):
    store = StateStore(str(tmp_path))
    long_key = ("n" * 300, "c1", "eth0")
    with store.transaction() as transaction:
        transaction.put(allocation("c1", network="n" * 300))
    [name] = os.listdir(store.allocations_dir)
    assert name.startswith("~") and len(name) < 255
    assert store.get(long_key).network == "n" * 300
    assert [item.key for item in store.read().allocations] == [long_key]


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "allocations": [',
        b'{"version": 2, "allocations": []}',
        b'{"version": 1, "allocations": [{"network": "n"}]}',
        b"[]",
    ],
    ids=["truncated", "wrong version", "bad allocation", "not an object"],
)
def test_corrupt_legacy_file_is_an_error_and_left_untouched(tmp_path, content):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as transaction:
        transaction.put(allocation("c1"))
    record_bytes = open(store.path_of(KEY), "rb").read()
    with open(store.legacy_path, "wb") as handle:
        handle.write(content)

    with pytest.raises(StateCorrupt) as raised:
        store.read()
    assert raised.value.code == 5
    assert store.legacy_path in raised.value.msg
    with pytest.raises(StateCorrupt) as raised:
        with store.transaction() as transaction:
            transaction.put(allocation("c2"))
    assert store.legacy_path in raised.value.msg
    with pytest.raises(StateCorrupt):
        store.get(OTHER)  # no record file: the legacy document must be consulted

    assert open(store.legacy_path, "rb").read() == content
    assert not os.path.exists(store.legacy_path + ".v1")
    assert os.listdir(store.allocations_dir) == [os.path.basename(store.path_of(KEY))]
    assert open(store.path_of(KEY), "rb").read() == record_bytes
