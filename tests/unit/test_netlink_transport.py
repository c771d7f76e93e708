"""rtnetlink.transport against a scripted kernel: sequence matching, ACKs, errors, dump-interrupt retry.

``ScriptedKernel`` stands in for the NETLINK_ROUTE socket: it records each
request and queues the datagrams a script answers it with, encoded the way
the kernel sends them. The real kernel is in tests/netns/test_netlink_transport.py.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from rtnetlink.transport import DumpInterrupted, NetlinkError, Rtnetlink

HEADER = struct.Struct("=IHHII")


class Request:
    def __init__(self, data: bytes) -> None:
        self.length, self.type, self.flags, self.sequence, self.port = HEADER.unpack_from(data)
        assert self.length == len(data)
        self.data = bytes(data)
        self.body = self.data[HEADER.size :]


class ScriptedKernel:
    """A stand-in NETLINK_ROUTE socket: ``answer(request)`` gives the datagrams to queue for it."""

    def __init__(self, answer: Callable[[Request], list[bytes]]) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self.pending: list[bytes] = []
        self.closed = False

    def send(self, data) -> int:
        request = Request(data)
        self.requests.append(request)
        self.pending.extend(self.answer(request))
        return len(data)

    def recv(self, size: int) -> bytes:
        assert self.pending, "the transport waits for an answer the kernel would never send"
        datagram = self.pending.pop(0)
        assert len(datagram) <= size
        return datagram

    def setsockopt(self, *args) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def encoded(message, kind: int, flags: int, sequence: int) -> bytes:
    message["header"] = {"type": kind, "flags": flags, "sequence_number": sequence, "pid": 4242}
    message.encode()
    return bytes(message.data)


def address(sequence: int, text: str, index: int = 1, flags: int = NLM_F_MULTI) -> bytes:
    message = ifaddrmsg()
    message["family"] = socket.AF_INET6 if ":" in text else socket.AF_INET
    message["prefixlen"] = 128 if ":" in text else 32
    message["index"] = index
    message["attrs"] = [("IFA_ADDRESS", text)]
    return encoded(message, RTM_NEWADDR, flags, sequence)


def ack(request: Request, code: int = 0, text: str | None = None, capped: bool = True) -> bytes:
    """NLMSG_ERROR for ``request``: errno 0 is the ACK; ``text`` as NLMSGERR_ATTR_MSG (with TLVs).

    ``capped``: only the request's header is echoed (NETLINK_CAP_ACK), else all of it.
    """
    flags = NLM_F_CAPPED if capped else 0
    tlvs = b""
    if text is not None:
        raw = text.encode() + b"\0"
        offset_tlv = struct.pack("=HHI", 8, 2, 20)  # NLMSGERR_ATTR_OFFS first, as the kernel may send it
        tlvs = offset_tlv + struct.pack("=HH", 4 + len(raw), 1) + raw + b"\0" * (-len(raw) % 4)
        flags |= NLM_F_ACK_TLVS
    echoed = request.data[: HEADER.size] if capped else request.data + b"\0" * (-len(request.data) % 4)
    payload = struct.pack("=i", -code) + echoed + tlvs
    return HEADER.pack(HEADER.size + len(payload), NLMSG_ERROR, flags, request.sequence, 4242) + payload


def done(sequence: int, code: int = 0, flags: int = NLM_F_MULTI) -> bytes:
    return HEADER.pack(HEADER.size + 4, NLMSG_DONE, flags, sequence, 4242) + struct.pack("=i", -code)


def transport(kernel: ScriptedKernel, **options) -> Rtnetlink:
    return Rtnetlink(kernel, {RTM_NEWADDR: ifaddrmsg}, **options)  # type: ignore[arg-type]


def addresses_of(messages) -> list[str]:
    return [message.get_attr("IFA_ADDRESS") for message in messages]


# -- requests ----------------------------------------------------------------------


def test_request_is_numbered_and_ends_at_its_ack():
    kernel = ScriptedKernel(lambda request: [ack(request)])
    rtnl = transport(kernel)

    assert rtnl.request(ifaddrmsg(), RTM_NEWADDR) == []
    assert rtnl.request(ifaddrmsg(), RTM_NEWADDR, NLM_F_ACK | 0x400) == []

    first, second = kernel.requests
    assert (first.type, first.flags, first.sequence) == (RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK, 1)
    assert (second.flags, second.sequence) == (NLM_F_REQUEST | NLM_F_ACK | 0x400, 2)
    assert kernel.pending == []


def test_replies_of_other_sequence_numbers_are_skipped():
    """Late answers to an abandoned request, in their own datagram and in the same one, never count."""

    def answer(request):
        stale = request.sequence - 1
        return [
            address(stale, "198.51.100.1", flags=0)
            + ack(Request(request.data[:8] + struct.pack("=I", stale) + request.data[12:]), errno.EPERM),
            address(stale + 7, "198.51.100.2", flags=0) + address(request.sequence, "192.0.2.53", flags=0) + ack(request),
        ]

    kernel = ScriptedKernel(answer)
    replies = transport(kernel).request(ifaddrmsg(), RTM_NEWADDR)
    assert addresses_of(replies) == ["192.0.2.53"]


def test_replies_before_the_ack_are_returned_and_the_ack_is_read():
    kernel = ScriptedKernel(lambda request: [address(request.sequence, "192.0.2.53", flags=0), ack(request)])
    rtnl = transport(kernel)
    assert addresses_of(rtnl.request(ifaddrmsg(), RTM_GETADDR)) == ["192.0.2.53"]
    assert kernel.pending == []  # the ACK was consumed, not left for the next request


def test_request_without_ack_ends_at_its_single_reply():
    """``ip route get``: no NLM_F_ACK, one reply without NLM_F_MULTI."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    def answer(request):
        route = rtmsg()
        route["family"] = socket.AF_INET
        route["dst_len"] = 32
        route["attrs"] = [("RTA_DST", "192.0.2.1"), ("RTA_OIF", 7)]
        return [encoded(route, RTM_NEWROUTE, 0, request.sequence)]

    kernel = ScriptedKernel(answer)
    rtnl = Rtnetlink(kernel, {RTM_NEWROUTE: rtmsg})  # type: ignore[arg-type]
    [route] = rtnl.request(rtmsg(), RTM_GETROUTE, 0)
    assert route.get_attr("RTA_OIF") == 7
    assert kernel.requests[0].flags == NLM_F_REQUEST


