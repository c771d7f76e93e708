"""Many plugin processes at once, and plugins killed mid-ADD: every state record stays whole.

The prevResult is synthetic (what ptp would print) so the test measures our
locking and crash behaviour, not the main plugin's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from lab.cni import Invocation
from netconf.state import StateStore

ANYCAST = "192.0.2.53,2001:db8:a::53"


def prev_result(netns: str) -> dict:
    return {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": netns}],
        "ips": [{"address": "10.244.0.5/24", "interface": 0}, {"address": "fd00:244::5/64", "interface": 0}],
    }


def config(state_dir: str, netns: str | None, **extra) -> bytes:
    document = {
        "cniVersion": "1.1.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24", "2001:db8:a::/64"], "stateDir": state_dir, "lockTimeout": 60},
        **extra,
    }
    if netns is not None:
        document["prevResult"] = prev_result(netns)
    return json.dumps(document).encode()


def start(binary, command, container, netns, stdin, host):
    invocation = Invocation(command=command, container_id=container, netns=netns, args=f"FLOCK_ANYCAST={ANYCAST}")
    process = subprocess.Popen(
        host.command([binary]), env=invocation.environ(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdin.write(stdin)
    process.stdin.close()
    return process


def lo_anycast(namespace) -> set[str]:
    with namespace.iproute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        found = {message.get("IFA_ADDRESS") for message in ipr.get_addr(index=index)}
    return found & set(ANYCAST.split(","))


def record_files(state_dir: str) -> list[str]:
    """Names of the record files (not writers' dot temp files) in the allocations directory."""
    try:
        names = os.listdir(StateStore(state_dir).allocations_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not name.startswith(".") and name.endswith(".json"))


class StateSampler(threading.Thread):
    """Reads every record continuously while writers run, without the lock; records any bad read.

    ``StateStore.read()`` lists the allocations directory and decodes each
    non-dot ``.json`` file as the reconciler does; a record removed between
    the listing and the open is skipped there, so any exception at all is a
    reader seeing a torn, half-written or misnamed record.
    """

    def __init__(self, state_dir: str) -> None:
        super().__init__(daemon=True)
        self.store = StateStore(state_dir)
        self.samples = 0
        self.most_records = 0
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                allocations = self.store.read().allocations
                self.samples += 1
                self.most_records = max(self.most_records, len(allocations))
                keys = [allocation.key for allocation in allocations]
                if keys != sorted(set(keys)):
                    self.failures.append(f"duplicate or unsorted keys: {keys}")
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failures.append(f"{type(exc).__name__}: {exc}")
            # Sample often, but leave the CPU to the plugins under test.
            self.stop.wait(0.002)


def test_fifty_concurrent_adds_then_dels(make_netns, plugin_binary, tmp_path):
    state_dir = str(tmp_path / "state")
    host = make_netns("host")
    pods = [make_netns("pod") for _ in range(50)]
    sampler = StateSampler(state_dir)
    sampler.start()
    try:
        adds = [start(plugin_binary, "ADD", f"ctr{i}", pod.path, config(state_dir, pod.path), host) for i, pod in enumerate(pods)]
        add_results = [(process.wait(timeout=120), process.stdout.read()) for process in adds]
        assert [code for code, _ in add_results] == [0] * 50, [out for code, out in add_results if code]
        allocations = StateStore(state_dir).read().allocations
        assert len(allocations) == 50 and {item.state for item in allocations} == {"committed"}
        # One record file per attachment, named after its key.
        store = StateStore(state_dir)
        assert record_files(state_dir) == sorted(os.path.basename(store.path_of(item.key)) for item in allocations)
        assert all(lo_anycast(pod) == set(ANYCAST.split(",")) for pod in pods)

        dels = [start(plugin_binary, "DEL", f"ctr{i}", pod.path, config(state_dir, None), host) for i, pod in enumerate(pods)]
        del_results = [(process.wait(timeout=120), process.stdout.read()) for process in dels]
        assert [code for code, _ in del_results] == [0] * 50, [out for code, out in del_results if code]
    finally:
        sampler.stop.set()
        sampler.join()
    assert sampler.failures == []
    assert sampler.samples > 0 and sampler.most_records > 0, (sampler.samples, sampler.most_records)
    assert StateStore(state_dir).read().allocations == []
    # No record left, and no writer's temp file either: every writer finished.
    assert os.listdir(StateStore(state_dir).allocations_dir) == []
    assert not os.path.exists(StateStore(state_dir).legacy_path)
    assert all(lo_anycast(pod) == set() for pod in pods)


def test_sigkill_at_any_point_of_add_leaves_a_whole_file_that_del_or_gc_cleans(make_netns, plugin_binary, tmp_path):
    state_dir = str(tmp_path / "state")
    host = make_netns("host")
    pod = make_netns("pod")

    # How long an ADD takes here, so the kill points cover the whole of it.
    started = time.monotonic()
    probe = start(plugin_binary, "ADD", "probe", pod.path, config(state_dir, pod.path), host)
    assert probe.wait(timeout=60) == 0
    duration = time.monotonic() - started
    assert start(plugin_binary, "DEL", "probe", pod.path, config(state_dir, None), host).wait(timeout=60) == 0

    runs = 24
    outcomes = []
    for run in range(runs):
        container = f"crash{run}"
        process = start(plugin_binary, "ADD", container, pod.path, config(state_dir, pod.path), host)
        kill_after = duration * 1.2 * run / runs
        try:
            process.wait(timeout=kill_after)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
            # nsenter execs the plugin in place, so this PID is the plugin itself.
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        store = StateStore(state_dir)
        state = store.read()  # raises if a record file were torn
        records = [item for item in state.allocations if item.container_id == container]
        key = ("flocknet", container, "eth0")
        # At most this attachment's own record, under its own name, and get() agrees with read().
        assert record_files(state_dir) == ([os.path.basename(store.path_of(key))] if records else []), run
        assert store.get(key) == (records[0] if records else None)
        outcomes.append((finished, records[0].state if records else None, bool(lo_anycast(pod))))

        # Half the runs are cleaned by DEL, half by GC (with no valid attachments).
        if run % 2:
            cleanup = start(plugin_binary, "DEL", container, pod.path, config(state_dir, None), host)
        else:
            cleanup = start(plugin_binary, "GC", "", "", config(state_dir, None, **{"cni.dev/valid-attachments": []}), host)
        assert cleanup.wait(timeout=60) == 0, cleanup.stdout.read()
        assert StateStore(state_dir).read().allocations == []
        # A writer killed between creating its temp file and renaming it may
        # leave a dot file behind (readers skip those); never a record file.
        assert record_files(state_dir) == [], f"run {run}: record files left after cleanup"
        assert lo_anycast(pod) == set(), f"run {run}: addresses left after cleanup"

    # The kill points must really have landed inside ADDs of every phase.
    assert any(not finished for finished, _, _ in outcomes)
    assert any(record is not None for _, record, _ in outcomes)
    assert not any(address and record is None for _, record, address in outcomes), outcomes
    # At most the writers' one temp file is left: killed writers do not pile up files.
    left = os.listdir(StateStore(state_dir).allocations_dir)
    assert set(left) <= {".record.tmp"}, left
