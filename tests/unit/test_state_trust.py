"""The state store trusts only a directory that is its own: planted files, links and modes (issue 11, defects 3 and 4).

Each case builds a state directory another user could have tampered with and
checks that the store refuses it with a clear error (code 5), never follows a
link, never blocks on a special file, never deletes a file it did not write,
and leaves everything it found as it was.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import threading

import pytest

from cni_plugin.dispatch import run
from netconf.errors import IOFailure, LockTimeout, StateCorrupt
from netconf.state import StateStore
from netconf.values import Allocation, PodRef, utc_now

KEY = ("n", "c1", "eth0")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
# Everything below must answer at once; a FIFO opened without O_NONBLOCK would hang forever.
HANG_LIMIT = 10.0


def allocation(container="c1"):
    now = utc_now()
    return Allocation(
        network="n",
        container_id=container,
        ifname="eth0",
        netns="/run/netns/x",
        pod=PodRef(),
        anycast=(ipaddress.ip_address("192.0.2.53"),),
        pod_ips=(ipaddress.ip_address("10.0.0.2"),),
        state="committed",
        created_at=now,
        updated_at=now,
    )


def without_hanging(function, *args):
    """Run ``function`` in a thread; fail the test (not hang it) if it blocks."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    assert not thread.is_alive(), f"{function.__name__} blocked for {HANG_LIMIT}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def snapshot(directory) -> dict[str, tuple[int, bytes | str]]:
    """Every entry below ``directory``: its mode and its bytes (or link target)."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if os.path.islink(path):
                found[path] = (info.st_mode, os.readlink(path))
            elif os.path.isfile(path):
                found[path] = (info.st_mode, open(path, "rb").read())
            else:
                found[path] = (info.st_mode, b"")
    return found


def write_transaction(store):
    with store.transaction() as transaction:
        transaction.put(allocation())


# --- the directory and its ancestors ----------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_state_directory_others_can_write_is_refused(tmp_path, mode):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    before = snapshot(tmp_path)
    store = StateStore(str(state))
    for operation in (write_transaction, StateStore.read, StateStore.probe):
        with pytest.raises(IOFailure, match=rf"state directory {state} has mode {mode:04o}") as raised:
            operation(store)
        assert "chmod go-w" in raised.value.details
    assert snapshot(tmp_path) == before


def test_parent_others_can_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    store = StateStore(str(shared / "state"))
    with pytest.raises(IOFailure, match="which others can write"):
        write_transaction(store)
    assert not (shared / "state").exists(), "the store created a directory below an untrusted parent"

    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename or remove what is ours
    write_transaction(store)
    assert store.get(KEY) == allocation().replace(created_at=store.get(KEY).created_at, updated_at=store.get(KEY).updated_at)


@needs_root
def test_state_directory_owned_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(IOFailure, match="owned by uid 65534"):
        write_transaction(StateStore(str(state)))
    assert os.listdir(state) == []


@needs_root
def test_parent_owned_by_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(IOFailure, match=f"below {theirs}, owned by uid 65534"):
        write_transaction(StateStore(str(theirs / "state")))
    assert os.listdir(theirs) == []


def test_state_directory_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, tmp_path / "state")
    store = StateStore(str(tmp_path / "state"))
    for operation in (write_transaction, StateStore.read, StateStore.get):
        args = (KEY,) if operation is StateStore.get else ()
        with pytest.raises(IOFailure, match="symbolic link"):
            operation(store, *args)
    assert os.listdir(elsewhere) == []


def test_symlinked_ancestor_is_followed_and_judged_where_it_leads(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    os.symlink(real, tmp_path / "run")  # like /var/run -> /run
    store = StateStore(str(tmp_path / "run" / "flock"))
    write_transaction(store)
    assert os.listdir(real / "flock" / "allocations") == ["n+c1+eth0.json"]


def test_allocations_directory_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.symlink(elsewhere, state / "allocations")
    with pytest.raises(IOFailure, match=f"{state}/allocations.*symbolic link|symbolic link"):
        write_transaction(StateStore(str(state)))
    assert os.listdir(elsewhere) == []


# --- the lock ---------------------------------------------------------------------------------


def test_lock_others_can_open_is_refused(tmp_path):
    """Anyone who can open state.lock can flock it and stall every pod start."""
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    with open(store.lock_path, "w"):
        pass
    os.chmod(store.lock_path, 0o644)
    with pytest.raises(IOFailure, match="lock file .* has mode 0644") as raised:
        write_transaction(store)
    assert "chmod 600" in raised.value.details
    assert os.listdir(store.allocations_dir) == []


def test_lock_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    store = StateStore(str(tmp_path))
    store.ensure_directory()
    os.mkfifo(store.lock_path, 0o600)
    with pytest.raises(IOFailure, match="not a regular file"):
        without_hanging(write_transaction, store)
    with pytest.raises(IOFailure, match="not a regular file"):
        without_hanging(store.probe)


# --- records -------------------------------------------------------------------------------


def test_symlinked_record_is_refused_and_its_target_never_shown(tmp_path):
    secret = tmp_path / "secret-target-name"
    secret.write_bytes(b"root:x:0:0")
    store = StateStore(str(tmp_path / "state"))
    store.ensure_directory()
    os.symlink(secret, store.path_of(KEY))

    with pytest.raises(StateCorrupt, match="is a symlink") as raised:
        store.get(KEY)
    [error] = store.read().unreadable.values()
    for refusal in (raised.value, error):
        text = json.dumps(refusal.to_json("1.1.0"))
        assert "secret-target-name" not in text and "root:x" not in text, text
    with pytest.raises(StateCorrupt):
        write_transaction(store)
    assert os.readlink(store.path_of(KEY)) == str(secret)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_record_that_is_no_regular_file_is_refused_without_hanging(tmp_path, kind):
    store = StateStore(str(tmp_path / "state"))
    store.ensure_directory()
    path = store.path_of(KEY)
    os.mkfifo(path) if kind == "fifo" else os.mkdir(path)

    with pytest.raises(StateCorrupt, match="not a regular file|cannot read"):
        without_hanging(store.get, KEY)
    document = without_hanging(store.read)
    assert list(document.unreadable) == [os.path.basename(path)]
    with pytest.raises((StateCorrupt, IOFailure)):
        without_hanging(write_transaction, store)


def test_oversized_record_is_refused_before_it_is_read_whole(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    store.ensure_directory()
    with open(store.path_of(KEY), "wb") as handle:
        handle.truncate(64 << 20)  # sparse: 64 MiB of nothing
    with pytest.raises(StateCorrupt, match="far larger than a record"):
        store.get(KEY)


def test_migration_never_deletes_files_it_did_not_write(tmp_path):
    """flock 0.1's state.json migration removes stale *records*, not every *.json it finds."""
    store = StateStore(str(tmp_path / "state"))
    store.ensure_directory()
    foreign = {"notes.json": b'{"mine": true}', "n+other+eth0.json": b"{half"}
    for name, content in foreign.items():
        with open(os.path.join(store.allocations_dir, name), "wb") as handle:
            handle.write(content)
    with store.transaction() as transaction:
        transaction.put(allocation("stale"))  # a record 0.1 never saw: the document wins
    with open(store.legacy_path, "w") as handle:
        json.dump({"version": 1, "allocations": []}, handle)

    with store.transaction():
        pass

    assert sorted(os.listdir(store.allocations_dir)) == sorted(foreign)
    for name, content in foreign.items():
        assert open(os.path.join(store.allocations_dir, name), "rb").read() == content