def test_kernel_refusal_is_one_exception_with_errno_and_text():
    for capped in (True, False):
        kernel = ScriptedKernel(
            lambda request, capped=capped: [ack(request, errno.ENETUNREACH, "Nexthop has invalid gateway", capped)]
        )
        with pytest.raises(NetlinkError) as raised:
            transport(kernel).request(ifaddrmsg(), RTM_NEWADDR)
        assert raised.value.code == errno.ENETUNREACH
        assert raised.value.detail == "Nexthop has invalid gateway"
        assert str(raised.value) == "Network is unreachable (Nexthop has invalid gateway)"

    kernel = ScriptedKernel(lambda request: [ack(request, errno.EEXIST)])
    with pytest.raises(NetlinkError) as raised:
        transport(kernel).request(ifaddrmsg(), RTM_NEWADDR)
    assert (raised.value.code, raised.value.detail) == (errno.EEXIST, None)


def test_truncated_message_is_a_netlink_error():
    kernel = ScriptedKernel(lambda request: [ack(request)[:-4]])
    with pytest.raises(NetlinkError) as raised:
        transport(kernel).request(ifaddrmsg(), RTM_NEWADDR)
    assert raised.value.code == errno.EBADMSG


def test_socket_failure_stays_an_oserror():
    class Broken(ScriptedKernel):
        def recv(self, size):
            raise ConnectionResetError(errno.ECONNRESET, "gone")

    with pytest.raises(OSError):
        transport(Broken(lambda request: [])).request(ifaddrmsg(), RTM_NEWADDR)


# -- dumps --------------------------------------------------------------------------


def test_dump_collects_every_part_up_to_done():
    def answer(request):
        assert request.flags == NLM_F_REQUEST | NLM_F_DUMP
        seq = request.sequence
        return [address(seq, "192.0.2.1") + address(seq, "10.0.0.1", index=2), address(seq, "2001:db8::1") + done(seq)]

    rtnl = transport(ScriptedKernel(answer))
    assert addresses_of(rtnl.dump(ifaddrmsg(), RTM_GETADDR)) == ["192.0.2.1", "10.0.0.1", "2001:db8::1"]
    on_lo = rtnl.dump(
        ifaddrmsg(), RTM_GETADDR, lambda message: message.get_attr("IFA_ADDRESS") if message["index"] == 1 else None
    )
    assert on_lo == ["192.0.2.1", "2001:db8::1"]


