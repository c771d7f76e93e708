"""BIRD control socket protocol: parsing recorded real replies, and the client's
failure handling against a scripted fake socket (no root, no BIRD).

The replies in ``data/bird_replies`` were recorded from BIRD 2.0.12 in a
throwaway namespace by ``python -m tests.netns.bird_process record DIR``;
``index.json`` names the command behind each.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.bird_control import (
    CONFIGURE_ACCEPTED,
    BirdControl,
    BirdProtocolError,
    BirdReply,
    BirdUnavailable,
    ReplyParser,
    parse_protocols,
    parse_replies,
    parse_route_count,
    parse_route_networks,
    parse_status,
    quote_argument,
)

REPLIES = Path(__file__).parent / "data" / "bird_replies"


def recorded(name: str) -> bytes:
    return (REPLIES / f"{name}.txt").read_bytes()


def recorded_reply(name: str) -> BirdReply:
    replies = parse_replies(recorded(name))
    assert len(replies) == 1
    return replies[0]


# What BIRD 2.0.12 answered, code of the last line (the verdict).
EXPECTED_CODES = {
    "greeting": 1,
    "show_status": 13,
    "configure_check_ok": 20,
    "configure_check_file_ok": 20,
    "configure_check_missing_file": 8002,
    "configure_check_error": 8002,
    "configure_reconfigured": 3,
    "configure_many_routes": 3,
    "configure_in_progress": 4,
    "configure_queued": 5,
    "configure_error": 8002,
    "configure_confirm_nothing_to_do": 19,
    "show_protocols": 0,
    "show_protocols_unknown": 9001,
    "show_route_protocol4": 0,
    "show_route_protocol6": 0,
    "show_route_protocol_count": 0,
    "show_route_protocol_unknown": 9001,
    "show_route_for_found": 0,
    "show_route_for_not_found": 8001,
    "show_route_export_session_down": 9001,
    "show_protocols_established": 0,
    "show_route_export_established": 0,
    "unknown_command": 9001,
}


def test_every_recording_has_an_expectation():
    index = json.loads((REPLIES / "index.json").read_text())
    assert index["bird_version"] == "BIRD version 2.0.12"
    assert set(index["replies"]) == set(EXPECTED_CODES)


@pytest.mark.parametrize("name", sorted(EXPECTED_CODES))
def test_recorded_reply_code(name):
    reply = recorded_reply(name)
    assert reply.code == EXPECTED_CODES[name]
    assert reply.is_error == (reply.code >= 8000)


def test_configure_verdicts():
    accepted = [
        "configure_reconfigured",
        "configure_in_progress",
        "configure_queued",
        "configure_confirm_nothing_to_do",
    ]
    for name in accepted:
        assert recorded_reply(name).code in CONFIGURE_ACCEPTED
    for name in ["configure_error", "configure_check_ok", "configure_check_error"]:
        assert recorded_reply(name).code not in CONFIGURE_ACCEPTED


def test_error_reply_carries_file_line_and_message():
    reply = recorded_reply("configure_check_error")
    assert reply.lines[0] == (2, "Reading configuration from /tmp/flock-bird-record/bird.conf")
    assert reply.describe() == "8002 /tmp/flock-bird-record/flock-anycast.conf:1:56 Invalid prefix length 33"


def test_continuation_lines_inherit_the_code_before_them():
    reply = recorded_reply("show_status")
    assert [code for code, _ in reply.lines] == [1000, 1011, 1011, 1011, 1011, 1011, 13]
    assert reply.texts(1011)[0] == "Router ID is 192.0.2.1"


def test_all_recordings_in_one_stream_fed_byte_by_byte():
    names = sorted(EXPECTED_CODES)
    stream = b"".join(recorded(name) for name in names)
    parser = ReplyParser()
    replies = []
    for index in range(len(stream)):
        parser.feed(stream[index : index + 1])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    assert [reply.code for reply in replies] == [EXPECTED_CODES[name] for name in names]
    assert replies == [recorded_reply(name) for name in names]


def test_incomplete_reply_waits_for_more():
    parser = ReplyParser()
    parser.feed(b"0002-Reading configuration from x\n0003 Reconf")
    assert parser.next_reply() is None
    parser.feed(b"igured\n")
    assert parser.next_reply().code == 3


@pytest.mark.parametrize(
    "garbage",
    [b"hello\n", b" continuation first\n", b"12-short code\n", b"0003_Reconfigured\n"],
)
def test_lines_outside_the_protocol_are_errors(garbage):
    parser = ReplyParser()
    parser.feed(garbage)
    with pytest.raises(BirdProtocolError):
        parser.next_reply()


def test_non_utf8_text_does_not_crash():
    reply = parse_replies(b"1002-eth\xff0 up\n0000 \n")[0]
    assert reply.code == 0 and "\ufffd" in reply.lines[0][1]


def test_parse_protocols():
    protocols = parse_protocols(recorded_reply("show_protocols"))
    assert set(protocols) == {"device1", "flock_anycast4", "flock_anycast6", "upstream1"}
    assert protocols["flock_anycast4"].state == "up"
    assert protocols["upstream1"].proto == "BGP"
    assert protocols["upstream1"].state == "start"
    assert protocols["upstream1"].info == "Idle"
    assert parse_protocols(recorded_reply("show_protocols_unknown")) == {}


def test_parse_route_networks():
    assert parse_route_networks(recorded_reply("show_route_protocol4")) == {
        ipaddress.ip_network("192.0.2.53/32")
    }
    assert parse_route_networks(recorded_reply("show_route_protocol6")) == {
        ipaddress.ip_network("2001:db8:a::53/128")
    }
    assert parse_route_networks(recorded_reply("show_route_for_not_found")) == set()


def test_parse_established_session_and_its_export():
    protocols = parse_protocols(recorded_reply("show_protocols_established"))
    assert (protocols["upstream1"].state, protocols["upstream1"].info) == ("up", "Established")
    # Both tables in one reply, separated by a blank continuation line.
    assert parse_route_networks(recorded_reply("show_route_export_established")) == {
        ipaddress.ip_network("192.0.2.53/32"),
        ipaddress.ip_network("2001:db8:a::53/128"),
    }


def test_parse_route_networks_skips_second_routes_of_a_network():
    reply = parse_replies(
        b"1007-Table master4:\n"
        b" 192.0.2.53/32        blackhole [flock_anycast4 02:43:47.484] * (200)\n"
        b"                      blackhole [flock_anycast4 02:43:47.484] (200)\n"
        b"0000 \n"
    )[0]
    assert parse_route_networks(reply) == {ipaddress.ip_network("192.0.2.53/32")}


def test_parse_route_count():
    assert parse_route_count(recorded_reply("show_route_protocol_count")) == 1
    assert parse_route_count(recorded_reply("show_route_protocol_unknown")) is None


def test_parse_status():
    status = parse_status(recorded_reply("show_status"))
    assert status["version"] == "BIRD 2.0.12"
    assert status["router_id"] == "192.0.2.1"
    assert status["daemon"] == "Daemon is up and running"
    assert status["last_reconfiguration"].count(":") == 2


def test_quote_argument():
    assert quote_argument("/etc/bird/bird.conf") == '"/etc/bird/bird.conf"'
    with pytest.raises(ValueError):
        quote_argument('/etc/"x')


# --- the client against a fake socket -------------------------------------------

HANG = object()
CLOSE = object()


class FakeBird:
    """A scripted BIRD control socket served by a thread, for tests without BIRD.

    ``handler(command) -> bytes | HANG | CLOSE``; ``commands`` lists what
    arrived, in order, across connections.
    """

    def __init__(self, path: str, handler: Callable[[str], object], greeting: bytes = b"") -> None:
        self.path = path
        self.handler = handler
        self.greeting = greeting or recorded("greeting")
        self.commands: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(8)
        self._server.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._clients: list[socket.socket] = []

    def __enter__(self) -> FakeBird:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
        for client in self._clients:
            client.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(client)
            threading.Thread(target=self._talk, args=(client,), daemon=True).start()

    def _talk(self, client: socket.socket) -> None:
        client.settimeout(0.05)
        buffer = b""
        try:
            client.sendall(self.greeting)
            while not self._stop.is_set():
                try:
                    chunk = client.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    command = line.decode()
                    self.commands.append(command)
                    answer = self.handler(command)
                    if answer is HANG:
                        continue
                    if answer is CLOSE:
                        client.close()
                        return
                    client.sendall(answer)
        except OSError:
            return


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "bird.ctl")


def test_connect_reads_greeting_and_command_returns_reply(sock_path):
    with FakeBird(sock_path, lambda command: recorded("configure_reconfigured")) as fake:
        with BirdControl(sock_path, timeout=2) as bird:
            assert bird.greeting.code == 1
            assert bird.command("configure").code == 3
            assert bird.command("configure").code == 3
        assert fake.commands == ["configure", "configure"]


def test_missing_socket_is_unavailable(sock_path):
    with pytest.raises(BirdUnavailable, match="No such file"):
        BirdControl(sock_path, timeout=1).connect()


def test_refused_socket_is_unavailable(sock_path):
    # A socket file nobody listens on: what a killed BIRD leaves behind.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    with pytest.raises(BirdUnavailable, match="refused"):
        BirdControl(sock_path, timeout=1).connect()


def test_silent_daemon_times_out(sock_path):
    with FakeBird(sock_path, lambda command: HANG):
        with BirdControl(sock_path, timeout=0.2) as bird:
            started = time.monotonic()
            with pytest.raises(BirdUnavailable, match="did not answer"):
                bird.command("configure")
            assert time.monotonic() - started < 1.0
            with pytest.raises(BirdUnavailable, match="not connected"):
                bird.command("configure")


def test_silent_greeting_times_out(sock_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    try:
        with pytest.raises(BirdUnavailable, match="greeting"):
            BirdControl(sock_path, timeout=0.2).connect()
    finally:
        server.close()


def test_reply_that_never_ends_times_out(sock_path):
    # A first line ("more follows") and then silence.
    with FakeBird(sock_path, lambda command: HANG) as fake:
        with BirdControl(sock_path, timeout=0.3) as bird:
            for client in fake._clients:
                client.sendall(b"0002-Reading\n")
            with pytest.raises(BirdUnavailable):
                bird.command("configure")


def test_connection_closed_mid_reply(sock_path):
    with FakeBird(sock_path, lambda command: CLOSE):
        with BirdControl(sock_path, timeout=1) as bird:
            with pytest.raises(BirdUnavailable, match="closed"):
                bird.command("show status")


def test_garbage_reply_is_a_protocol_error(sock_path):
    with FakeBird(sock_path, lambda command: b"<html>\n"):
        with BirdControl(sock_path, timeout=1) as bird:
            with pytest.raises(BirdProtocolError):
                bird.command("show status")


def test_wrong_greeting_is_a_protocol_error(sock_path):
    with FakeBird(sock_path, lambda command: b"", greeting=b"0013 not a greeting\n"):
        with pytest.raises(BirdProtocolError, match="greeting"):
            BirdControl(sock_path, timeout=1).connect()


def test_command_must_be_one_line(sock_path):
    with FakeBird(sock_path, lambda command: recorded("configure_reconfigured")):
        with BirdControl(sock_path, timeout=1) as bird:
            with pytest.raises(ValueError):
                bird.command("configure\ndown")