def test_legacy_state_file_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"version": 1, "allocations": []}))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.symlink(target, state / "state.json")
    with pytest.raises(StateCorrupt, match="is a symlink"):
        write_transaction(StateStore(str(state)))
    assert os.path.islink(state / "state.json")


def test_fifty_thousand_junk_files_are_decoded_once(tmp_path):
    """A pass of the reconciler over junk costs one stat per file after the first read."""
    store = StateStore(str(tmp_path / "state"))
    store.ensure_directory()
    for index in range(50_000):
        with open(os.path.join(store.allocations_dir, f"junk{index}.json"), "wb") as handle:
            handle.write(b"{")
    write_transaction(store)
    first = store.read()
    assert len(first.unreadable) == 50_000 and [item.key for item in first.allocations] == [KEY]
    decoded = []
    original = store._decode
    store._decode = lambda *args: decoded.append(args) or original(*args)
    second = store.read()
    assert decoded == [] and len(second.unreadable) == 50_000


# --- through the plugin: the error a runtime sees -------------------------------------------


def test_plugin_answers_an_untrusted_state_directory_with_code_5_and_changes_nothing(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    config = {
        "cniVersion": "1.1.0",
        "name": "n",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24"], "stateDir": str(shared / "state")},
    }
    environ = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}
    stdout = io.StringIO()
    assert run(environ, io.BytesIO(json.dumps(config).encode()), stdout) == 1
    error = json.loads(stdout.getvalue())
    assert error["code"] == 50 and "others can write" in error["msg"]
    environ = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": ""}
    stdout = io.StringIO()
    assert run(environ, io.BytesIO(json.dumps(config).encode()), stdout) == 1
    assert json.loads(stdout.getvalue())["code"] == 5
    assert os.listdir(shared) == []


# --- container-scoped transactions (what the verbs use) -------------------------------------


def test_container_lock_serialises_one_pod_and_lets_other_pods_write(tmp_path):
    """One pod's execs wait for each other; another pod's exec writes meanwhile."""
    holder = StateStore(str(tmp_path / "state"), lock_timeout=5)
    entered, leave = threading.Event(), threading.Event()

    def hold():
        with holder.transaction("c1") as transaction:
            transaction.put(allocation("c1"))
            transaction.flush()
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert entered.wait(10)
    try:
        other = StateStore(str(tmp_path / "state"), lock_timeout=0.2)
        with pytest.raises(LockTimeout, match="container c1"):
            with other.transaction("c1"):
                pass
        with other.transaction("c2") as transaction:  # not blocked by c1's exec
            transaction.put(allocation("c2"))
        assert other.get(("n", "c2", "eth0")) is not None
    finally:
        leave.set()
        thread.join(10)
    with StateStore(str(tmp_path / "state"), lock_timeout=0.2).transaction("c1") as transaction:
        assert transaction.get(KEY) is not None


def test_a_state_directory_without_allocations_yet_reads_as_empty(tmp_path):
    """What a node looks like before its first pod: the DaemonSet's hostPath made the directory, no plugin ran."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    store = StateStore(str(state))
    document = store.read()
    assert document.allocations == [] and document.unreadable == {}
    assert store.get(KEY) is None
    assert os.listdir(state) == [], "a reader created something"
