"""Throwaway network namespaces, created and deleted by name.

Namespaces are bind-mounted under /run/netns (as `ip netns add` does) so
that CNI plugins can be handed a path, daemons can be started with
``nsenter --net=PATH`` (``ip netns exec`` would remount /sys), and a
leftover is visible to ``ip netns list``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import netns as pyroute2_netns
from pyroute2.iproute.linux import IPRoute

NETNS_DIR = "/run/netns"
TEST_PREFIX = "flt"

# Sysctls every new lab namespace gets before any link exists (LAB-NOTES):
# DAD off so IPv6 addresses are usable at once, loose reverse-path checks.
_BASE_SYSCTLS = {
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    def iproute(self) -> IPRoute:
        """A netlink socket inside this namespace; flags=0 never creates one."""
        return IPRoute(netns=self.path, flags=0)

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside this namespace (nsenter, not ip netns exec)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), **kwargs)

    def set_sysctls(self, values: dict[str, str]) -> None:
        script = "".join(f"echo {value} > /proc/sys/{key}\n" for key, value in values.items())
        self.run(["sh", "-ec", script])

    def exists(self) -> bool:
        return os.path.exists(self.path)


def unique_name(role: str) -> str:
    return f"{TEST_PREFIX}-{role}-{secrets.token_hex(3)}"


def create_netns(role: str, forwarding: bool = False) -> Netns:
    """A new namespace with lo up, DAD off and, for routers and nodes, forwarding on."""
    namespace = Netns(unique_name(role))
    pyroute2_netns.create(namespace.name)
    try:
        sysctls = dict(_BASE_SYSCTLS)
        if forwarding:
            sysctls["net/ipv4/ip_forward"] = "1"
            sysctls["net/ipv6/conf/all/forwarding"] = "1"
        namespace.set_sysctls(sysctls)
        with namespace.iproute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    except BaseException:
        delete_netns(namespace)
        raise
    return namespace


def delete_netns(namespace: Netns) -> None:
    """Remove the namespace; already gone is fine."""
    if namespace.exists():
        pyroute2_netns.remove(namespace.name)


@contextmanager
def netns_pool() -> Iterator[list[Netns]]:
    """Collects namespaces made inside the block and deletes them all afterwards."""
    created: list[Netns] = []
    try:
        yield created
    finally:
        for namespace in reversed(created):
            delete_netns(namespace)


def list_lab_namespaces() -> list[str]:
    try:
        return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(TEST_PREFIX + "-"))
    except FileNotFoundError:
        return []


def wire_pod(node: Netns, pod: Netns, device: str, index: int, ip4: str, ip6: str) -> None:
    """A veth from ``node`` (``device``, ifindex ``index``) to ``pod`` (``eth0``) with /32 and /128 host routes.

    What a ptp-style CNI plugin leaves: the pod's addresses on its eth0 and
    a host route to each on the node. The pair is created directly in both
    namespaces with distinct ifindexes (LAB-NOTES 1 and 2).
    """
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    with node.iproute() as ipr:
        ipr.link("add", ifname=device, index=index, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod.path})
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst=f"{ip4}/32", oif=index, scope=253)
        ipr.route("add", dst=f"{ip6}/128", oif=index)
    with pod.iproute() as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=eth0, state="up")
        ipr.addr("add", index=eth0, address=ip4, prefixlen=32)
        ipr.addr("add", index=eth0, address=ip6, prefixlen=128, flags=IFA_F_NODAD)
