"""BirdExporter's sequence (write, check, configure, restore, confirm) against a
fake BIRD that answers with replies recorded from BIRD 2.0.12 — no root.

The same behaviours are proven against a real BIRD in
``tests/netns/test_bird_exporter.py``; these tests cover the failure modes a
real daemon produces only rarely (hangs, garbage, a check that passes and a
configure that fails) and run in milliseconds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path

import pytest

from reconciler.bird import BirdExporter, ExportOutcome
from reconciler.bird_render import render_include
from reconciler.node_config import BgpSettings, BirdSettings
from tests.unit.test_bird_control import CLOSE, HANG, FakeBird, recorded

net = ipaddress.ip_network
V4 = net("192.0.2.53/32")
V6 = net("2001:db8:a::53/128")
_ROUTE = re.compile(r"^\s*route (\S+) blackhole;$", re.MULTILINE)


class ModelBird:
    """Just enough of BIRD: `configure` loads the include file from disk."""

    def __init__(self, include: Path) -> None:
        self.include = include
        self.loaded: dict[str, list[str]] = {"flock_anycast4": [], "flock_anycast6": []}
        self.configures = 0
        # Scripted answers by command; a key also matches the command with a quoted file.
        self.answers: dict[str, object] = {}
        self.drop_routes = False
        self.lose_configure_reply = False
        self.configure_reply = "configure_reconfigured"
        self.stale_counts = 0  # answer this many count queries from before the reload
        self.before = dict(self.loaded)

    def handler(self, command: str) -> object:
        for key, answer in self.answers.items():
            if command == key or command.startswith(key + ' "'):
                return answer
        if command.startswith("configure check"):
            return recorded("configure_check_ok")
        if command == "configure" or command.startswith('configure "'):
            self.configures += 1
            self.before = dict(self.loaded)
            routes = _ROUTE.findall(self.include.read_text()) if self.include.exists() else []
            if self.drop_routes:
                routes = []
            self.loaded = {
                "flock_anycast4": [r for r in routes if ":" not in r],
                "flock_anycast6": [r for r in routes if ":" in r],
            }
            return CLOSE if self.lose_configure_reply else recorded(self.configure_reply)
        match = re.fullmatch(r"show route protocol (\S+)( count)?", command)
        if match:
            protocol, count = match.groups()
            if protocol not in self.loaded:
                return recorded("show_route_protocol_unknown")
            routes = self.loaded[protocol]
            table = "master4" if protocol.endswith("4") else "master6"
            if count and self.stale_counts:
                self.stale_counts -= 1
                routes = self.before[protocol]
            if count:
                n = len(routes)
                return f"1007-{n} of {n} routes for {n} networks in table {table}\n0000 \n".encode()
            lines = "".join(f" {r:<20} blackhole [{protocol} 02:43:47.484] * (200)\n" for r in routes)
            return f"1007-Table {table}:\n{lines}0000 \n".encode()
        if command == "show status":
            return recorded("show_status")
        if command == "show protocols":
            return recorded("show_protocols")
        return recorded("unknown_command")


@pytest.fixture
def env(tmp_path):
    include = tmp_path / "flock-anycast.conf"
    model = ModelBird(include)
    settings = BirdSettings(socket=str(tmp_path / "bird.ctl"), include_file=str(include), timeout=0.3)
    with FakeBird(settings.socket, model.handler) as fake:
        yield settings, model, fake, include


def test_first_export_writes_checks_configures_and_confirms(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    assert exporter.ensure_exported({V4, V6}) == ExportOutcome(ok=True, reloaded=True)
    assert include.read_bytes() == render_include([V4, V6])
    assert fake.commands[:2] == ["configure check", "configure"]
    assert model.loaded == {"flock_anycast4": ["192.0.2.53/32"], "flock_anycast6": ["2001:db8:a::53/128"]}
    assert stat.S_IMODE(include.stat().st_mode) == 0o644
    assert not [name for name in os.listdir(include.parent) if name.endswith(".tmp")]


def test_unchanged_set_is_a_no_op_without_talking_to_bird(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    commands, connections = len(fake.commands), fake.connections
    assert exporter.ensure_exported([V4, V4]) == ExportOutcome(ok=True, reloaded=False)
    assert (len(fake.commands), fake.connections, model.configures) == (commands, connections, 1)


def test_changed_set_reloads(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    assert exporter.ensure_exported([V4, V6]).reloaded
    assert exporter.ensure_exported([]).reloaded
    assert model.loaded == {"flock_anycast4": [], "flock_anycast6": []}
    assert model.configures == 3


def test_rejected_check_restores_the_last_good_file(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    good = include.read_bytes()
    model.answers["configure check"] = recorded("configure_check_error")
    outcome = exporter.ensure_exported([V4, V6])
    assert not outcome.ok and not outcome.reloaded
    assert "8002 /tmp/flock-bird-record/flock-anycast.conf:1:56 Invalid prefix length 33" in outcome.error
    assert include.read_bytes() == good
    assert model.configures == 1  # no configure after a failed check
    assert exporter.status()["last_error"] == outcome.error
    # BIRD fixed (e.g. the operator repaired bird.conf): the next call applies.
    del model.answers["configure check"]
    assert exporter.ensure_exported([V4, V6]) == ExportOutcome(ok=True, reloaded=True)
    assert exporter.status()["last_error"] is None


def test_rejected_configure_restores_the_last_good_file(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    good = include.read_bytes()
    model.answers["configure"] = recorded("configure_error")
    outcome = exporter.ensure_exported([V6])
    assert not outcome.ok and "refused to reload" in outcome.error
    assert include.read_bytes() == good


def test_first_attempt_rejected_removes_a_file_that_did_not_exist(env):
    settings, model, fake, include = env
    model.answers["configure check"] = recorded("configure_check_error")
    outcome = BirdExporter(settings, None).ensure_exported([V4])
    assert not outcome.ok
    assert not include.exists()


def test_bird_down_stages_the_include_for_its_next_start_and_does_not_raise(tmp_path):
    """Issue 11 #6: a BIRD starting while we cannot reach it must load the desired set, not an older, larger one."""
    include = tmp_path / "flock-anycast.conf"
    include.write_bytes(render_include([V4, V6]))
    settings = BirdSettings(socket=str(tmp_path / "missing.ctl"), include_file=str(include), timeout=0.3)
    exporter = BirdExporter(settings, None)
    outcome = exporter.ensure_exported([V4])
    assert outcome == ExportOutcome(ok=False, reloaded=False, error=outcome.error, unreachable=True, staged=True)
    assert str(tmp_path / "missing.ctl") in outcome.error and "No such file" in outcome.error
    assert include.read_bytes() == render_include([V4])
    assert not exporter.probe()
    status = exporter.status()
    assert status["reachable"] is False and status["last_error"] == outcome.error
    assert "unreachable_reason" in status


