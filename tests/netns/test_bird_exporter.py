"""BirdExporter against a real BIRD 2 running in a throwaway namespace.

Each test starts its own BIRD (``nsenter --net=… bird -f -s SOCK -c CONF``)
with socket and files in the test's tmp dir and kills it by pid afterwards,
also on failure. Assertions read BIRD's state through raw socket commands
(``bird_process.bird_command``), not through the code under test.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from reconciler.bird import BirdExporter, ExportOutcome
from reconciler.bird_render import render_include
from reconciler.node_config import BgpSettings, BirdSettings
from tests.netns.bird_process import (
    PEER_CONFIG,
    RECORD_DIR,
    bird_command,
    make_uplink,
    record_replies,
    running_bird,
    start_bird,
    wait_until,
)

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")

net = ipaddress.ip_network
V4 = net("192.0.2.53/32")
V6 = net("2001:db8:a::53/128")
V4B = net("192.0.2.54/32")

OPERATOR_CONFIG = """# An operator's bird.conf in include mode.
router id 192.0.2.1;
protocol device {{
}}
include "{include}";
protocol bgp upstream1 {{
  local as 65001;
  neighbor 198.51.100.1 as 65000;
  ipv4 {{ import none; export where proto = "flock_anycast4"; }};
  ipv6 {{ import none; export where proto = "flock_anycast6"; }};
}}
"""


def static_routes(sock: str) -> set:
    """What BIRD's two flock static protocols hold, read with raw commands."""
    networks = set()
    for protocol in ("flock_anycast4", "flock_anycast6"):
        text = bird_command(sock, f"show route protocol {protocol}").decode()
        networks |= {net(m) for m in re.findall(r"^ (\S+/\d+)\s+blackhole", text, re.MULTILINE)}
    return networks


def last_reconfiguration(sock: str) -> str:
    text = bird_command(sock, "show status").decode()
    return re.search(r"Last reconfiguration on (.+)", text).group(1)


@pytest.fixture
def include_lab(make_netns, tmp_path):
    """A node netns, an operator config including our file, BIRD running on it."""
    node = make_netns("bird")
    include = tmp_path / "flock-anycast.conf"
    config = tmp_path / "bird.conf"
    config.write_text(OPERATOR_CONFIG.format(include=include))
    settings = BirdSettings(socket=str(tmp_path / "bird.ctl"), include_file=str(include), timeout=2.0)
    BirdExporter(settings, None).ensure_bootstrap_files()
    with running_bird(node, str(config), str(tmp_path)) as bird:
        yield settings, bird, node, tmp_path


def test_apply_a_set_then_bird_holds_the_statics(include_lab):
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    assert static_routes(bird.socket) == set()
    assert exporter.ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=True)
    assert static_routes(bird.socket) == {V4, V6}
    found = bird_command(bird.socket, "show route for 192.0.2.53/32").decode()
    assert "blackhole [flock_anycast4" in found
    assert exporter.observe_exported() == frozenset({V4, V6})
    assert exporter.ensure_exported({V6}).reloaded
    assert static_routes(bird.socket) == {V6}
    assert bird_command(bird.socket, "show route for 192.0.2.53/32").startswith(b"8001 ")


def test_unchanged_set_does_not_reload(include_lab):
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported({V4, V6})
    before = last_reconfiguration(bird.socket)
    for _ in range(3):
        assert exporter.ensure_exported([V6, V4, V4]) == ExportOutcome(ok=True, reloaded=False)
    assert last_reconfiguration(bird.socket) == before
    assert exporter.status()["reloads"] == 1
    # The clock BIRD shows does move when a reload happens (ms resolution).
    assert exporter.ensure_exported({V4}).reloaded
    assert last_reconfiguration(bird.socket) != before


def test_restarted_reconciler_adopts_without_reload(include_lab):
    settings, bird, _, _ = include_lab
    BirdExporter(settings, None).ensure_exported({V4, V6})
    before = last_reconfiguration(bird.socket)
    assert BirdExporter(settings, None).ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=False)
    assert last_reconfiguration(bird.socket) == before


