"""Real routing daemons inside lab namespaces: BIRD 2 on the node, FRR as its BGP peer.

Every daemon runs in the foreground under ``nsenter --net=PATH``; nsenter
execs the daemon, so the ``Popen`` pid *is* the daemon's pid and stopping
it never needs a process name (LAB-NOTES 11). Work files (configs, control
sockets, logs, pid files) live in a directory the caller owns and removes.

Queries talk to the daemons' own control sockets rather than scraping
``birdc``/``vtysh`` output: BIRD's socket answers ``DDDD`` reply codes,
FRR's per-daemon vty socket answers ``cmd\\0`` with text and a status byte
(~1 ms instead of ~23 ms for ``vtysh -c``).

Waiting is always a poll against a deadline (``wait_until``), never a bare
sleep.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lab.netns import Netns

T = TypeVar("T")

FRR_DIR = "/usr/lib/frr"
FRR_USER = "frr"
FRR_GROUP = "frr"
FRR_CRASH_DIR = "/var/tmp/frr"


class DaemonError(RuntimeError):
    """A daemon did not start, died, or its control socket failed."""


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline.

    An AssertionError so that pytest reports it as a failed expectation,
    with the last observed value in the message.
    """


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.005,
) -> T:
    """Call ``probe`` until it returns something truthy; return that value.

    Raises WaitTimeout naming ``what`` and the last value (or exception)
    seen once ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
        except (OSError, DaemonError) as exc:
            value, last = None, exc
        else:
            last = value
            if value:
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# processes


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None once the pid is gone.

    ``kill -0`` calls a zombie alive; the stat state does not (LAB-NOTES 11).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


@dataclass
class DaemonProcess:
    """One foreground daemon we started, known by its own pid."""

    name: str
    popen: subprocess.Popen
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        if self.popen.poll() is not None:
            return False
        return process_state(self.pid) not in (None, "Z", "X")

    def stop(self, timeout: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def kill(self) -> int:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


def start_in_netns(
    netns: Netns,
    name: str,
    argv: Sequence[str],
    log_path: str,
    env: dict[str, str] | None = None,
) -> DaemonProcess:
    """Exec ``argv`` in the foreground inside ``netns``, output to ``log_path``.

    The child gets its own session so a Ctrl-C at the terminal reaches only
    the lab's Python process, which then stops its daemons in order. As a
    last resort, if the lab process dies without its teardown (SIGKILL, a
    crash), the kernel sends the daemon SIGKILL (``setpriv --pdeathsig``,
    kept across exec; FRR loses it when it drops to user frr). "Parent" is
    the *thread* that started the daemon: start daemons from a thread that
    outlives them (the main thread, in tests, the demo and the benchmark).
    setpriv and nsenter both exec, so the Popen pid is the daemon's own.
    """
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *netns.command(list(argv))],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    return DaemonProcess(name, popen, log_path)


def _connect_unix(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------
# BIRD 2

_BIRD_LINE = re.compile(rb"^(\d{4})([ -])(.*)$")


@dataclass(frozen=True)
class BirdReply:
    """One reply of BIRD's control socket: (code, text) per line, final code last."""

    lines: tuple[tuple[int, str], ...]

    @property
    def code(self) -> int:
        return self.lines[-1][0]

    @property
    def ok(self) -> bool:
        return self.code < 8000

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)

    def with_code(self, code: int) -> list[str]:
        return [text for line_code, text in self.lines if line_code == code]


