"""The end-to-end lab: a router, a node and pods, each in its own network namespace.

::

    router netns                      node netns                          pod netns (one per pod)
    FRR zebra+bgpd  ── up0 veth ──▶   BIRD 2 (include file)               lo: anycast /128 /32
    AS 65000                          flock-reconciler (--config YAML)    eth0 ◀── ptp veth ── node
    2001:db8:ffff::1, 198.51.100.1    2001:db8:ffff::2, 198.51.100.2      10.244.0.x, fd00:244::x

Pods are attached the way a runtime does it: the CNI chain (Debian ``ptp``
+ ``host-local``, then ``flock-anycast``) is exec'd from inside the node
netns with the pod netns as ``CNI_NETNS``; DEL runs the chain in reverse.

``Lab`` is a context manager; everything it makes (namespaces, daemons, the
work directory) is registered on an ExitStack the moment it exists, so an
exception or Ctrl-C at any point tears down exactly what was built.
Nothing here touches the root namespace's links, routes or sysctls.
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import ipaddress
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from lab.cni import Invocation, PluginRun, exec_plugin, ptp_config, reference_plugin
from lab.daemons import (
    EMPTY_INCLUDE,
    Bird,
    DaemonError,
    DaemonProcess,
    Frr,
    FrrNeighbor,
    WaitTimeout,
    bird_config_uplinks,
    kernel_next_hops,
    route_next_hops,
    start_in_netns,
    wait_until,
)
from lab.netns import Netns, create_netns, delete_netns

ROUTER_AS = 65000
NODE_AS = 65001
ROUTER_ID = "198.51.100.1"
NODE_ROUTER_ID = "198.51.100.2"
UPLINK = "up0"
# Explicit, distinct ifindexes on the two veth ends: with equal ones the
# first IPv6 neighbour solicitation is lost (LAB-NOTES 2).
NODE_UPLINK_INDEX = 20
ROUTER_UPLINK6 = "2001:db8:ffff::1"
NODE_UPLINK6 = "2001:db8:ffff::2"
ROUTER_UPLINK4 = "198.51.100.1"
NODE_UPLINK4 = "198.51.100.2"
POD_SUBNET4 = "10.244.0.0/24"
POD_SUBNET6 = "fd00:244::/64"
POOLS = ("2001:db8:a::/64", "192.0.2.0/24")
NETWORK_NAME = "flock-lab"
ROUTE_PROTOCOL = 70
HTTP_LISTEN = "127.0.0.1:9472"
IFA_F_NODAD = 0x02

_CLONE_NEWNET = 0x40000000
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_SO_RCVBUFFORCE = 33


def flock_anycast_binary() -> str:
    """The plugin to exec: $FLOCK_ANYCAST_BIN (e.g. the frozen build) or the venv's console script."""
    return os.environ.get("FLOCK_ANYCAST_BIN") or os.path.join(os.path.dirname(sys.executable), "flock-anycast")


def flock_reconciler_binary() -> str:
    return os.environ.get("FLOCK_RECONCILER_BIN") or os.path.join(
        os.path.dirname(sys.executable), "flock-reconciler"
    )


def host_prefix(address: str) -> str:
    """``2001:db8:a::53`` → ``2001:db8:a::53/128``; ``192.0.2.53`` → ``192.0.2.53/32``."""
    return str(ipaddress.ip_network(address))


# --------------------------------------------------------------------------
# sockets inside a namespace, without moving the caller


