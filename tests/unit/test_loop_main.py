"""``run(argv)``: config errors, ``--once``, and the daemon with fakes (real inotify and HTTP)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from netconf.state import StateStore
from netconf.values import Allocation, PodRef
from reconciler.desired import NextHop
from reconciler.main import Runtime, run
from tests.reconciler_fakes import FakeBird, FakeKernel
from tests.unit.simulated_time import SimulatedClock

P4 = ip_network("192.0.2.53/32")
P6 = ip_network("2001:db8:a::53/128")
HOP4 = NextHop(ip_address("10.1.0.2"), "veth-a")
HOP6 = NextHop(ip_address("fd00::2"), "veth-a")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def allocation(cid="a", state="committed"):
    return Allocation(
        network="flocknet",
        container_id=cid,
        ifname="eth0",
        netns=f"/run/netns/{cid}",
        pod=PodRef(namespace="dns", name=cid, uid=f"uid-{cid}"),
        anycast=(ip_address("2001:db8:a::53"), ip_address("192.0.2.53")),
        pod_ips=(ip_address("10.1.0.2"), ip_address("fd00::2")),
        state=state,
        created_at=T0,
        updated_at=T0,
    )


def write_config(tmp_path, **overrides):
    config = {
        "nodeName": "node-1",
        "pools": ["2001:db8:a::/64", "192.0.2.0/24"],
        "stateDir": str(tmp_path / "state"),
        "drainDelay": 0.05,
        "resyncInterval": 30,
        "debounce": 0.01,
        "maxWait": 0.1,
        "http": {"listen": "127.0.0.1:0"},
        **overrides,
    }
    path = tmp_path / "node.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


class Fakes:
    def __init__(self):
        self.journal = []
        self.kernel = FakeKernel(self.journal)
        self.kernel.attach(ip_address("10.1.0.2"), "veth-a")
        self.kernel.attach(ip_address("fd00::2"), "veth-a")
        self.bird = FakeBird(self.journal)
        self.runtime = Runtime(
            make_kernel=lambda config: self.kernel,
            make_bird=lambda config: self.bird,
            make_route_monitor=None,
            install_process_state=lambda config, stop: (lambda: None),
        )


def deadline_poll(predicate, timeout=5.0, interval=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "node.yaml"
    path.write_text("nodeName: n1\nroutes: {protocol: 999}\n")

    code = run(["--config", str(path)], Fakes().runtime)

    assert code == 2
    err = capsys.readouterr().err
    assert "routes.protocol" in err
    assert "Traceback" not in err


def test_bad_http_listen_is_a_config_error(tmp_path, capsys):
    code = run(["--config", write_config(tmp_path, http={"listen": "nowhere"})], Fakes().runtime)

    assert code == 2
    assert "http.listen" in capsys.readouterr().err


def test_unusable_kubeconfig_exits_2(tmp_path, capsys):
    fakes = Fakes()
    fakes.runtime.make_readiness = Runtime().make_readiness
    readiness = {"source": "kubernetes", "kubernetes": {"kubeconfig": str(tmp_path / "nonexistent")}}

    code = run(["--config", write_config(tmp_path, readiness=readiness)], fakes.runtime)

    assert code == 2
    assert "nonexistent" in capsys.readouterr().err


def test_missing_config_file_and_missing_argument_exit_2(tmp_path, capsys):
    assert run(["--config", str(tmp_path / "nope.yaml")], Fakes().runtime) == 2
    assert run([], Fakes().runtime) == 2


def test_once_applies_routes_and_export_and_exits_0(tmp_path):
    fakes = Fakes()
    path = write_config(tmp_path)
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation())

    code = run(["--config", path, "--once"], fakes.runtime)

    assert code == 0
    assert fakes.kernel.routes == {P4: {HOP4}, P6: {HOP6}}
    assert fakes.bird.exported == {P4, P6}


def test_once_waits_out_the_drain_before_deleting(tmp_path):
    fakes = Fakes()
    fakes.kernel.routes = {P4: frozenset({HOP4})}
    slept = []
    fakes.runtime.sleep = slept.append

    code = run(["--config", write_config(tmp_path, drainDelay=0.0), "--once"], fakes.runtime)

    assert code == 0
    assert fakes.kernel.routes == {}
    assert [entry[0] for entry in fakes.journal] == ["bird.export", "kernel.delete"]


def test_once_waits_out_the_drain_on_the_injected_clock(tmp_path):
    """Runtime.clock is every timer's clock: the waker's wait too, not only the reconciler's deadlines."""
    fakes = Fakes()
    fakes.kernel.routes = {P4: frozenset({HOP4})}
    clock = SimulatedClock()
    fakes.runtime.clock = clock
    started = clock.now

    code = run(["--config", write_config(tmp_path, drainDelay=30.0), "--once"], fakes.runtime)

    assert code == 0
    assert fakes.kernel.routes == {}
    assert [entry[0] for entry in fakes.journal] == ["bird.export", "kernel.delete"]
    assert clock.now - started == pytest.approx(30.0)


def test_once_exits_1_when_bird_fails(tmp_path):
    fakes = Fakes()
    fakes.bird.down = True

    assert run(["--config", write_config(tmp_path), "--once"], fakes.runtime) == 1