class BirdSocket:
    """A client of BIRD's control socket (greeting, then one command per line)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> BirdSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer = b""

    def _ensure(self) -> socket.socket:
        if self._sock is None:
            self._sock = _connect_unix(self.path, self.timeout)
            greeting = self._read_reply()
            if greeting.code != 1:
                self.close()
                raise DaemonError(f"unexpected BIRD greeting {greeting.lines!r}")
        return self._sock

    def command(self, text: str) -> BirdReply:
        """Send one command; returns the reply. Raises DaemonError/OSError if the socket fails."""
        sock = self._ensure()
        try:
            sock.sendall(text.encode() + b"\n")
            return self._read_reply()
        except OSError:
            self.close()
            raise

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DaemonError(f"BIRD closed its control socket {self.path}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _read_reply(self) -> BirdReply:
        lines: list[tuple[int, str]] = []
        code = 0
        while True:
            raw = self._read_line()
            match = _BIRD_LINE.match(raw)
            if match:
                code = int(match.group(1))
                lines.append((code, match.group(3).decode(errors="replace")))
                if match.group(2) == b" ":
                    return BirdReply(tuple(lines))
            else:
                # " text": a continuation of the previous code.
                lines.append((code, raw[1:].decode(errors="replace")))


def bird_config_uplinks(
    router_id: str,
    local_as: int,
    neighbors: Sequence[tuple[str, str, int]],
    include_file: str,
    log_file: str,
) -> str:
    """A node ``bird.conf`` in include mode: one BGP session per family.

    ``neighbors`` are (local address, neighbor address, neighbor AS); each
    session exports only the static protocol of its own family, which the
    reconciler's include file defines. One session per family avoids the
    40–50 ms Nagle delay of the second family on a shared session
    (LAB-NOTES 8). There is no ``protocol kernel``: the reconciler owns the
    node's host routes, BIRD only advertises.
    """
    blocks = [
        f'log "{log_file}" all;',
        # Microseconds, so that two reconfigurations never share a timestamp.
        'timeformat base "%F %T.%6f";',
        'timeformat protocol "%F %T.%6f";',
        f"router id {router_id};",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
        f'include "{include_file}";',
    ]
    for local, neighbor, neighbor_as in neighbors:
        family = "ipv6" if ipaddress.ip_address(neighbor).version == 6 else "ipv4"
        blocks += [
            "",
            f"protocol bgp uplink_{family.replace('ip', '')} {{",
            f"  local {local} as {local_as};",
            f"  neighbor {neighbor} as {neighbor_as};",
            "  hold time 3;",
            "  keepalive time 1;",
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1, 2;",
            "  graceful restart off;",
            f"  {family} {{",
            "    import none;",
            f'    export where proto = "flock_anycast{family[-1]}";',
            "  };",
            "}",
        ]
    return "\n".join(blocks) + "\n"


EMPTY_INCLUDE = (
    "protocol static flock_anycast4 {\n  ipv4;\n}\n\n"
    "protocol static flock_anycast6 {\n  ipv6;\n}\n"
)


def static_include(prefixes: Sequence[str]) -> str:
    """A hand-written include like the reconciler's (lab validation only)."""
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for prefix in prefixes:
        network = ipaddress.ip_network(prefix)
        by_family[network.version].append(str(network))
    out = []
    for version in (4, 6):
        routes = "".join(f"  route {prefix} blackhole;\n" for prefix in sorted(set(by_family[version])))
        out.append(f"protocol static flock_anycast{version} {{\n  ipv{version};\n{routes}}}\n")
    return "\n".join(out)