def test_rejected_config_keeps_last_good_file_and_running_bird(include_lab):
    settings, bird, _, tmp_path = include_lab
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported({V4})
    good = Path(settings.include_file).read_bytes()
    before = last_reconfiguration(bird.socket)
    # The operator breaks their own bird.conf: BIRD's check fails on it.
    config = tmp_path / "bird.conf"
    config.write_text(config.read_text() + "protocol bgp broken { local as 65001; }\n")
    outcome = exporter.ensure_exported({V4, V6})
    assert not outcome.ok and not outcome.reloaded
    assert outcome.error.startswith("BIRD rejected the new configuration (configure check): 8002 ")
    assert str(config) in outcome.error
    assert Path(settings.include_file).read_bytes() == good
    assert static_routes(bird.socket) == {V4}
    assert last_reconfiguration(bird.socket) == before
    assert bird.alive()
    # Repaired: the pending change goes through.
    config.write_text(OPERATOR_CONFIG.format(include=settings.include_file))
    assert exporter.ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=True)
    assert static_routes(bird.socket) == {V4, V6}


def test_corrupt_include_from_elsewhere_is_replaced(include_lab):
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported({V4})
    Path(settings.include_file).write_text("protocol static flock_anycast4 { ipv4; route 1.2.3.0/33 blackhole; }\n")
    assert exporter.ensure_exported({V4}) == ExportOutcome(ok=True, reloaded=True)
    assert Path(settings.include_file).read_bytes() == render_include([V4])


def test_bird_killed_then_restarted(include_lab):
    settings, bird, node, tmp_path = include_lab
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported({V4})
    good = Path(settings.include_file).read_bytes()
    bird.kill()

    started = time.monotonic()
    outcome = exporter.ensure_exported({V4, V6})
    assert time.monotonic() - started < 1.0  # refused at once, no timeout wait
    assert not outcome.ok and not outcome.reloaded
    assert "cannot connect to BIRD" in outcome.error and settings.socket in outcome.error
    # BIRD will start from the requested set (issue 11 #6), not from an older one.
    assert outcome.unreachable and outcome.staged
    assert Path(settings.include_file).read_bytes() == render_include([V4, V6]) != good
    status = exporter.status()
    assert status["reachable"] is False and status["last_error"] == outcome.error

    again = start_bird(node, bird.config, str(tmp_path))
    try:
        assert static_routes(again.socket) == {V4, V6}  # what it found on disk
        assert exporter.ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=False)
        assert static_routes(again.socket) == {V4, V6}
        assert exporter.status()["reachable"] is True
    finally:
        again.kill()


def test_status_against_real_bird(include_lab):
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported({V4, V6})
    status = exporter.status()
    assert status["reachable"] is True
    assert status["protocols"]["flock_anycast4"] == "up"
    assert status["protocols"]["flock_anycast6"] == "up"
    assert status["sessions"] == {"upstream1": status["sessions"]["upstream1"]}
    assert status["exported"] == {"flock_anycast4": 1, "flock_anycast6": 1}
    assert status["bird"]["version"] == "BIRD 2.0.12"
    assert status["config_read"] == bird.config
    json.dumps(status)  # flockctl prints it as JSON