@pytest.mark.parametrize("answer", [HANG, CLOSE, b"garbage\n"], ids=["hang", "close", "garbage"])
def test_misbehaving_bird_gives_ok_false_and_keeps_the_new_include(env, answer):
    """Not a "no" from BIRD: the candidate (our own rendering) stays for its next start; nothing is trusted."""
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    model.answers["configure check"] = answer
    outcome = exporter.ensure_exported([V6])
    assert not outcome.ok and outcome.error and not outcome.unreachable
    assert include.read_bytes() == render_include([V6])
    del model.answers["configure check"]
    assert exporter.ensure_exported([V6]) == ExportOutcome(ok=True, reloaded=True)


def test_lost_configure_reply_is_not_trusted_later(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    model.lose_configure_reply = True  # BIRD loads [V6], then the connection drops
    outcome = exporter.ensure_exported([V6])
    assert not outcome.ok and "closed" in outcome.error
    assert include.read_bytes() == render_include([V6])  # what BIRD loaded, and what a restart would load
    assert model.loaded["flock_anycast6"] == ["2001:db8:a::53/128"]
    model.lose_configure_reply = False
    # Back to the old set: not a blind no-op, BIRD is looked at and fixed.
    assert exporter.ensure_exported([V4]) == ExportOutcome(ok=True, reloaded=True)
    assert model.loaded == {"flock_anycast4": ["192.0.2.53/32"], "flock_anycast6": []}


@pytest.mark.parametrize("reply", ["configure_in_progress", "configure_queued"])
def test_reconfiguration_in_progress_is_waited_for(env, reply):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    model.configure_reply = reply  # 0004 / 0005: accepted, BIRD still switching
    model.stale_counts = 3
    assert exporter.ensure_exported([V4]) == ExportOutcome(ok=True, reloaded=True)
    assert model.stale_counts == 0


def test_after_reconfigured_one_look_decides(env):
    settings, model, fake, include = env
    model.stale_counts = 1  # 0003 but the routes are not there: no polling
    outcome = BirdExporter(settings, None).ensure_exported([V4])
    assert not outcome.ok and outcome.reloaded
    assert [c for c in fake.commands if c.endswith(" count")] == [
        "show route protocol flock_anycast4 count",
        "show route protocol flock_anycast6 count",
    ]


def test_unconfirmed_export_is_not_counted_as_applied(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    model.drop_routes = True  # BIRD accepts but its static protocol stays empty
    outcome = exporter.ensure_exported([V4])
    assert not outcome.ok and outcome.reloaded
    assert "holds" in outcome.error
    model.drop_routes = False
    assert exporter.ensure_exported([V4]) == ExportOutcome(ok=True, reloaded=True)


def test_include_not_referenced_by_birds_config_is_reported(env):
    settings, model, fake, include = env
    model.answers["show route protocol flock_anycast4 count"] = recorded("show_route_protocol_unknown")
    outcome = BirdExporter(settings, None).ensure_exported([V4])
    assert not outcome.ok
    assert "no protocol flock_anycast4" in outcome.error and str(include) in outcome.error


def test_tampered_file_is_rewritten(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    include.write_bytes(b"# someone else's edit\n")
    assert exporter.ensure_exported([V4]).reloaded
    assert include.read_bytes() == render_include([V4])


def test_restarted_reconciler_adopts_what_bird_runs_without_reload(env):
    settings, model, fake, include = env
    BirdExporter(settings, None).ensure_exported([V4, V6])
    assert model.configures == 1
    outcome = BirdExporter(settings, None).ensure_exported([V6, V4])
    assert outcome == ExportOutcome(ok=True, reloaded=False)
    assert model.configures == 1


def test_restarted_reconciler_reloads_when_bird_differs(env):
    settings, model, fake, include = env
    include.write_bytes(render_include([V4]))  # on disk, but BIRD never loaded it
    assert BirdExporter(settings, None).ensure_exported([V4]).reloaded
    assert model.configures == 1


def test_existing_file_mode_is_kept(env):
    settings, model, fake, include = env
    include.write_bytes(b"old\n")
    include.chmod(0o600)
    BirdExporter(settings, None).ensure_exported([V4])
    assert stat.S_IMODE(include.stat().st_mode) == 0o600


def test_non_network_input_is_an_outcome_not_an_exception(env):
    settings, model, fake, include = env
    outcome = BirdExporter(settings, None).ensure_exported(["192.0.2.53/32"])
    assert not outcome.ok and "cannot render" in outcome.error


def test_status_reports_protocols_sessions_and_reloads(env):
    settings, model, fake, include = env
    exporter = BirdExporter(settings, None)
    exporter.ensure_exported([V4])
    status = exporter.status()
    assert status["reachable"] is True
    assert status["protocols"] == {
        "device1": "up",
        "flock_anycast4": "up",
        "flock_anycast6": "up",
        "upstream1": "start",
    }
    assert status["sessions"] == {"upstream1": "Idle"}
    assert status["reloads"] == 1 and isinstance(status["last_reload"], float)
    assert status["exported"] == {"flock_anycast4": 1, "flock_anycast6": 0}
    assert status["bird"]["version"] == "BIRD 2.0.12"
    assert status["config_read"] == "/tmp/flock-bird-record/bird.conf"


# --- managed mode ------------------------------------------------------------------


def managed(tmp_path: Path) -> tuple[BirdSettings, BgpSettings]:
    settings = BirdSettings(
        mode="managed",
        socket=str(tmp_path / "bird.ctl"),
        include_file=str(tmp_path / "flock-anycast.conf"),
        config_file=str(tmp_path / "bird.conf"),
        timeout=0.3,
    )
    bgp = BgpSettings.model_validate(
        {
            "routerId": "192.0.2.1",
            "localAS": 65001,
            "neighbors": [{"name": "upstream1", "address": "198.51.100.2", "as": 65002, "password": "k"}],
        }
    )
    return settings, bgp


def test_managed_mode_writes_both_files_and_checks_the_named_config(tmp_path):
    settings, bgp = managed(tmp_path)
    model = ModelBird(Path(settings.include_file))
    with FakeBird(settings.socket, model.handler) as fake:
        exporter = BirdExporter(settings, bgp)
        assert exporter.ensure_exported([V4]).reloaded
        config = Path(settings.config_file)
        assert b'password "k";' in config.read_bytes()
        assert stat.S_IMODE(config.stat().st_mode) == 0o640  # it holds BGP passwords
        assert fake.commands[:2] == [
            f'configure check "{settings.config_file}"',
            f'configure "{settings.config_file}"',
        ]
        assert exporter.ensure_exported([V4]) == ExportOutcome(ok=True, reloaded=False)
        # A restarted reconciler adopts it: statics match and the neighbor exists.
        assert BirdExporter(settings, bgp).ensure_exported([V4]) == ExportOutcome(ok=True, reloaded=False)
        assert model.configures == 1


def test_managed_mode_rejection_restores_both_files(tmp_path):
    settings, bgp = managed(tmp_path)
    model = ModelBird(Path(settings.include_file))
    Path(settings.config_file).write_bytes(b"# operator's old config\n")
    with FakeBird(settings.socket, model.handler):
        model.answers["configure check"] = recorded("configure_check_error")
        assert not BirdExporter(settings, bgp).ensure_exported([V4]).ok
    assert Path(settings.config_file).read_bytes() == b"# operator's old config\n"
    assert not Path(settings.include_file).exists()


def test_managed_mode_needs_bgp(tmp_path):
    settings, _ = managed(tmp_path)
    with pytest.raises(ValueError):
        BirdExporter(settings, None)


def test_managed_config_is_restored_when_the_connection_is_lost(tmp_path):
    """Only our include may stay unchecked; a managed bird.conf is never left behind unconfirmed."""
    settings, bgp = managed(tmp_path)
    model = ModelBird(Path(settings.include_file))
    Path(settings.config_file).write_bytes(b"# operator's old config\n")
    with FakeBird(settings.socket, model.handler):
        model.answers["configure check"] = CLOSE
        assert not BirdExporter(settings, bgp).ensure_exported([V4]).ok
    assert Path(settings.config_file).read_bytes() == b"# operator's old config\n"


def test_managed_mode_bird_down_stages_the_include_only(tmp_path):
    settings, bgp = managed(tmp_path)
    Path(settings.config_file).write_bytes(b"# operator's old config\n")
    Path(settings.include_file).write_bytes(render_include([V4, V6]))
    outcome = BirdExporter(settings, bgp).ensure_exported([V6])
    assert outcome.unreachable and outcome.staged and not outcome.ok
    assert Path(settings.include_file).read_bytes() == render_include([V6])
    assert Path(settings.config_file).read_bytes() == b"# operator's old config\n"


def test_peer_addresses_come_from_the_config_and_from_bird_in_include_mode(env, tmp_path):
    settings, model, fake, include = env
    _, bgp = managed(tmp_path)
    model.answers["show protocols all"] = (
        b"2002-Name       Proto      Table      State  Since         Info\n"
        b"1002-uplink_v6  BGP        ---        up     12:00:00.000  Established   \n"
        b"1006-  BGP state:          Established\n"
        b"     Neighbor address: 2001:db8:ffff::1\n"
        b"     Neighbor AS:      65000\n"
        b"1002-uplink_ll  BGP        ---        start  12:00:00.000  Active   \n"
        b"1006-  BGP state:          Active\n"
        b"     Neighbor address: fe80::1%up0\n"
        b"0000 \n"
    )
    exporter = BirdExporter(settings, bgp)
    assert exporter.peer_addresses() == {ipaddress.ip_address("198.51.100.2")}
    assert exporter.ensure_exported([V4]).ok
    assert exporter.peer_addresses() == {
        ipaddress.ip_address(a) for a in ("198.51.100.2", "2001:db8:ffff::1", "fe80::1")
    }


def test_probe_sees_a_listening_socket(env):
    settings, model, fake, include = env
    assert BirdExporter(settings, None).probe()