def test_once_with_a_corrupt_flock_0_1_state_file_changes_nothing_and_exits_1(tmp_path):
    fakes = Fakes()
    fakes.kernel.routes = {P4: frozenset({HOP4})}
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation())
    path = tmp_path / "state" / "state.json"  # while it exists it is the whole truth
    path.write_text("{not json")

    assert run(["--config", write_config(tmp_path), "--once"], fakes.runtime) == 1
    assert fakes.journal == []
    assert path.read_text() == "{not json"


def test_once_with_a_corrupt_record_applies_the_others_and_exits_1(tmp_path):
    """Issue 11 #5: one corrupt record blocks only itself; --once still says something is wrong."""
    fakes = Fakes()
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation())  # a good record next to the corrupt one
    path = tmp_path / "state" / "allocations" / "flocknet+b+eth0.json"
    path.write_text("{not json")

    assert run(["--config", write_config(tmp_path), "--once"], fakes.runtime) == 1
    assert fakes.kernel.routes == {P4: {HOP4}, P6: {HOP6}}
    assert fakes.bird.exported == {P4, P6}
    assert path.read_text() == "{not json"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def daemon(tmp_path):
    fakes = Fakes()
    path = write_config(tmp_path)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", run(["--config", path], fakes.runtime)))
    thread.start()
    try:
        assert fakes.runtime.started.wait(5), "daemon did not start"
        yield fakes, StateStore(str(tmp_path / "state")), result
    finally:
        if fakes.runtime.waker is not None:
            fakes.runtime.waker.stop()
        thread.join(10)
        assert not thread.is_alive()


def test_daemon_follows_the_state_file_serves_http_and_leaves_routes_on_stop(daemon):
    fakes, store, result = daemon
    host, port = fakes.runtime.http.address
    base = f"http://{host}:{port}"

    assert deadline_poll(lambda: fakes.bird.calls >= 1)  # the start pass
    assert get(base + "/readyz")[0] == 200

    with store.transaction() as transaction:
        transaction.put(allocation())
    assert deadline_poll(lambda: fakes.bird.exported == {P4, P6}), "state file change did not wake the loop"
    assert fakes.kernel.routes == {P4: {HOP4}, P6: {HOP6}}

    status, body = get(base + "/metrics")
    assert status == 200
    assert 'flock_reconciler_advertised_prefixes{family="ipv6"} 1.0' in body
    assert 'flock_reconciler_wakeups_total{reason="state-file"}' in body
    status, body = get(base + "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert get(base + "/nothing")[0] == 404

    fakes.bird.down = True
    with store.transaction() as transaction:
        transaction.remove(("flocknet", "a", "eth0"))
    assert deadline_poll(lambda: get(base + "/readyz")[0] == 503)
    detail = json.loads(get(base + "/readyz")[1])
    assert detail["bird"] is False and any("bird" in problem for problem in detail["problems"])

    fakes.runtime.waker.stop()
    assert deadline_poll(lambda: "code" in result)
    assert result["code"] == 0
    # BIRD never confirmed the withdrawal, so the routes stayed; and shutdown leaves them.
    assert fakes.kernel.routes == {P4: {HOP4}, P6: {HOP6}}
    assert "kernel.delete" not in [entry[0] for entry in fakes.journal]


def test_daemon_keeps_running_on_a_corrupt_record_and_recovers(daemon, tmp_path):
    fakes, store, result = daemon
    host, port = fakes.runtime.http.address
    base = f"http://{host}:{port}"
    with store.transaction() as transaction:
        transaction.put(allocation())
    assert deadline_poll(lambda: fakes.bird.exported == {P4, P6})
    assert deadline_poll(lambda: get(base + "/readyz")[0] == 200)

    # A record file appearing in allocations/ wakes the loop (no resync within the test: 30 s).
    corrupt = tmp_path / "state" / "allocations" / "flocknet+b+eth0.json"
    corrupt.write_text("{not json")
    assert deadline_poll(
        lambda: json.loads(get(base + "/readyz")[1])["unreadable_records"] == 1
    ), "a corrupt record did not wake the loop"
    status, body = get(base + "/readyz")
    detail = json.loads(body)
    # One attachment's problem: a warning naming the file, not an unready node.
    assert status == 200 and detail["problems"] == [], detail
    assert any("flocknet+b+eth0.json" in warning and "not valid JSON" in warning for warning in detail["warnings"])
    assert "flock_reconciler_state_unreadable_records 1.0" in get(base + "/metrics")[1]
    # The good record stays applied, and the loop is still alive.
    assert fakes.bird.exported == {P4, P6}
    assert fakes.kernel.routes == {P4: {HOP4}, P6: {HOP6}}
    assert "code" not in result
    assert corrupt.read_text() == "{not json"

    corrupt.unlink()
    assert deadline_poll(
        lambda: json.loads(get(base + "/readyz")[1])["unreadable_records"] == 0
    ), "removing the corrupt record did not wake the loop"
    assert get(base + "/readyz")[0] == 200
    with store.transaction() as transaction:
        transaction.remove(("flocknet", "a", "eth0"))
    assert deadline_poll(lambda: fakes.bird.exported == set())
