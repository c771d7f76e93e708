"""rtnetlink.transport on the real kernel, in throwaway namespaces (root).

Both ways of opening a socket in another namespace leave the calling thread
where it was; the kernel's refusals arrive as NetlinkError with errno and
extended-ACK text; a stale answer left on the socket is skipped.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rtnetlink.transport import LinkHeader, NetlinkError, Rtnetlink, rtnetlink_socket, rtnetlink_socket_entering

pytestmark = pytest.mark.root


@pytest.fixture
def netns(make_netns):
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    namespace = make_netns("transport")
    with namespace.iproute() as ipr:
        ipr.link("add", ifname="flk-veth0", kind="veth", peer="flk-peer0")
        index = ipr.link_lookup(ifname="flk-veth0")[0]
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address="10.77.0.1", prefixlen=24)
    return namespace


def link_names(rtnl: Rtnetlink) -> set[str]:
    return set(rtnl.dump(LinkHeader(), RTM_GETLINK, lambda message: message.get_attr("IFLA_IFNAME")))


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_forked_helper_socket_is_in_the_namespace_and_the_thread_never_moves(netns):
    before = own_netns()
    with Rtnetlink(rtnetlink_socket(netns.path), {RTM_NEWLINK: LinkHeader}) as rtnl:
        assert own_netns() == before
        assert link_names(rtnl) == {"lo", "flk-veth0", "flk-peer0"}


def test_entering_socket_is_in_the_namespace_and_the_thread_returns(netns):
    before = own_netns()
    fd = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sock = rtnetlink_socket_entering(fd)
    finally:
        os.close(fd)
    assert own_netns() == before
    with Rtnetlink(sock, {RTM_NEWLINK: LinkHeader}) as rtnl:
        assert link_names(rtnl) == {"lo", "flk-veth0", "flk-peer0"}


def test_refusal_carries_errno_and_the_kernels_text(netns):
    route = rtmsg()
    route["family"] = socket.AF_INET
    route["dst_len"] = 32
    route["table"] = 254
    route["proto"] = 70
    route["type"] = 1
    route["attrs"] = [("RTA_DST", "192.0.2.1"), ("RTA_GATEWAY", "10.99.0.1"), ("RTA_OIF", 1)]
    with Rtnetlink(rtnetlink_socket(netns.path), {}, extended_acks=True) as rtnl:
        with pytest.raises(NetlinkError) as raised:
            rtnl.request(route, RTM_NEWROUTE, 0x4 | NLM_F_CREATE | NLM_F_REPLACE)
    assert raised.value.code == errno.ENETUNREACH
    assert raised.value.detail  # e.g. "Nexthop has invalid gateway"


def test_strict_dump_of_a_missing_table_is_enoent(netns):
    request = rtmsg()
    request["family"] = socket.AF_INET
    request["table"] = 252
    request["attrs"] = [("RTA_TABLE", 4242)]
    with Rtnetlink(rtnetlink_socket(netns.path), {RTM_NEWROUTE: rtmsg}, strict_checking=True, extended_acks=True) as rtnl:
        with pytest.raises(NetlinkError) as raised:
            rtnl.dump(request, RTM_GETROUTE)
        assert raised.value.code == errno.ENOENT
        # The socket is still usable, and the main table dumps.
        request["attrs"] = [("RTA_TABLE", 254)]
        assert rtnl.dump(request, RTM_GETROUTE) != []


def test_a_stale_answer_on_the_socket_is_skipped(netns):
    sock = rtnetlink_socket(netns.path)
    with Rtnetlink(sock, {RTM_NEWADDR: ifaddrmsg, RTM_NEWLINK: LinkHeader}) as rtnl:
        # An abandoned request: its answer (link + ACK, sequence 77) waits on the socket.
        abandoned = LinkHeader()
        abandoned["attrs"] = [("IFLA_IFNAME", "lo")]
        abandoned["header"] = {"type": RTM_GETLINK, "flags": 0x5, "sequence_number": 77}
        abandoned.encode()
        sock.send(abandoned.data)
        addresses = rtnl.dump(ifaddrmsg(), 0x16, lambda message: message.get_attr("IFA_ADDRESS"))
        assert "10.77.0.1" in addresses
        query = LinkHeader()
        query["attrs"] = [("IFLA_IFNAME", "flk-veth0")]
        [link] = rtnl.request(query, RTM_GETLINK)
        assert link.get_attr("IFLA_IFNAME") == "flk-veth0"