def test_ten_thousand_prefixes(include_lab):
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    prefixes = [ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.0.0.1")) + (i << 8), 32)) for i in range(5000)]
    prefixes += [ipaddress.IPv6Network((int(V6.network_address) + (i << 64), 128)) for i in range(5000)]
    started = time.monotonic()
    assert exporter.ensure_exported(prefixes) == ExportOutcome(ok=True, reloaded=True)
    elapsed = time.monotonic() - started
    count = bird_command(bird.socket, "show route count").decode()
    assert "Total: 10000 of 10000 routes" in count
    assert elapsed < 5.0
    assert exporter.ensure_exported(prefixes[1:]).reloaded


# --- managed mode ---------------------------------------------------------------


def managed_settings(tmp_path: Path, neighbor: dict | None = None) -> tuple[BirdSettings, BgpSettings]:
    settings = BirdSettings(
        mode="managed",
        socket=str(tmp_path / "bird.ctl"),
        include_file=str(tmp_path / "flock-anycast.conf"),
        config_file=str(tmp_path / "bird.conf"),
        timeout=2.0,
    )
    bgp = BgpSettings.model_validate(
        {
            "routerId": "198.51.100.2",
            "localAS": 65001,
            "communities": ["65000:53"],
            "largeCommunities": ["65000:1:53"],
            "holdTime": 3,
            "keepaliveTime": 1,
            "connectRetryTime": 1,
            "connectDelayTime": 1,
            "errorWaitTime": [1, 2],
            "neighbors": [
                neighbor
                or {
                    "name": "tor1",
                    "address": "2001:db8:ffff::1",
                    "as": 65000,
                    "sourceAddress": "2001:db8:ffff::2",
                    "nextHopIPv4": "198.51.100.2",
                    "password": "lab-secret",
                }
            ],
        }
    )
    return settings, bgp


def test_managed_mode_rejected_option_keeps_running_config(make_netns, tmp_path):
    node = make_netns("bird")
    settings, bgp = managed_settings(tmp_path)
    exporter = BirdExporter(settings, bgp)
    assert exporter.ensure_bootstrap_files() == [settings.include_file, settings.config_file]
    with running_bird(node, settings.config_file, str(tmp_path)) as bird:
        assert exporter.ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=True)
        good_config = Path(settings.config_file).read_bytes()
        good_include = Path(settings.include_file).read_bytes()
        # A new node config BIRD refuses: multihop and interface exclude each other.
        _, bad_bgp = managed_settings(
            tmp_path, {"name": "tor2", "address": "2001:db8:ffff::9", "as": 65000, "multihop": 2, "interface": "eth0"}
        )
        outcome = BirdExporter(settings, bad_bgp).ensure_exported({V4B})
        assert not outcome.ok and not outcome.reloaded
        assert "Multihop BGP cannot be bound to interface" in outcome.error
        assert Path(settings.config_file).read_bytes() == good_config
        assert Path(settings.include_file).read_bytes() == good_include
        protocols = bird_command(bird.socket, "show protocols").decode()
        assert "tor1" in protocols and "tor2" not in protocols
        assert static_routes(bird.socket) == {V4, V6}


def test_managed_mode_exports_to_a_bgp_peer_with_communities(make_netns, tmp_path):
    """The rendered bird.conf against a second BIRD as the upstream router:
    both families over one IPv6 session with a TCP-MD5 password, communities
    attached, nothing but our statics exported, withdrawals propagate."""
    node = make_netns("bird", forwarding=True)
    router = make_netns("birdpeer", forwarding=True)
    make_uplink(node, router)
    settings, bgp = managed_settings(tmp_path / "node")
    (tmp_path / "node").mkdir()
    (tmp_path / "router").mkdir()
    peer_config = tmp_path / "router" / "bird.conf"
    peer_config.write_text(PEER_CONFIG)
    exporter = BirdExporter(settings, bgp)
    exporter.ensure_bootstrap_files()
    with running_bird(node, settings.config_file, str(tmp_path / "node")) as bird, running_bird(
        router, str(peer_config), str(tmp_path / "router")
    ) as peer:
        assert exporter.ensure_exported({V4, V6}).ok
        wait_until(lambda: exporter.status()["sessions"].get("tor1", "").startswith("Established"), timeout=10)
        wait_until(lambda: b"192.0.2.53/32" in bird_command(peer.socket, "show route protocol node"))
        wait_until(lambda: b"2001:db8:a::53/128" in bird_command(peer.socket, "show route protocol node"))
        detail = bird_command(peer.socket, "show route all 192.0.2.53/32").decode()
        assert "BGP.next_hop: 198.51.100.2" in detail
        assert "BGP.community: (65000,53)" in detail
        assert "BGP.large_community: (65000, 1, 53)" in detail
        exported = bird_command(bird.socket, "show route export tor1").decode()
        assert "192.0.2.53/32" in exported and "2001:db8:a::53/128" in exported
        # Withdraw one: it leaves the peer, the session stays up.
        assert exporter.ensure_exported({V6}).reloaded
        wait_until(lambda: b"192.0.2.53/32" not in bird_command(peer.socket, "show route protocol node"))
        assert b"2001:db8:a::53/128" in bird_command(peer.socket, "show route protocol node")
        assert exporter.status()["sessions"]["tor1"].startswith("Established")