class Bird:
    """BIRD 2 in the foreground inside ``netns``: ``bird -f -s SOCK -c CONF``."""

    def __init__(self, netns: Netns, workdir: str, name: str = "bird") -> None:
        self.netns = netns
        self.name = name
        self.workdir = workdir
        self.socket_path = os.path.join(workdir, f"{name}.ctl")
        self.config_path = os.path.join(workdir, f"{name}.conf")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.stdout_path = os.path.join(workdir, f"{name}.stdout")
        self.process: DaemonProcess | None = None
        self._client: BirdSocket | None = None

    def write_config(self, text: str) -> None:
        _atomic_write(self.config_path, text)

    def start(self, timeout: float = 5.0) -> None:
        """Start BIRD and wait until its control socket answers; raises DaemonError."""
        if self.running():
            raise DaemonError(f"{self.name} already running as pid {self.process.pid}")
        # A stale socket file from a killed BIRD would make the wait below
        # connect-fail until BIRD replaces it; remove it first.
        _unlink(self.socket_path)
        self.process = start_in_netns(
            self.netns,
            self.name,
            ["bird", "-f", "-s", self.socket_path, "-c", self.config_path],
            self.stdout_path,
        )
        try:
            wait_until(self._answers, timeout, f"{self.name} control socket {self.socket_path}")
        except WaitTimeout as exc:
            raise DaemonError(f"{exc}\n--- {self.name} output ---\n{self.process.log_tail()}") from exc

    def _answers(self) -> bool:
        if self.process is None or not self.process.running():
            raise DaemonError(f"{self.name} exited: {self.process.log_tail() if self.process else ''}")
        self.command("show status")
        return True

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        self._close_client()
        if self.process is not None:
            self.process.stop()
        _unlink(self.socket_path)

    def kill(self) -> None:
        """SIGKILL, like a crash: the socket file stays behind."""
        self._close_client()
        if self.process is not None:
            self.process.kill()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def command(self, text: str) -> BirdReply:
        """One command over the control socket (kept open between calls)."""
        if self._client is None:
            self._client = BirdSocket(self.socket_path)
        try:
            return self._client.command(text)
        except (OSError, DaemonError):
            self._close_client()
            raise

    def birdc(self, *args: str) -> subprocess.CompletedProcess:
        """``birdc -s SOCK args...`` (for humans; tests use ``command``)."""
        return subprocess.run(
            ["birdc", "-s", self.socket_path, *args], capture_output=True, text=True, check=False
        )

    def configure(self) -> BirdReply:
        return self.command("configure")

    def last_reconfiguration(self) -> str:
        """The ``Last reconfiguration on ...`` time of ``show status`` (µs jitter: see reconfigurations)."""
        reply = self.command("show status")
        for _, text in reply.lines:
            if text.startswith("Last reconfiguration on "):
                return text[len("Last reconfiguration on ") :]
        raise DaemonError(f"no reconfiguration time in {reply.lines!r}")

    def reconfigurations(self) -> int:
        """How many reconfigurations BIRD has logged since it started writing its log.

        Exact, unlike ``show status``'s ``Last reconfiguration`` time, which
        BIRD converts from its monotonic clock anew for every query and so
        jitters by microseconds between two queries.
        """
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return sum(1 for line in handle if line.rstrip().endswith("<INFO> Reconfiguring"))
        except FileNotFoundError:
            return 0

    def protocol_info(self, name: str) -> str:
        """The state column and info of ``show protocols NAME``, e.g. ``up ... Established``."""
        reply = self.command(f"show protocols {name}")
        rows = reply.with_code(1002)
        if not rows:
            raise DaemonError(f"no protocol {name}: {reply.lines!r}")
        return rows[0]

    def established(self, name: str) -> bool:
        return self.protocol_info(name).rstrip().endswith("Established")

    def wait_established(self, name: str, timeout: float = 10.0) -> None:
        """Poll until BGP protocol ``name`` is Established; raises WaitTimeout."""
        wait_until(lambda: self.established(name), timeout, f"BIRD {name} Established")

    def exported_prefixes(self, protocol: str) -> set[str]:
        """Prefixes BIRD exports to ``protocol`` (``show route export P``)."""
        reply = self.command(f"show route export {protocol}")
        if not reply.ok:
            raise DaemonError(f"show route export {protocol}: {reply.lines!r}")
        return _route_prefixes(reply)

    def static_prefixes(self, protocol: str) -> set[str]:
        reply = self.command(f"show route protocol {protocol}")
        if not reply.ok:
            raise DaemonError(f"show route protocol {protocol}: {reply.lines!r}")
        return _route_prefixes(reply)


def _route_prefixes(reply: BirdReply) -> set[str]:
    """Prefixes of a ``show route`` reply: 1007 rows that start with a network.

    Other 1007 rows are ``Table master6:`` headers and, with ``all``,
    indented attribute lines.
    """
    prefixes = set()
    for code, text in reply.lines:
        if code != 1007 or not text or text[0].isspace():
            continue
        first = text.split()[0]
        try:
            prefixes.add(str(ipaddress.ip_network(first)))
        except ValueError:
            continue
    return prefixes


# --------------------------------------------------------------------------
# FRR (zebra + bgpd)


@dataclass(frozen=True)
class FrrNeighbor:
    address: str
    remote_as: int