def netns_socket(netns_path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at ``netns_path``.

    A socket belongs to the namespace it was created in, whatever thread
    later uses it. setns() changes only the calling thread's namespace, so
    a short-lived helper thread enters the namespace, creates the socket and
    exits; the caller's own threads never switch namespaces.
    """
    outcome: dict[str, Any] = {}

    def enter_and_create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["socket"] = socket.socket(family, kind, proto)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    helper = threading.Thread(target=enter_and_create, name="netns-socket", daemon=True)
    helper.start()
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]


class _NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns_path: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns_path = netns_path

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = netns_socket(self._netns_path, family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: str


def http_get(netns: Netns, listen: str, path: str, timeout: float = 2.0) -> HttpReply:
    """GET ``path`` from ``listen`` (host:port) as seen from inside ``netns``."""
    host, _, port = listen.rpartition(":")
    connection = _NetnsHTTPConnection(netns.path, host.strip("[]"), int(port), timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return HttpReply(response.status, response.read().decode(errors="replace"))
    finally:
        connection.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {``name{labels}``: value} (labels as printed)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


# --------------------------------------------------------------------------
# netlink route events


@dataclass(frozen=True)
class RouteEvent:
    at: float  # time.monotonic() when read
    event: str  # RTM_NEWROUTE / RTM_DELROUTE
    prefix: str
    protocol: int
    table: int
    next_hops: tuple[tuple[str, int], ...]


class RouteMonitor:
    """Collects route events of one namespace with timestamps, in a thread.

    A raw NETLINK_ROUTE socket made inside the namespace, bound to the IPv4
    and IPv6 route groups, decoded with pyroute2's marshal. Use as a context
    manager; ``events`` is a list appended to while it runs.
    """

    def __init__(self, netns: Netns) -> None:
        self.netns = netns
        self.events: list[RouteEvent] = []
        self.overflows = 0  # ENOBUFS: events were lost
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RouteMonitor:
        self._sock = netns_socket(self.netns.path, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        # Big bursts (10k routes at a cold start) must not overflow the
        # socket; as root SO_RCVBUFFORCE may exceed net.core.rmem_max.
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 * 1024 * 1024)
        self._sock.bind((0, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
        self._thread = threading.Thread(target=self._run, name="route-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        marshal = MarshalRtnl()
        assert self._sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                return
            now = time.monotonic()
            for message in marshal.parse(data):
                event = message.get("event")
                if event not in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                    continue
                dst = message.get("dst")
                if dst is None:
                    continue
                prefix = str(ipaddress.ip_network(f"{dst}/{message['dst_len']}", strict=False))
                table = message.get("table") or message["table"]
                with self._lock:
                    self.events.append(
                        RouteEvent(now, event, prefix, message["proto"], table, tuple(route_next_hops(message)))
                    )

    def matching(self, prefix: str | None = None, protocol: int | None = None) -> list[RouteEvent]:
        with self._lock:
            events = list(self.events)
        return [
            e
            for e in events
            if (prefix is None or e.prefix == prefix) and (protocol is None or e.protocol == protocol)
        ]


# --------------------------------------------------------------------------
# peer RIB watcher


class PrefixWatcher:
    """Polls the peer's RIB for prefixes in a thread, recording when each appears/leaves.

    ``transitions[prefix]`` is a list of (time.monotonic(), present).
    """

    def __init__(self, frr: Frr, prefixes: Sequence[str], interval: float = 0.003) -> None:
        self.frr = frr
        self.prefixes = list(prefixes)
        self.interval = interval
        self.transitions: dict[str, list[tuple[float, bool]]] = {p: [] for p in self.prefixes}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PrefixWatcher:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="prefix-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _sample(self) -> None:
        for prefix in self.prefixes:
            try:
                present = self.frr.has_prefix(prefix)
            except (OSError, DaemonError, ValueError):
                continue
            now = time.monotonic()
            history = self.transitions[prefix]
            if not history or history[-1][1] != present:
                history.append((now, present))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def first(self, prefix: str, present: bool, after: float = 0.0) -> float | None:
        for at, value in list(self.transitions[prefix]):
            if value == present and at >= after:
                return at
        return None


# --------------------------------------------------------------------------
# pods


@dataclass(eq=False)  # identity: pods are dict keys and compared with `is`
class Pod:
    name: str
    netns: Netns
    container_id: str
    anycast: tuple[str, ...]
    uid: str
    namespace: str = "lab"
    ifname: str = "eth0"
    result: dict[str, Any] = field(default_factory=dict)
    host_ifname: str = ""
    host_ifindex: int = 0
    chain: tuple[str, ...] = ("ptp", "flock-anycast")
    args: str = ""
    runtime_anycast: tuple[str, ...] | None = None

    def ip(self, version: int) -> str:
        """The pod's unicast address of an IP version, from the main plugin's result."""
        for entry in self.result.get("ips", []):
            address = ipaddress.ip_interface(entry["address"]).ip
            if address.version == version:
                return str(address)
        raise LookupError(f"pod {self.name} has no IPv{version} address in {self.result!r}")

    def next_hop(self, address: str) -> tuple[str, int]:
        """(gateway, oif) the node's route to ``address`` should have for this pod."""
        return (self.ip(ipaddress.ip_address(address).version), self.host_ifindex)

    def echo_replies(self) -> int:
        """ICMP/ICMPv6 echo replies this pod has sent (its netns's own /proc/net counters)."""
        out = self.netns.run(["cat", "/proc/net/snmp", "/proc/net/snmp6"]).stdout
        total = 0
        lines = out.splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Icmp: ") and index + 1 < len(lines) and lines[index + 1].startswith("Icmp: "):
                names, values = line.split()[1:], lines[index + 1].split()[1:]
                if "OutEchoReps" in names and names != values:
                    total += int(values[names.index("OutEchoReps")])
            elif line.startswith("Icmp6OutEchoReplies"):
                total += int(line.split()[1])
        return total


# --------------------------------------------------------------------------
# the lab


class Lab:
    """Router + node (+ pods), BIRD on the node, FRR on the router; a context manager.

    ``Lab(start_daemons=False)`` builds only namespaces and links (for tests of
    the kernel side alone). ``Lab.validate()`` proves the data path without
    the reconciler: static in the include → FRR → router FIB → ping.
    """

    def __init__(
        self,
        *,
        cni_version: str = "1.0.0",
        start_daemons: bool = True,
        drain_delay: float = 0.3,
        workdir_parent: str | None = None,
        keep_workdir: bool = False,
    ) -> None:
        self.cni_version = cni_version
        self.start_daemons = start_daemons
        self.drain_delay = drain_delay
        self.keep_workdir = keep_workdir
        self._workdir_parent = workdir_parent
        self._stack = ExitStack()
        # pyroute2 forks a child for every netns socket; a signal that turns
        # into an exception inside such a child must not unwind *this* lab
        # from there. Only the process that built the lab tears it down.
        self._owner_pid = os.getpid()
        self.workdir = ""
        self.router: Netns | None = None
        self.node: Netns | None = None
        self.bird: Bird | None = None
        self.frr: Frr | None = None
        self.reconciler: DaemonProcess | None = None
        self.reconciler_config_path = ""
        self.pods: dict[str, Pod] = {}
        self.node_uplink_index = NODE_UPLINK_INDEX
        self.router_uplink_index = 0
        self._readiness: dict[str, bool] = {}
        self._iproutes: dict[str, IPRoute] = {}

    # paths -----------------------------------------------------------------

    @property
    def state_dir(self) -> str:
        return os.path.join(self.workdir, "state")

    @property
    def ipam_dir(self) -> str:
        return os.path.join(self.workdir, "ipam")

    @property
    def include_path(self) -> str:
        return os.path.join(self.workdir, "flock-anycast.conf")

    @property
    def readiness_path(self) -> str:
        return os.path.join(self.workdir, "readiness.json")

    @property
    def reconciler_log_path(self) -> str:
        return os.path.join(self.workdir, "reconciler.log")

    # lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Tear down everything built so far, in reverse order; safe to call twice.

        SIGINT/SIGTERM are held back meanwhile, so a second Ctrl-C cannot
        leave half a lab behind; they are delivered afterwards. A no-op in
        any process but the one that built the lab (see ``_owner_pid``).
        """
        if os.getpid() != self._owner_pid:
            return
        blocked = threading.current_thread() is threading.main_thread()
        if blocked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._stack.close()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _build(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="flock-lab-", dir=self._workdir_parent)
        os.chmod(self.workdir, 0o755)  # FRR runs as user frr below it
        if not self.keep_workdir:
            self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        os.makedirs(self.state_dir, mode=0o700)
        os.makedirs(self.ipam_dir)

        self.router = self._netns("router", forwarding=True)
        self.node = self._netns("node", forwarding=True)
        self._build_uplink()
        self.write_include(EMPTY_INCLUDE)
        self.write_readiness({})
        if self.start_daemons:
            self.start_bird()
            self.start_frr()
            self.wait_sessions()

    def _netns(self, role: str, forwarding: bool = False) -> Netns:
        namespace = create_netns(role, forwarding=forwarding)
        self._stack.callback(delete_netns, namespace)
        return namespace

    def _build_uplink(self) -> None:
        assert self.node is not None and self.router is not None
        with self.node.iproute() as ipr:
            ipr.link(
                "add",
                ifname=UPLINK,
                kind="veth",
                index=NODE_UPLINK_INDEX,
                peer={"ifname": UPLINK, "net_ns_fd": self.router.path},
            )
            ipr.link("set", index=NODE_UPLINK_INDEX, state="up")
            ipr.addr("add", index=NODE_UPLINK_INDEX, address=NODE_UPLINK6, prefixlen=64, flags=IFA_F_NODAD)
            ipr.addr("add", index=NODE_UPLINK_INDEX, address=NODE_UPLINK4, prefixlen=24)
        with self.router.iproute() as ipr:
            index = ipr.link_lookup(ifname=UPLINK)[0]
            ipr.link("set", index=index, state="up")
            ipr.addr("add", index=index, address=ROUTER_UPLINK6, prefixlen=64, flags=IFA_F_NODAD)
            ipr.addr("add", index=index, address=ROUTER_UPLINK4, prefixlen=24)
        if index == NODE_UPLINK_INDEX:
            raise RuntimeError("uplink veth ends share an ifindex")
        self.router_uplink_index = index
        # ptp creates each pod's veth pair from inside the fresh pod netns,
        # where eth0 gets ifindex 2, with the host end placed straight in the
        # node netns at that netns's next free index. A parked veth pair
        # (down, no addresses) holds index 2 in the node, so the two ends of
        # a pod's veth never share an ifindex (LAB-NOTES 2: the first IPv6
        # neighbour solicitation would be lost). The kernel registers a veth's
        # peer first, so the unnumbered peer takes the next free index.
        with self.node.iproute() as ipr:
            ipr.link("add", ifname="pin0", kind="veth", peer="pin1")
            if not ipr.link("get", index=2):
                raise RuntimeError("could not park ifindex 2 in the node netns")

    # daemons -----------------------------------------------------------------

    def start_bird(self) -> None:
        assert self.node is not None
        if self.bird is None:
            self.bird = Bird(self.node, self.workdir)
            self.bird.write_config(
                bird_config_uplinks(
                    NODE_ROUTER_ID,
                    NODE_AS,
                    [(NODE_UPLINK6, ROUTER_UPLINK6, ROUTER_AS), (NODE_UPLINK4, ROUTER_UPLINK4, ROUTER_AS)],
                    self.include_path,
                    self.bird.log_path,
                )
            )
            self._stack.callback(self.bird.stop)
        self.bird.start()

    def start_frr(self) -> None:
        assert self.router is not None
        self.frr = Frr(
            self.router,
            self.workdir,
            ROUTER_ID,
            ROUTER_AS,
            [FrrNeighbor(NODE_UPLINK6, NODE_AS), FrrNeighbor(NODE_UPLINK4, NODE_AS)],
        )
        self._stack.callback(self.frr.stop)
        # BIRD is up first and FRR (connect timer 1) dials at once: ~70 ms to Established.
        self.frr.start()

    def wait_sessions(self, timeout: float = 10.0) -> None:
        """Both BGP sessions (one per family) Established on both sides; raises WaitTimeout."""
        assert self.frr is not None and self.bird is not None
        for address in (NODE_UPLINK6, NODE_UPLINK4):
            self.frr.wait_established(address, timeout)
        for protocol in ("uplink_v6", "uplink_v4"):
            self.bird.wait_established(protocol, timeout)

    def write_include(self, text: str) -> None:
        temp = self.include_path + ".lab-tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, self.include_path)

    # readiness -----------------------------------------------------------------

    def write_readiness(self, mapping: dict[str, bool]) -> None:
        """Replace the readiness file atomically (temp + rename in the same directory)."""
        self._readiness = dict(mapping)
        temp = os.path.join(self.workdir, f".readiness.{secrets.token_hex(4)}.tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(self._readiness, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.readiness_path)

    def set_ready(self, pod: Pod | str, ready: bool) -> None:
        self.set_readiness({pod: ready})

    def set_ready_container(self, container_id: str, ready: bool) -> None:
        """Readiness of a container ID the lab did not attach (e.g. a hand-written record)."""
        self.write_readiness({**self._readiness, container_id: ready})

    def set_readiness(self, changes: dict[Pod | str, bool]) -> None:
        """Flip several pods in one atomic rewrite; keys are the pods' container IDs."""
        mapping = dict(self._readiness)
        for pod, ready in changes.items():
            target = self.pods[pod] if isinstance(pod, str) else pod
            mapping[target.container_id] = ready
        self.write_readiness(mapping)

    # pods --------------------------------------------------------------------

    def plugin_entries(self) -> list[dict[str, Any]]:
        """The conflist's plugins: ptp + host-local, then flock-anycast."""
        ptp = ptp_config(self.cni_version, NETWORK_NAME, self.ipam_dir, POD_SUBNET4, POD_SUBNET6)
        # Default routes in the pod, as a cluster's IPAM config has them:
        # the echo reply from the anycast address goes back to the router.
        ptp["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        flock = {
            "cniVersion": self.cni_version,
            "name": NETWORK_NAME,
            "type": "flock-anycast",
            "capabilities": {"anycast": True},
            "flock": {"pools": list(POOLS), "stateDir": self.state_dir},
        }
        return [ptp, flock]

    def _plugin_binary(self, kind: str) -> str:
        return flock_anycast_binary() if kind == "flock-anycast" else reference_plugin(kind)

    def _plugin_config(
        self, entry: dict[str, Any], prev_result: dict[str, Any] | None, runtime_anycast: Sequence[str] | None
    ) -> dict[str, Any]:
        # What libcni does per plugin: inject name/cniVersion, runtimeConfig
        # for declared capabilities only, and the previous plugin's result.
        config = dict(entry)
        config["cniVersion"] = self.cni_version
        config["name"] = NETWORK_NAME
        if runtime_anycast is not None and entry.get("capabilities", {}).get("anycast"):
            config["runtimeConfig"] = {"anycast": list(runtime_anycast)}
        if prev_result is not None:
            config["prevResult"] = prev_result
        return config

    def _invoke(self, pod: Pod, command: str, entry: dict[str, Any], prev_result: dict[str, Any] | None) -> PluginRun:
        assert self.node is not None
        invocation = Invocation(
            command=command,
            container_id=pod.container_id,
            netns=pod.netns.path if pod.netns.exists() else "",
            ifname=pod.ifname,
            args=pod.args,
        )
        config = self._plugin_config(entry, prev_result, pod.runtime_anycast)
        return exec_plugin(self._plugin_binary(entry["type"]), invocation, config, host=self.node)

    def add_pod(
        self,
        name: str,
        anycast: Sequence[str] = (),
        *,
        via: str = "cni_args",
        chain: Sequence[str] = ("ptp", "flock-anycast"),
        ready: bool | None = None,
    ) -> Pod:
        """Make a pod netns and run ADD through the chain from inside the node netns.

        ``via``: ``cni_args`` (FLOCK_ANYCAST=…) or ``runtime_config``
        (``runtimeConfig.anycast``). ``chain=("ptp",)`` attaches without
        flock-anycast. ``ready`` (if given) is written to the readiness file
        before ADD. Raises AssertionError with the plugin's error on failure.
        """
        assert self.node is not None
        if name in self.pods:
            raise ValueError(f"pod {name} exists")
        netns = self._netns(f"pod-{name}"[:12])
        uid = secrets.token_hex(8)
        args = [
            "IgnoreUnknown=1",
            "K8S_POD_NAMESPACE=lab",
            f"K8S_POD_NAME={name}",
            f"K8S_POD_UID={uid}",
        ]
        if anycast and via == "cni_args":
            args.append("FLOCK_ANYCAST=" + ",".join(anycast))
        pod = Pod(
            name=name,
            netns=netns,
            container_id=f"{name}-{secrets.token_hex(6)}",
            anycast=tuple(anycast),
            uid=uid,
            chain=tuple(chain),
            args=";".join(args),
            runtime_anycast=tuple(anycast) if via == "runtime_config" else None,
        )
        self.pods[name] = pod
        if ready is not None:
            self.set_ready(pod, ready)
        entries = [e for e in self.plugin_entries() if e["type"] in pod.chain]
        result: dict[str, Any] | None = None
        done: list[dict[str, Any]] = []
        try:
            for entry in entries:
                run = self._invoke(pod, "ADD", entry, result)
                result = run.ok()
                done.append(entry)
        except BaseException:
            # A runtime tears a half-attached pod down with DEL, in reverse.
            for entry in reversed(done):
                self._invoke(pod, "DEL", entry, result)
            raise
        assert result is not None
        pod.result = result
        host = [i for i in result.get("interfaces", []) if not i.get("sandbox")]
        pod.host_ifname = host[0]["name"]
        with self.node.iproute() as ipr:
            pod.host_ifindex = ipr.link_lookup(ifname=pod.host_ifname)[0]
        with netns.iproute() as ipr:
            if ipr.link_lookup(ifname=pod.ifname) == [pod.host_ifindex]:
                raise RuntimeError(f"pod {name}: both veth ends have ifindex {pod.host_ifindex}")
        # Non-initial namespaces expose no neigh/default to inherit from, so
        # the proxy-ARP delay (LAB-NOTES 3) is cleared per device.
        self.node.set_sysctls({f"net/ipv4/neigh/{pod.host_ifname}/proxy_delay": "0"})
        netns.set_sysctls({f"net/ipv4/neigh/{pod.ifname}/proxy_delay": "0"})
        return pod

    def remove_pod(
        self,
        pod: Pod | str,
        *,
        plugins: Sequence[str] | None = None,
        delete_netns_too: bool = True,
    ) -> list[PluginRun]:
        """DEL through the chain in reverse (flock-anycast, then ptp); returns each run.

        ``plugins`` limits the DEL to those plugin types and keeps the pod
        (a runtime's DEL is the full chain; a partial DEL lets a test look
        between the steps). Raises AssertionError if a plugin fails.
        """
        target = self.pods[pod] if isinstance(pod, str) else pod
        entries = [e for e in self.plugin_entries() if e["type"] in target.chain]
        if plugins is not None:
            entries = [e for e in entries if e["type"] in plugins]
        runs = []
        for entry in reversed(entries):
            prev = target.result if self.cni_version not in ("0.3.0", "0.3.1") else None
            run = self._invoke(target, "DEL", entry, prev)
            run.ok()
            runs.append(run)
        if plugins is None:
            del self.pods[target.name]
            if delete_netns_too:
                delete_netns(target.netns)
        return runs

    def add_anycast_by_hand(self, pod: Pod, addresses: Sequence[str]) -> None:
        """Put addresses on the pod's lo directly (lab validation without the plugin)."""
        with pod.netns.iproute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            for address in addresses:
                ip = ipaddress.ip_address(address)
                ipr.addr(
                    "add",
                    index=lo,
                    address=str(ip),
                    prefixlen=ip.max_prefixlen,
                    flags=IFA_F_NODAD if ip.version == 6 else 0,
                )

    # reconciler ---------------------------------------------------------------

    def reconciler_config(self, **overrides: Any) -> dict[str, Any]:
        assert self.bird is not None
        config: dict[str, Any] = {
            "nodeName": "lab-node",
            "pools": list(POOLS),
            "stateDir": self.state_dir,
            "readiness": {"source": "file", "file": self.readiness_path},
            "routes": {"protocol": ROUTE_PROTOCOL},
            "drainDelay": self.drain_delay,
            "resyncInterval": 30,
            "debounce": 0.01,
            "maxWait": 0.1,
            "bird": {
                "mode": "include",
                "socket": self.bird.socket_path,
                "includeFile": self.include_path,
                "configFile": self.bird.config_path,
                "timeout": 2,
                "retry": {"initial": 0.1, "maximum": 0.5},
            },
            "http": {"listen": HTTP_LISTEN},
            "logLevel": "info",
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return config

    def start_reconciler(self, wait_healthy: bool = True, timeout: float = 10.0, **overrides: Any) -> DaemonProcess:
        """Start ``flock-reconciler --config`` in the node netns; waits for /healthz."""
        assert self.node is not None
        if self.reconciler is not None and self.reconciler.running():
            raise RuntimeError("reconciler already running")
        self.reconciler_config_path = os.path.join(self.workdir, "reconciler.yaml")
        with open(self.reconciler_config_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.reconciler_config(**overrides), handle, sort_keys=False)
        process = start_in_netns(
            self.node,
            "flock-reconciler",
            [flock_reconciler_binary(), "--config", self.reconciler_config_path],
            self.reconciler_log_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.reconciler = process
        self._stack.callback(process.stop)
        if wait_healthy:
            try:
                wait_until(self._reconciler_healthy, timeout, "flock-reconciler /healthz")
            except WaitTimeout as exc:
                raise WaitTimeout(f"{exc}\n--- reconciler log ---\n{process.log_tail(40)}") from exc
        return process

    def _reconciler_healthy(self) -> bool:
        assert self.reconciler is not None
        if not self.reconciler.running():
            raise DaemonError(f"flock-reconciler exited:\n{self.reconciler.log_tail(40)}")
        return self.http_get("/healthz").status == 200

    def stop_reconciler(self, timeout: float = 5.0) -> int | None:
        if self.reconciler is None:
            return None
        status = self.reconciler.stop(timeout)
        return status

    def run_reconciler_once(self, timeout: float = 30.0, **overrides: Any) -> subprocess.CompletedProcess:
        assert self.node is not None
        path = os.path.join(self.workdir, "reconciler-once.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.reconciler_config(**overrides), handle, sort_keys=False)
        return self.node.run(
            [flock_reconciler_binary(), "--config", path, "--once"], check=False, timeout=timeout
        )

    def http_get(self, path: str, timeout: float = 2.0) -> HttpReply:
        assert self.node is not None
        return http_get(self.node, HTTP_LISTEN, path, timeout)

    def metrics(self) -> dict[str, float]:
        reply = self.http_get("/metrics")
        if reply.status != 200:
            raise DaemonError(f"/metrics answered {reply.status}")
        return parse_metrics(reply.body)

    # observation ---------------------------------------------------------------

    def iproute(self, netns: Netns) -> IPRoute:
        """A netlink socket inside the router or node netns, opened once and kept for the lab's life.

        Only for the thread that built the lab (pyroute2 sockets are not
        shared across threads here).
        """
        ipr = self._iproutes.get(netns.name)
        if ipr is None:
            ipr = netns.iproute()
            self._iproutes[netns.name] = ipr
            self._stack.callback(ipr.close)
        return ipr

    def node_route(self, address: str, protocol: int | None = ROUTE_PROTOCOL) -> list[tuple[str, int]] | None:
        """Next hops of the node's host route to ``address`` (ours by default), None if absent."""
        assert self.node is not None
        return kernel_next_hops(self.node, host_prefix(address), protocol, self.iproute(self.node))

    def router_route(self, address: str) -> list[tuple[str, int]] | None:
        """Next hops of the router's kernel route for the host prefix (installed by zebra)."""
        assert self.router is not None
        return kernel_next_hops(self.router, host_prefix(address), None, self.iproute(self.router))

    def peer_has(self, address: str) -> bool:
        assert self.frr is not None
        return self.frr.has_prefix(host_prefix(address))

    def expected_next_hops(self, address: str, pods: Sequence[Pod]) -> list[tuple[str, int]]:
        return sorted(pod.next_hop(address) for pod in pods)

    def ping_from_router(self, address: str, count: int = 1, timeout: float = 2.0) -> bool:
        assert self.router is not None
        completed = self.router.run(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(max(1, int(timeout))), address],
            check=False,
        )
        return completed.returncode == 0

    def answering_pod(self, address: str) -> Pod | None:
        """Ping ``address`` once from the router and name the pod whose echo-reply counter moved."""
        before = {name: pod.echo_replies() for name, pod in self.pods.items()}
        if not self.ping_from_router(address):
            return None
        for name, pod in self.pods.items():
            if pod.echo_replies() > before[name]:
                return pod
        return None

    def add_node_route(self, address: str, pod: Pod, protocol: int = ROUTE_PROTOCOL) -> None:
        """A hand-made host route to a pod (what the reconciler would program)."""
        assert self.node is not None
        gateway, oif = pod.next_hop(address)
        ip = ipaddress.ip_address(address)
        self.iproute(self.node).route(
            "replace",
            dst=str(ip),
            dst_len=ip.max_prefixlen,
            gateway=gateway,
            oif=oif,
            proto=protocol,
            family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
        )

    def delete_node_route(self, address: str, protocol: int = ROUTE_PROTOCOL) -> None:
        assert self.node is not None
        ip = ipaddress.ip_address(address)
        self.iproute(self.node).route(
            "del",
            dst=str(ip),
            dst_len=ip.max_prefixlen,
            proto=protocol,
            family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
        )

    def validate(self, address6: str = "2001:db8:a::99", address4: str = "192.0.2.99", timeout: float = 10.0) -> None:
        """Prove the data path without the reconciler; leaves the lab as it found it.

        A ptp-only pod gets the addresses on lo by hand, the node a hand-made
        route, the include a hand-written static; then: prefix at FRR →
        router kernel route → ping from the router answered by the pod.
        Raises WaitTimeout/AssertionError naming the step that failed.
        """
        from lab.daemons import static_include

        assert self.bird is not None and self.frr is not None
        pod = self.add_pod("validate", chain=("ptp",))
        try:
            self.add_anycast_by_hand(pod, [address6, address4])
            for address in (address6, address4):
                self.add_node_route(address, pod)
            self.write_include(static_include([host_prefix(address6), host_prefix(address4)]))
            reply = self.bird.configure()
            assert reply.ok, f"BIRD rejected the hand-written include: {reply.lines}"
            for address in (address6, address4):
                wait_until(lambda a=address: self.peer_has(a), timeout, f"{address} at FRR")
                wait_until(lambda a=address: self.router_route(a), timeout, f"router kernel route to {address}")
                assert self.ping_from_router(address), f"ping {address} from the router unanswered"
        finally:
            self.write_include(EMPTY_INCLUDE)
            self.bird.configure()
            for address in (address6, address4):
                try:
                    self.delete_node_route(address)
                except Exception:
                    pass
            self.remove_pod(pod)
        for address in (address6, address4):
            wait_until(lambda a=address: not self.peer_has(a), timeout, f"{address} withdrawn from FRR")


@contextmanager
def lab(**kwargs: Any) -> Iterator[Lab]:
    with Lab(**kwargs) as built:
        yield built