# --- the recorded replies still describe this BIRD ----------------------------------


TIMING_DEPENDENT = {"configure_in_progress", "configure_queued"}


def test_recorded_replies_match_a_live_bird(tmp_path):
    """Re-record into tmp and compare each reply's code sequence with the stored one
    (timestamps and hostnames differ; codes must not)."""
    from reconciler.bird_control import parse_replies

    stored = Path(__file__).parents[1] / "unit" / "data" / "bird_replies"
    fresh_dir, work = tmp_path / "replies", str(tmp_path / "work")
    record_replies(str(fresh_dir), work=work)
    names = json.loads((stored / "index.json").read_text())["replies"]
    assert set(json.loads((fresh_dir / "index.json").read_text())["replies"]) == set(names)
    for name in names:
        fresh = parse_replies((fresh_dir / f"{name}.txt").read_bytes().replace(work.encode(), RECORD_DIR.encode()))
        old = parse_replies((stored / f"{name}.txt").read_bytes())
        if name in TIMING_DEPENDENT:
            # 0004/0005 need BIRD to still be flushing 10k routes when the
            # command arrives; on a fast or idle machine it may be done (0003).
            assert [r.code for r in fresh] in ([3], [r.code for r in old]), name
            continue
        assert [r.code for r in fresh] == [r.code for r in old], name
        assert [r.message for r in fresh if r.is_error] == [r.message for r in old if r.is_error], name


# --- issue 11 #6 and #7: BIRD down and back, peers learned ---------------------------


def test_bird_killed_then_restarted_loads_the_staged_smaller_set(include_lab):
    """A withdrawal while BIRD is down reaches the file on disk, so the restarted BIRD never advertises it."""
    settings, bird, node, tmp_path = include_lab
    exporter = BirdExporter(settings, None)
    assert exporter.ensure_exported({V4, V6}).ok
    bird.kill()
    assert not exporter.probe()

    outcome = exporter.ensure_exported({V6})

    assert not outcome.ok and outcome.unreachable and outcome.staged
    with running_bird(node, bird.config, str(tmp_path)) as restarted:
        assert exporter.probe()
        assert static_routes(restarted.socket) == {V6}, "the restarted BIRD loaded more than the desired set"
        before = last_reconfiguration(restarted.socket)
        # Back: the next call adopts what the restarted BIRD holds, without a reload.
        assert exporter.ensure_exported({V6}) == ExportOutcome(ok=True, reloaded=False)
        assert last_reconfiguration(restarted.socket) == before


def test_staged_include_is_one_a_real_bird_accepts(include_lab):
    """The unchecked write is our renderer's output: a real BIRD's `configure check` takes it."""
    settings, bird, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    down = BirdSettings(socket=str(Path(settings.socket).with_name("gone.ctl")), include_file=settings.include_file)
    assert BirdExporter(down, None).ensure_exported({V4, V6, V4B}).staged
    assert b"\n0020 Configuration OK" in bird_command(bird.socket, "configure check")
    assert exporter.ensure_exported({V4, V6, V4B}).reloaded
    assert static_routes(bird.socket) == {V4, V6, V4B}


def test_include_mode_learns_the_peer_addresses_from_bird(include_lab):
    settings, _, _, _ = include_lab
    exporter = BirdExporter(settings, None)
    assert exporter.peer_addresses() == frozenset()
    assert exporter.ensure_exported({V4}).ok
    assert exporter.peer_addresses() == {ipaddress.ip_address("198.51.100.1")}