@dataclass
class Frr:
    """FRR's zebra and bgpd in ``netns``, the router's BGP peer.

    Both run as user ``frr`` (FRR refuses root here, LAB-NOTES 5) with a
    runtime directory of their own: vty sockets, zserv socket, pid files.
    zebra installs the BGP routes into the router's kernel FIB so that a
    ping from the router follows them.
    """

    netns: Netns
    workdir: str
    router_id: str
    local_as: int
    neighbors: Sequence[FrrNeighbor]
    zebra: DaemonProcess | None = None
    bgpd: DaemonProcess | None = None
    _pids: list[tuple[str, int]] = field(default_factory=list)

    @property
    def runtime_dir(self) -> str:
        return os.path.join(self.workdir, "frr")

    @property
    def zserv_path(self) -> str:
        return os.path.join(self.runtime_dir, "zserv.api")

    def vty_path(self, daemon: str) -> str:
        return os.path.join(self.runtime_dir, f"{daemon}.vty")

    def bgpd_config(self) -> str:
        lines = [
            "frr defaults traditional",
            "hostname router",
            "!",
            f"router bgp {self.local_as}",
            f" bgp router-id {self.router_id}",
            # FRR 8.4 drops eBGP routes without a policy by default (LAB-NOTES 6).
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " bgp graceful-restart-disable",
            " timers bgp 1 3",
        ]
        for neighbor in self.neighbors:
            lines += [
                f" neighbor {neighbor.address} remote-as {neighbor.remote_as}",
                f" neighbor {neighbor.address} timers 1 3",
                f" neighbor {neighbor.address} timers connect 1",
            ]
        for family in ("ipv4", "ipv6"):
            members = [n for n in self.neighbors if _family(n.address) == family]
            if not members:
                continue
            lines.append(f" address-family {family} unicast")
            lines += [f"  neighbor {n.address} activate" for n in members]
            lines.append(" exit-address-family")
        lines.append("!")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Start zebra, then bgpd; wait until both vty sockets answer. Raises DaemonError."""
        os.makedirs(self.runtime_dir, exist_ok=True)
        uid = pwd.getpwnam(FRR_USER).pw_uid
        gid = grp.getgrnam(FRR_GROUP).gr_gid
        os.chown(self.runtime_dir, uid, gid)
        os.chmod(self.runtime_dir, 0o750)
        configs = {
            "zebra": "hostname router\n!\n",
            "bgpd": self.bgpd_config(),
        }
        for daemon, text in configs.items():
            path = os.path.join(self.runtime_dir, f"{daemon}.conf")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chown(path, uid, gid)
        common = [
            "-u", FRR_USER, "-g", FRR_GROUP,
            "--vty_socket", self.runtime_dir,
            "-z", self.zserv_path,
            "-P", "0",  # no TCP vty
        ]
        self.zebra = self._start_daemon("zebra", common, timeout)
        self.bgpd = self._start_daemon("bgpd", common, timeout)

    def _start_daemon(self, daemon: str, common: list[str], timeout: float) -> DaemonProcess:
        argv = [
            os.path.join(FRR_DIR, daemon),
            *common,
            "-i", os.path.join(self.runtime_dir, f"{daemon}.pid"),
            "-f", os.path.join(self.runtime_dir, f"{daemon}.conf"),
            "--log", f"file:{os.path.join(self.runtime_dir, daemon + '.log')}",
        ]
        process = start_in_netns(self.netns, daemon, argv, os.path.join(self.workdir, f"{daemon}.stdout"))
        self._pids.append((daemon, process.pid))

        def answers() -> bool:
            if not process.running():
                raise DaemonError(f"{daemon} exited: {process.log_tail()}")
            self.vty(daemon, "show version")
            return True

        try:
            wait_until(answers, timeout, f"FRR {daemon} vty socket")
        except WaitTimeout as exc:
            process.kill()
            raise DaemonError(f"{exc}\n--- {daemon} output ---\n{process.log_tail()}") from exc
        return process

    def stop(self) -> None:
        for process in (self.bgpd, self.zebra):
            if process is not None:
                process.stop()
        # FRR keeps per-process crash/db files in /var/tmp/frr/<daemon>.<pid>.
        for daemon, pid in self._pids:
            shutil.rmtree(os.path.join(FRR_CRASH_DIR, f"{daemon}.{pid}"), ignore_errors=True)

    def vty(self, daemon: str, command: str, timeout: float = 5.0) -> str:
        """Run one command on a daemon's vty socket; raises DaemonError on a non-zero status."""
        with _connect_unix(self.vty_path(daemon), timeout) as sock:
            sock.sendall(command.encode() + b"\0")
            data = b""
            while not (len(data) >= 4 and data[-4:-1] == b"\0\0\0"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonError(f"{daemon} closed the vty during {command!r}")
                data += chunk
        status = data[-1]
        text = data[:-4].decode(errors="replace")
        if status != 0:
            raise DaemonError(f"{daemon} {command!r} failed (status {status}): {text}")
        return text

    def vty_json(self, daemon: str, command: str) -> Any:
        text = self.vty(daemon, command).strip()
        return json.loads(text) if text else {}

    def bgp_prefix(self, prefix: str) -> dict[str, Any] | None:
        """The peer's BGP RIB entry for ``prefix`` (``show bgp ... json``), None if absent."""
        family = _family(prefix)
        data = self.vty_json("bgpd", f"show bgp {family} unicast {prefix} json")
        if not data or not data.get("paths"):
            return None
        return data

    def has_prefix(self, prefix: str) -> bool:
        return self.bgp_prefix(prefix) is not None

    def bgp_table(self, family: str) -> dict[str, Any]:
        """``show bgp FAMILY unicast json`` routes, keyed by prefix."""
        return self.vty_json("bgpd", f"show bgp {family} unicast json").get("routes", {})

    def received_prefixes(self) -> int:
        """Prefixes received from all neighbors over all address families (``pfxRcd``)."""
        summary = self.vty_json("bgpd", "show bgp summary json")
        return sum(
            int(peer.get("pfxRcd", 0))
            for family in summary.values()
            if isinstance(family, dict)
            for peer in family.get("peers", {}).values()
        )

    def neighbor_state(self, address: str) -> str:
        data = self.vty_json("bgpd", f"show bgp neighbors {address} json")
        return data.get(address, {}).get("bgpState", "")

    def established(self, address: str) -> bool:
        return self.neighbor_state(address) == "Established"

    def wait_established(self, address: str, timeout: float = 10.0) -> None:
        """Poll until the session to ``address`` is Established; raises WaitTimeout."""
        wait_until(lambda: self.established(address), timeout, f"FRR session to {address} Established")

    def wait_prefix(self, prefix: str, present: bool = True, timeout: float = 10.0) -> float:
        """Poll the BGP RIB until ``prefix`` is (or is no longer) there; returns time.monotonic() then.

        Raises WaitTimeout.
        """
        state = "in" if present else "gone from"
        return wait_until(
            lambda: self.has_prefix(prefix) == present and time.monotonic(),
            timeout,
            f"{prefix} {state} FRR's BGP RIB",
            interval=0.002,
        )

    def zebra_route(self, prefix: str) -> dict[str, Any] | None:
        """zebra's RIB entry for ``prefix`` (``show ip[v6] route P json``)."""
        command = "show ipv6 route" if _family(prefix) == "ipv6" else "show ip route"
        data = self.vty_json("zebra", f"{command} {prefix} json")
        entries = data.get(str(ipaddress.ip_network(prefix)))
        return entries[0] if entries else None

    def crash_dirs(self) -> list[str]:
        return [os.path.join(FRR_CRASH_DIR, f"{daemon}.{pid}") for daemon, pid in self._pids]


# --------------------------------------------------------------------------
# router kernel routes


def kernel_next_hops(
    netns: Netns, prefix: str, protocol: int | None = None, ipr: Any = None
) -> list[tuple[str, int]] | None:
    """Next hops (gateway, oif) of the exact route ``prefix`` in ``netns``'s main table.

    None if there is no such route (optionally: no route of ``protocol``).
    ``ipr``: an open IPRoute inside ``netns`` to reuse (opening one forks a
    pyroute2 helper, too costly for a poll loop).
    """
    network = ipaddress.ip_network(prefix)
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    if ipr is None:
        with netns.iproute() as own:
            return kernel_next_hops(netns, prefix, protocol, own)
    routes = ipr.route("dump", family=family, dst=str(network.network_address), dst_len=network.prefixlen, table=254)
    for route in routes:
        if protocol is not None and route["proto"] != protocol:
            continue
        return route_next_hops(route)
    return None


def route_next_hops(route: Any) -> list[tuple[str, int]]:
    """(gateway, oif) pairs of a pyroute2 route message, single path or multipath."""
    multipath = route.get("multipath")
    if multipath:
        return sorted((hop.get("gateway") or "", hop["oif"]) for hop in multipath)
    return [(route.get("gateway") or "", route.get("oif") or 0)]


# --------------------------------------------------------------------------
# helpers


def _family(address_or_prefix: str) -> str:
    return "ipv6" if ipaddress.ip_network(address_or_prefix, strict=False).version == 6 else "ipv4"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _atomic_write(path: str, text: str) -> None:
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
