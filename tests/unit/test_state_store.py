"""State store semantics: atomic replace, lock bounds, loud corruption, safe permissions."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import stat

import pytest

from netconf.errors import LockTimeout, StateCorrupt
from netconf.state import Allocation, StateStore, utc_now


def allocation(container="c1", state="committed", network="n"):
    now = utc_now()
    return Allocation(
        network=network,
        container_id=container,
        ifname="eth0",
        netns="/run/netns/x",
        anycast=(ipaddress.ip_address("192.0.2.53"),),
        pod_ips=(ipaddress.ip_address("10.0.0.2"),),
        state=state,
        created_at=now,
        updated_at=now,
    )


def test_missing_file_reads_as_empty_and_directory_is_created_private(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    assert store.read().allocations == []
    with store.transaction() as transaction:
        transaction.put(allocation())
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600
    assert [item.container_id for item in store.read().allocations] == ["c1"]


def test_round_trip_keeps_every_field(tmp_path):
    store = StateStore(str(tmp_path))
    original = allocation()
    with store.transaction() as transaction:
        transaction.put(original)
    assert store.read().allocations == [original]


def test_unchanged_transaction_does_not_rewrite(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation())
    before = os.stat(store.path).st_ino
    with store.transaction() as transaction:
        transaction.get(("n", "c1", "eth0"))
        transaction.remove(("n", "absent", "eth0"))
    assert os.stat(store.path).st_ino == before


def test_exception_in_transaction_leaves_file_unchanged(tmp_path):
    store = StateStore(str(tmp_path))
    with store.transaction() as transaction:
        transaction.put(allocation())
    content = open(store.path, "rb").read()
    with pytest.raises(RuntimeError):
        with store.transaction() as transaction:
            transaction.remove(("n", "c1", "eth0"))
            raise RuntimeError("abort")
    assert open(store.path, "rb").read() == content


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{half", "not valid JSON"),
        (b'{"version": 2, "allocations": []}', "schema version 2"),
        (b"[]", "schema version"),
        (b'{"version": 1, "allocations": [{"network": "n"}]}', "does not match schema"),
    ],
)
def test_corrupt_or_unknown_version_is_an_error_and_never_overwritten(tmp_path, content, message):
    store = StateStore(str(tmp_path))
    with open(store.path, "wb") as handle:
        handle.write(content)
    with pytest.raises(StateCorrupt, match=message) as raised:
        with store.transaction() as transaction:
            transaction.put(allocation())
    assert raised.value.code == 5
    assert open(store.path, "rb").read() == content


def test_lock_wait_is_bounded(tmp_path):
    store = StateStore(str(tmp_path), lock_timeout=0.05)
    store.ensure_directory()
    holder = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(LockTimeout) as raised:
            with store.transaction():
                pass
        assert raised.value.code == 11
    finally:
        os.close(holder)
    with store.transaction() as transaction:  # released: works again
        transaction.put(allocation())


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
    (tmp_path / ".state.json.tmp").write_bytes(b"{garbage")
    with store.transaction() as transaction:
        transaction.put(allocation())
    assert len(store.read().allocations) == 1
