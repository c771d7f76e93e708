"""flock-reconciler as a process in a node netns (nsenter), on the real kernel.

BIRD is replaced by the in-memory fake through ``run(argv, Runtime(...))``
so this tier stays about the daemon itself: inotify on the state file,
route events, SIGTERM leaving routes in place, a restart adopting them
without netlink writes, HTTP endpoints. The console script itself is run
with ``--once`` against a BIRD that is not there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from ipaddress import ip_network

import pytest

from lab.topology import http_get
from netconf.state import StateStore
from tests.netns.test_kernel_routes import (
    P4,
    P6,
    PROTO,
    RouteEvents,
    allocation,
    dump_ours,
    hop,
    topology,  # noqa: F401 - a fixture, requested by name below
    wait_for,
)

LISTEN = "127.0.0.1:9472"
WRAPPER = (
    "import sys\n"
    "from tests.reconciler_fakes import FakeBird\n"
    "from reconciler.main import Runtime, run\n"
    "sys.exit(run(sys.argv[1:], Runtime(make_bird=lambda config: FakeBird())))\n"
)


def write_config(tmp_path, **overrides):
    config = {
        "nodeName": "node-1",
        "pools": ["2001:db8:a::/64", "192.0.2.0/24"],
        "stateDir": str(tmp_path / "state"),
        "routes": {"protocol": PROTO},
        "drainDelay": 0.2,
        "resyncInterval": 3600,  # only events may drive the passes under test
        "debounce": 0.01,
        "maxWait": 0.1,
        "bird": {"socket": str(tmp_path / "no-bird.ctl"), "includeFile": str(tmp_path / "flock.conf")},
        "http": {"listen": LISTEN},
        **overrides,
    }
    path = tmp_path / "node.yaml"
    path.write_text(json.dumps(config))
    return str(path)


class Daemon:
    def __init__(self, node, config, log_path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            node.command([sys.executable, "-c", WRAPPER, "--config", config]),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )

    def text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self, signum=signal.SIGTERM, timeout=10):
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.log.close()
        return self.popen.returncode


@pytest.fixture
def daemons():
    started = []

    def start(node, config, log_path):
        daemon = Daemon(node, config, log_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def ready(node):
    try:
        return http_get(node, LISTEN, "/readyz").status == 200
    except OSError:
        return False


def test_daemon_follows_state_survives_restart_without_writes_and_stops_cleanly(topology, tmp_path, daemons):  # noqa: F811 - the imported fixture
    node, _ = topology
    config = write_config(tmp_path)
    store = StateStore(str(tmp_path / "state"))
    log_path = str(tmp_path / "daemon.log")

    first = daemons(node, config, log_path)
    assert wait_for(lambda: ready(node), 10), first.text()

    with store.transaction() as transaction:
        transaction.put(allocation("a"))
    assert wait_for(lambda: dump_ours(node).get(P4) == {hop("a")}), first.text()
    with store.transaction() as transaction:
        transaction.put(allocation("b"))
    assert wait_for(lambda: dump_ours(node).get(P6) == {hop("a", 6), hop("b", 6)}), first.text()

    metrics = http_get(node, LISTEN, "/metrics").body
    assert "flock_reconciler_next_hops 4.0" in metrics

    # A route removed by hand is put back (route events; resync is an hour away).
    with node.iproute() as ipr:
        ipr.route("del", dst=str(P6), proto=PROTO)
    assert wait_for(lambda: dump_ours(node).get(P6) == {hop("a", 6), hop("b", 6)}), first.text()

    assert first.stop(signal.SIGTERM) == 0
    assert dump_ours(node)[P4] == {hop("a"), hop("b")}  # left in place
    text = first.text()
    assert "level=info logger=reconciler.main msg=\"stopping; routes and BIRD export are left in place\"" in text
    assert "Traceback" not in text

    # Restart with nothing changed: no netlink write for our prefixes.
    events = RouteEvents(node.path)
    try:
        second = daemons(node, config, log_path)
        assert wait_for(lambda: ready(node), 10), second.text()
        sentinel = ip_network("203.0.113.1/32")
        with node.iproute() as ipr:
            ipr.route("add", dst=str(sentinel), gateway="10.1.0.2", oif=50, proto=PROTO)
        seen = events.until(sentinel)
    finally:
        events.close()
    assert [event for event in seen if event[1] in (P4, P6)] == []

    # The withdrawal of pod b shrinks the ECMP routes; the state file woke the loop.
    with store.transaction() as transaction:
        transaction.remove(("flocknet", "ctr-b", "eth0"))
    assert wait_for(lambda: dump_ours(node).get(P4) == {hop("a")}), second.text()

    assert second.stop(signal.SIGINT) == 0


def test_console_script_once_installs_routes_and_exits_1_without_bird(topology, tmp_path):  # noqa: F811 - the imported fixture
    node, _ = topology
    config = write_config(tmp_path)
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation("a"))
    script = os.path.join(os.path.dirname(sys.executable), "flock-reconciler")

    completed = node.run([script, "--config", config, "--once"], check=False, timeout=60)

    assert completed.returncode == 1, completed.stderr
    # Kernel first: the routes are in place even though BIRD could not be told.
    assert dump_ours(node) == {P4: {hop("a")}, P6: {hop("a", 6)}}
    assert "msg=\"BIRD apply failed, will retry\"" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_console_script_bad_config_exits_2(topology, tmp_path):  # noqa: F811 - the imported fixture
    node, _ = topology
    path = tmp_path / "bad.yaml"
    path.write_text("nodeName: n\npools: [192.0.2.0/24]\nbird: {mode: managed}\n")
    script = os.path.join(os.path.dirname(sys.executable), "flock-reconciler")

    completed = node.run([script, "--config", str(path)], check=False, timeout=60)

    assert completed.returncode == 2
    assert "bgp is required" in completed.stderr
    assert "Traceback" not in completed.stderr
