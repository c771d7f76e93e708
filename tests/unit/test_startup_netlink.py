"""The light netlink path sends what pyroute2's IPRoute sent; the deferred pyroute2 import stays transparent.

The loopback adapter builds its requests from pyroute2's message classes
instead of calling IPRoute, and sends them over ``rtnetlink.transport``.
The expected bytes below are what
``IPRoute.link_lookup``/``link('set', state='up')``/``addr(...)`` put on
the wire for the same operations (captured with strace from the plugin as
it was), minus the sequence number and port id in the header; here they
are read from a scripted socket under the real transport.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from cni_plugin.loopback import NetlinkPodLoopback
from tests.unit.test_netlink_transport import ScriptedKernel, ack, done, encoded

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V6 = ipaddress.ip_address("2001:db8:a::53")
V4 = ipaddress.ip_address("192.0.2.53")

GETLINK_LO = (0x12, 0x005, "00000000000000000000000000000000" "070003006c6f0000")
NEWLINK_UP = (0x10, 0x005, "00000000010000000100000001000000")
NEWADDR_V6 = (0x14, 0x505, "0a80000001000000" "1400010020010db8000a0000000000000000005308000800" "02000000")
NEWADDR_V4 = (0x14, 0x505, "0220000001000000" "08000100c0000235" "0800080000000000" "08000200c0000235")
DELADDR_V6 = (0x15, 0x005, "0a80000001000000" "1400010020010db8000a00000000000000000053")
DELADDR_V4 = (0x15, 0x005, "0220000001000000" "08000100c0000235" "08000200c0000235")
GETADDR_DUMP = (0x16, 0x301, "0000000000000000")


class RecordingSocket:
    """Opens the plugin's real transport over a scripted kernel socket; records the requests as sent."""

    def __init__(self, lo_flags: int, addresses=(), refuse=None):
        self.lo_flags = lo_flags
        self.addresses = addresses
        self.refuse = refuse or {}
        self.kernel = ScriptedKernel(self.answer)

    @property
    def sent(self) -> list[tuple[int, int, str]]:
        return [(request.type, request.flags, request.body.hex()) for request in self.kernel.requests]

    def __call__(self, netns_path: str, inode=None):
        from cni_plugin.rtnl import pod_rtnetlink

        return pod_rtnetlink(self.kernel)

    def answer(self, request) -> list[bytes]:
        from rtnetlink.transport import LinkHeader

        if request.type in self.refuse:
            return [ack(request, self.refuse[request.type])]
        if request.type == 0x12:  # RTM_GETLINK lo: the link, then the ACK
            link = LinkHeader()
            link["index"], link["flags"] = 1, self.lo_flags
            link["attrs"] = [("IFLA_IFNAME", "lo")]
            return [encoded(link, 0x10, 0, request.sequence), ack(request)]
        if request.type == 0x16:  # RTM_GETADDR dump
            parts = b"".join(encoded(message, 0x14, 0x2, request.sequence) for message in self.addresses)
            return [parts + done(request.sequence)]
        return [ack(request)]


def test_add_sends_iproutes_requests(tmp_path):
    recorder = RecordingSocket(lo_flags=0x1)
    NetlinkPodLoopback(open_socket=recorder).ensure_addresses(str(tmp_path), [V6, V4])
    assert recorder.sent == [GETLINK_LO, NEWADDR_V6, NEWADDR_V4]


def test_add_brings_lo_up_first_when_it_is_down(tmp_path):
    recorder = RecordingSocket(lo_flags=0x0)
    NetlinkPodLoopback(open_socket=recorder).ensure_addresses(str(tmp_path), [V4])
    assert recorder.sent == [GETLINK_LO, NEWLINK_UP, NEWADDR_V4]


def test_del_sends_iproutes_requests(tmp_path):
    recorder = RecordingSocket(lo_flags=0x1)
    NetlinkPodLoopback(open_socket=recorder).delete_addresses(str(tmp_path), [V6, V4])
    assert recorder.sent == [GETLINK_LO, DELADDR_V6, DELADDR_V4]