def test_interrupted_dump_is_requested_again_and_only_the_clean_one_counts():
    """NLM_F_DUMP_INTR on a part (and on NLMSG_DONE): read to the end, drop everything, ask again."""
    attempts = []

    def answer(request):
        seq = request.sequence
        attempts.append(seq)
        if len(attempts) == 1:
            return [
                address(seq, "192.0.2.1"),
                address(seq, "192.0.2.2", flags=NLM_F_MULTI | NLM_F_DUMP_INTR) + done(seq, flags=NLM_F_MULTI | NLM_F_DUMP_INTR),
            ]
        return [address(seq, "192.0.2.1") + address(seq, "192.0.2.3") + done(seq)]

    kernel = ScriptedKernel(answer)
    converted = []
    result = transport(kernel).dump(
        ifaddrmsg(), RTM_GETADDR, lambda message: converted.append(1) or message.get_attr("IFA_ADDRESS")
    )
    assert result == ["192.0.2.1", "192.0.2.3"]
    assert attempts == [1, 2]  # a fresh sequence number for the retry
    assert kernel.pending == []
    assert [request.body for request in kernel.requests] == [kernel.requests[0].body] * 2  # the same request again


def test_interrupt_flag_on_done_alone_also_retries():
    calls = []

    def answer(request):
        calls.append(request.sequence)
        flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if len(calls) == 1 else 0)
        return [address(request.sequence, "192.0.2.9") + done(request.sequence, flags=flags)]

    assert addresses_of(transport(ScriptedKernel(answer)).dump(ifaddrmsg(), RTM_GETADDR)) == ["192.0.2.9"]
    assert len(calls) == 2


def test_dump_that_never_settles_raises_dump_interrupted():
    def answer(request):
        return [address(request.sequence, "192.0.2.1", flags=NLM_F_MULTI | NLM_F_DUMP_INTR) + done(request.sequence)]

    kernel = ScriptedKernel(answer)
    with pytest.raises(DumpInterrupted) as raised:
        transport(kernel, dump_attempts=3).dump(ifaddrmsg(), RTM_GETADDR)
    assert raised.value.code == errno.EINTR
    assert isinstance(raised.value, NetlinkError)
    assert len(kernel.requests) == 3


def test_dump_refused_at_start_or_in_done_raises():
    kernel = ScriptedKernel(lambda request: [ack(request, errno.EPERM)])
    with pytest.raises(NetlinkError) as raised:
        transport(kernel).dump(ifaddrmsg(), RTM_GETADDR)
    assert raised.value.code == errno.EPERM

    # A strict dump of a table that does not exist ends with ENOENT in NLMSG_DONE.
    kernel = ScriptedKernel(lambda request: [done(request.sequence, errno.ENOENT)])
    with pytest.raises(NetlinkError) as raised:
        transport(kernel).dump(ifaddrmsg(), RTM_GETADDR)
    assert raised.value.code == errno.ENOENT


def test_a_dump_after_an_abandoned_one_skips_its_leftovers():
    """A convert that raises leaves the rest of its dump queued; the next exchange reads past it."""
    answers = iter(
        [
            lambda request: [
                address(request.sequence, "192.0.2.1"),
                address(request.sequence, "192.0.2.2") + done(request.sequence),
            ],
            lambda request: [address(request.sequence, "192.0.2.3") + done(request.sequence)],
        ]
    )
    kernel = ScriptedKernel(lambda request: next(answers)(request))
    rtnl = transport(kernel)

    def refuse(message):
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError):
        rtnl.dump(ifaddrmsg(), RTM_GETADDR, refuse)
    assert addresses_of(rtnl.dump(ifaddrmsg(), RTM_GETADDR)) == ["192.0.2.3"]


def test_options_and_close():
    options = []

    class Recording(ScriptedKernel):
        def setsockopt(self, *args):
            options.append(args)

    kernel = Recording(lambda request: [])
    with Rtnetlink(kernel, {}, strict_checking=True, extended_acks=True):  # type: ignore[arg-type]
        pass
    assert options == [(270, 12, 1), (270, 11, 1)]  # SOL_NETLINK: NETLINK_GET_STRICT_CHK, NETLINK_EXT_ACK
    assert kernel.closed


def test_notifications_decode_only_the_types_asked_for_and_refuse_a_truncated_datagram():
    from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWROUTE
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    from rtnetlink.transport import NetlinkError, notifications

    def encoded(message, kind):
        message["header"]["type"] = kind
        message.encode()
        return message.data

    address = ifaddrmsg()
    address["family"] = 2
    route = rtmsg()
    route["family"], route["dst_len"], route["proto"], route["table"] = 2, 32, 70, 254
    route["attrs"] = [("RTA_DST", "192.0.2.53")]
    datagram = encoded(address, RTM_NEWADDR) + encoded(route, RTM_NEWROUTE)

    [decoded] = notifications(datagram, {RTM_NEWROUTE: rtmsg})
    assert decoded["proto"] == 70 and decoded.get_attr("RTA_DST") == "192.0.2.53"
    with pytest.raises(NetlinkError):
        list(notifications(datagram[:-4], {RTM_NEWROUTE: rtmsg}))
