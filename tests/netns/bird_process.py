"""Start and stop a real BIRD 2 inside a lab namespace; record its replies.

BIRD runs as ``nsenter --net=PATH -- bird -f -s SOCK -c CONF -P PIDFILE``:
nsenter execs BIRD in place and ``-f`` keeps it in the foreground, so the
Popen pid *is* BIRD's pid and killing it needs no pid file (LAB-NOTES 11).
Sockets, configs and logs live in a directory the caller owns.

``python -m tests.netns.bird_process record DIR`` (root) re-records the
control socket replies that the unit tests parse, from a throwaway
namespace; see :func:`record_replies`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from lab.netns import Netns, create_netns, delete_netns

BIRD = shutil.which("bird") or "/usr/sbin/bird"


class BirdStartError(RuntimeError):
    """BIRD exited or did not open its control socket in time; carries its log."""


@dataclass
class BirdProcess:
    netns: Netns
    config: str
    socket: str
    log_path: str
    popen: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal BIRD by its own pid and reap it; already gone is fine."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


def start_bird(netns: Netns, config: str, workdir: str, timeout: float = 5.0) -> BirdProcess:
    """Start BIRD on config inside netns; returns once the socket greets.

    Raises BirdStartError (with BIRD's output) if it exits or stays silent.
    """
    sock = os.path.join(workdir, "bird.ctl")
    log_path = os.path.join(workdir, "bird.log")
    if os.path.exists(sock):
        os.unlink(sock)
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            netns.command([BIRD, "-f", "-s", sock, "-c", config, "-P", os.path.join(workdir, "bird.pid")]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    process = BirdProcess(netns, config, sock, log_path, popen)
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise BirdStartError(f"BIRD exited with {popen.returncode}:\n{process.log()}")
        if _greets(sock):
            return process
        if time.monotonic() > deadline:
            process.kill()
            raise BirdStartError(f"BIRD did not open {sock} within {timeout} s:\n{process.log()}")
        time.sleep(0.005)


def _greets(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(path)
            return sock.recv(64).startswith(b"0001 ")
    except OSError:
        return False


@contextmanager
def running_bird(netns: Netns, config: str, workdir: str) -> Iterator[BirdProcess]:
    """start_bird, and kill it by pid on the way out, also on failure."""
    process = start_bird(netns, config, workdir)
    try:
        yield process
    finally:
        process.kill()


def bird_command(path: str, command: str, timeout: float = 5.0) -> bytes:
    """One command on a fresh connection; the raw reply bytes (greeting stripped).

    Deliberately independent of reconciler.bird_control, so the recordings
    and the test assertions do not depend on the parser under test.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        _read_raw_reply(sock)
        sock.sendall(command.encode() + b"\n")
        return _read_raw_reply(sock)


def _read_raw_reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"BIRD closed the socket; got {data[-200:]!r}")
        data += chunk
        if not data.endswith(b"\n"):
            continue
        # A reply ends with a line "DDDD text" (digits, then a blank).
        last = data[:-1].rsplit(b"\n", 1)[-1]
        if len(last) >= 5 and last[:4].isdigit() and last[4:5] == b" ":
            return data


# --- a BGP peer ------------------------------------------------------------------

NODE_UPLINK6, ROUTER_UPLINK6 = "2001:db8:ffff::2", "2001:db8:ffff::1"
NODE_UPLINK4, ROUTER_UPLINK4 = "198.51.100.2", "198.51.100.1"
_NODE_UPLINK_INDEX = 20

# A second BIRD as the upstream router (AS 65000) of a node in AS 65001:
# one IPv6 session for both families, TCP-MD5, the fast lab timers.
PEER_CONFIG = """router id 198.51.100.1;
protocol device {
}
protocol bgp node {
  local as 65000;
  neighbor 2001:db8:ffff::2 as 65001;
  source address 2001:db8:ffff::1;
  password "lab-secret";
  hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  graceful restart off;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
"""