def test_check_dumps_addresses_and_keeps_those_on_lo(tmp_path):
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    def address(index, text, prefixlen):
        message = ifaddrmsg()
        message["index"], message["prefixlen"] = index, prefixlen
        message["attrs"] = [("IFA_ADDRESS", text)]
        return message

    recorder = RecordingSocket(
        lo_flags=0x1, addresses=[address(1, "192.0.2.53", 32), address(2, "10.244.0.5", 24), address(1, "2001:db8:a::53", 128)]
    )
    found = NetlinkPodLoopback(open_socket=recorder).list_addresses(str(tmp_path))
    assert recorder.sent == [GETLINK_LO, GETADDR_DUMP]
    assert found == {(V4, 32), (V6, 128)}


def test_netlink_errors_are_translated_once(tmp_path):
    from netconf.errors import NetlinkFailure, PodNetnsUnusable

    def Refusing(code_for):
        return RecordingSocket(lo_flags=0x1, refuse=code_for)

    with pytest.raises(PodNetnsUnusable, match="no loopback interface"):
        NetlinkPodLoopback(open_socket=Refusing({0x12: 19})).ensure_addresses(str(tmp_path), [V4])  # ENODEV
    with pytest.raises(NetlinkFailure, match="Operation not permitted") as raised:
        NetlinkPodLoopback(open_socket=Refusing({0x14: 1})).ensure_addresses(str(tmp_path), [V4])  # EPERM
    assert raised.value.code == 104
    # Already gone is fine for DEL.
    NetlinkPodLoopback(open_socket=Refusing({0x15: 99})).delete_addresses(str(tmp_path), [V4])  # EADDRNOTAVAIL


def test_missing_netns_is_refused_before_any_socket(tmp_path):
    from netconf.errors import PodNetnsUnusable

    recorder = RecordingSocket(lo_flags=0x1)
    with pytest.raises(PodNetnsUnusable):
        NetlinkPodLoopback(open_socket=recorder).ensure_addresses(str(tmp_path / "gone"), [V4])
    NetlinkPodLoopback(open_socket=recorder).delete_addresses(str(tmp_path / "gone"), [V4])
    assert recorder.sent == []


@pytest.mark.parametrize(
    "path, reason",
    [
        ("not-a-netns", "not a network namespace file"),
        ("/proc/self/ns/net", "the network namespace flock-anycast runs in"),
        ("/proc/self/ns/uts", "not a network namespace"),
    ],
)
def test_socket_in_a_path_that_is_no_pod_netns_is_refused_without_switching(tmp_path, path, reason):
    from cni_plugin.rtnl import NamespaceRefused, socket_in_netns

    fake = tmp_path / "not-a-netns"
    fake.write_bytes(b"")
    before = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(NamespaceRefused, match=reason):
        socket_in_netns(str(tmp_path / path), 16, 2, 0)  # AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE
    assert os.readlink("/proc/thread-self/ns/net") == before


DEFERRED_INIT_PROBE = r"""
import sys
from cni_plugin.startup import defer_package_init
defer_package_init("pyroute2")
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2 import config                      # a submodule: no package __init__ yet
assert "pyroute2.ndb.main" not in sys.modules, "package __init__ ran for a submodule"
assert config.__name__ == "pyroute2.config"
from pyroute2 import IPRoute                     # a package attribute: runs the real __init__
assert "pyroute2.ndb.main" in sys.modules
import pyroute2
assert pyroute2.IPRoute is IPRoute and pyroute2.__version__
print("ok")
"""


def test_deferred_pyroute2_init_is_transparent():
    completed = subprocess.run(
        [sys.executable, "-c", DEFERRED_INIT_PROBE], capture_output=True, text=True, cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO}, timeout=120,
    )
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr


def test_frozen_build_runs_no_pyinstaller_runtime_hooks():
    """The spec drops PyInstaller's run-time hooks (~25 ms per exec); the built archive must agree."""
    from lab.plugin import FROZEN_BINARY

    if not os.path.exists(FROZEN_BINARY):
        pytest.skip("frozen binary not built (make build)")
    from PyInstaller.archive.readers import CArchiveReader

    entries = CArchiveReader(os.path.realpath(FROZEN_BINARY)).toc
    scripts = [name for name, entry in entries.items() if entry[-1] == "s"]
    assert "flock_anycast" in scripts
    assert not [name for name in scripts if name.startswith("pyi_rth_")], scripts