def make_uplink(node: Netns, router: Netns) -> None:
    """node up0 (2001:db8:ffff::2, 198.51.100.2) ── veth ── router up0 (…::1, .1)."""
    with node.iproute() as ipr:
        ipr.link(
            "add",
            ifname="up0",
            kind="veth",
            index=_NODE_UPLINK_INDEX,
            peer={"ifname": "up0", "net_ns_fd": router.path},
        )
        ipr.link("set", index=_NODE_UPLINK_INDEX, state="up")
        ipr.addr("add", index=_NODE_UPLINK_INDEX, address=NODE_UPLINK6, prefixlen=64, flags=IFA_F_NODAD)
        ipr.addr("add", index=_NODE_UPLINK_INDEX, address=NODE_UPLINK4, prefixlen=24)
    with router.iproute() as ipr:
        index = ipr.link_lookup(ifname="up0")[0]
        # Equal indices on both ends lose the first neighbour solicitation (LAB-NOTES 2).
        assert index != _NODE_UPLINK_INDEX
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=ROUTER_UPLINK6, prefixlen=64, flags=IFA_F_NODAD)
        ipr.addr("add", index=index, address=ROUTER_UPLINK4, prefixlen=24)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01):
    """Poll predicate until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- recording replies for the unit tests -------------------------------------

RECORD_DIR = "/tmp/flock-bird-record"

_RECORD_CONFIG = """router id 192.0.2.1;
protocol device {{
}}
include "{include}";
protocol bgp upstream1 {{
  local as 65001;
  neighbor 2001:db8:ffff::1 as 65000;
  source address 2001:db8:ffff::2;
  password "lab-secret";
  hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  graceful restart off;
  ipv4 {{ import none; export where proto = "flock_anycast4"; next hop address 198.51.100.2; }};
  ipv6 {{ import none; export where proto = "flock_anycast6"; }};
}}
"""


def record_replies(output_dir: str, work: str = RECORD_DIR) -> dict[str, dict]:
    """Run a fixed script of commands against a real BIRD and store each raw reply.

    Files: ``<name>.txt`` holds the reply bytes exactly as BIRD sent them;
    ``index.json`` maps name to the command and BIRD's version. The stored
    recordings use the fixed work dir RECORD_DIR, so file names inside the
    replies stay stable; a test re-recording passes a private one. Needs
    root; the work dir is removed afterwards.
    """
    from reconciler.bird_render import render_include

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    config = os.path.join(work, "bird.conf")
    include = os.path.join(work, "flock-anycast.conf")
    Path(config).write_text(_RECORD_CONFIG.format(include=include))
    few = [ipaddress.ip_network("192.0.2.53/32"), ipaddress.ip_network("2001:db8:a::53/128")]
    many = [ipaddress.IPv4Network((0x0A000001 + (i << 8), 32)) for i in range(10000)]  # 10.x.y.1
    Path(include).write_bytes(render_include(few))
    index: dict[str, dict] = {}
    os.makedirs(os.path.join(work, "peer"))
    peer_config = os.path.join(work, "peer", "bird.conf")
    Path(peer_config).write_text(PEER_CONFIG)
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        netns = create_netns("birdrec")
        cleanup.callback(delete_netns, netns)
        router = create_netns("birdrecpeer")
        cleanup.callback(delete_netns, router)
        with running_bird(netns, config, work) as bird:
            version = subprocess.run([BIRD, "--version"], capture_output=True, text=True).stderr.strip()

            def record(name: str, command: str) -> bytes:
                raw = bird_command(bird.socket, command)
                (output / f"{name}.txt").write_bytes(raw)
                index[name] = {"command": command}
                return raw

            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(bird.socket)
                (output / "greeting.txt").write_bytes(_read_raw_reply(sock))
                index["greeting"] = {"command": None}
            record("show_status", "show status")
            record("configure_check_ok", "configure check")
            record("configure_check_file_ok", f'configure check "{config}"')
            record("configure_check_missing_file", f'configure check "{work}/missing.conf"')
            record("configure_reconfigured", "configure")
            record("configure_confirm_nothing_to_do", "configure confirm")
            record("show_protocols", "show protocols")
            record("show_protocols_unknown", "show protocols nosuch")
            record("show_route_protocol4", "show route protocol flock_anycast4")
            record("show_route_protocol6", "show route protocol flock_anycast6")
            record("show_route_protocol_count", "show route protocol flock_anycast4 count")
            record("show_route_protocol_unknown", "show route protocol nosuch count")
            record("show_route_for_found", "show route for 192.0.2.53/32")
            record("show_route_for_not_found", "show route for 192.0.2.54/32")
            record("show_route_export_session_down", "show route export upstream1")
            make_uplink(netns, router)
            with running_bird(router, peer_config, os.path.join(work, "peer")):
                wait_until(lambda: b"Established" in bird_command(bird.socket, "show protocols"), timeout=10)
                record("show_protocols_established", "show protocols")
                record("show_route_export_established", "show route export upstream1")
            record("unknown_command", "frobnicate")
            Path(include).write_bytes(b"protocol static flock_anycast4 { ipv4; route 192.0.2.0/33 blackhole; }\n")
            record("configure_check_error", "configure check")
            record("configure_error", "configure")
            # 0004 and 0005: removing a static protocol with many routes makes
            # BIRD flush it asynchronously; a second configure queues.
            Path(include).write_bytes(render_include(many))
            record("configure_many_routes", "configure")
            Path(config).write_text(_RECORD_CONFIG.replace('include "{include}";\n', "").format())
            record("configure_in_progress", "configure")
            record("configure_queued", "configure")
            if not bird.alive():
                raise BirdStartError("BIRD died while recording:\n" + bird.log())
    (output / "index.json").write_text(
        json.dumps({"bird_version": version, "replies": index}, indent=2, sort_keys=True) + "\n"
    )
    return index


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "record":
        print("usage: python -m tests.netns.bird_process record DIR", file=sys.stderr)
        sys.exit(2)
    names = record_replies(sys.argv[2])
    print(f"recorded {len(names)} replies into {sys.argv[2]}", file=sys.stderr)
