"""A client for BIRD 2's control socket, spoken directly (no ``birdc``).

Two layers in one module:

* pure: :class:`ReplyParser` turns bytes into :class:`BirdReply` objects
  following BIRD's line protocol, and the ``parse_*`` helpers read the few
  replies the exporter needs. Unit-tested from replies recorded from a real
  BIRD 2.0.12 (``tests/unit/data/bird_replies``).
* effectful: :class:`BirdControl` owns one Unix socket connection.

The protocol (BIRD ``doc/reply_codes``, ``sysdep/unix/main.c``): on connect
BIRD sends a greeting (``0001 BIRD 2.0.12 ready.``); then the client writes
one command per line and BIRD answers with lines ``DDDD-text`` (more lines
follow), `` text`` (continuation: same code as the line before) and a last
line ``DDDD text``. The last line's code is the verdict: 0xxx done, 1xxx and
2xxx only appear on data lines, 8xxx is a run-time error (``8001 Network not
found``, ``8002 <file>:<line>:<col> <msg>``), 9xxx a parse error of the
command. We judge BIRD only by these codes; ``birdc``'s exit status differs
between versions.

Every OS-level failure (socket missing, refused, timed out, closed mid-reply)
is translated here, once, into :class:`BirdUnavailable`; a reply that does not
follow the protocol becomes :class:`BirdProtocolError`. Error replies are not
exceptions: they are returned, and the caller judges the code.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass

# Reply codes this adapter acts on (BIRD 2.0.12 doc/reply_codes).
CODE_OK = 0
CODE_WELCOME = 1
CODE_READING_CONFIGURATION = 2
CODE_RECONFIGURED = 3
CODE_RECONFIGURATION_IN_PROGRESS = 4
CODE_RECONFIGURATION_QUEUED = 5
CODE_STATUS = 13
CODE_NOTHING_TO_DO = 19
CODE_CONFIGURATION_OK = 20
CODE_NETWORK_NOT_FOUND = 8001
CODE_CONFIGURATION_FILE_ERROR = 8002

# `configure` answers: 0003 done; 0004 accepted, old protocols still shutting
# down; 0005 accepted and queued behind a reconfiguration in progress. BIRD
# 2.0.12 answers an unchanged config with 0003 too; it sends 0019 "Nothing to
# do" only to `configure confirm`/`undo` with nothing pending. 0019 is still
# taken as success should another version send it to `configure`: the export
# is confirmed from BIRD's tables afterwards anyway.
CONFIGURE_ACCEPTED = frozenset(
    {CODE_RECONFIGURED, CODE_RECONFIGURATION_IN_PROGRESS, CODE_RECONFIGURATION_QUEUED, CODE_NOTHING_TO_DO}
)

# A reply larger than this is not something BIRD sends us on purpose
# (`show route` for 10,000s of statics is well under a megabyte).
MAX_REPLY_BYTES = 64 * 1024 * 1024

_LINE = re.compile(rb"^(\d{4})([ -])(.*)$", re.DOTALL)


class BirdError(Exception):
    """Base of the errors this module raises."""


class BirdUnavailable(BirdError):
    """The control socket cannot be reached, timed out or closed mid-reply."""


class BirdNotListening(BirdUnavailable):
    """Nothing accepts connections on the socket (no file, refused): BIRD is not running there."""


class BirdProtocolError(BirdError):
    """BIRD sent something that does not follow the control socket protocol."""


@dataclass(frozen=True)
class BirdReply:
    """One complete answer: every (code, text) line, the last one included.

    ``code`` is the last line's code, the verdict on the command.
    """

    lines: tuple[tuple[int, str], ...]

    @property
    def code(self) -> int:
        return self.lines[-1][0]

    @property
    def message(self) -> str:
        """The last line's text, e.g. ``Reconfigured`` or a parse error."""
        return self.lines[-1][1]

    @property
    def is_error(self) -> bool:
        return self.code >= 8000

    def texts(self, code: int | None = None) -> list[str]:
        """Texts of all lines, or of the lines with this code."""
        return [text for line_code, text in self.lines if code is None or line_code == code]

    def describe(self) -> str:
        """``DDDD text`` of the last line, for logs and error messages."""
        return f"{self.code:04d} {self.message}".rstrip()


class ReplyParser:
    """Incremental parser: feed bytes, take complete replies.

    Pure — no socket — so the protocol is tested from recorded bytes.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[tuple[int, str]] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._size += len(data)
        if self._size > MAX_REPLY_BYTES:
            raise BirdProtocolError(f"reply larger than {MAX_REPLY_BYTES} bytes")

    def next_reply(self) -> BirdReply | None:
        """The next complete reply, or None until more bytes arrive.

        Raises BirdProtocolError for a line that is neither ``DDDD-``,
        ``DDDD `` nor a continuation after a coded line.
        """
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return None
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            match = _LINE.match(raw)
            if match:
                code = int(match.group(1))
                text = _decode(match.group(3))
                self._lines.append((code, text))
                if match.group(2) == b" ":
                    reply = BirdReply(tuple(self._lines))
                    self._lines = []
                    self._size = len(self._buffer)
                    return reply
            elif raw.startswith(b" ") and self._lines:
                # A continuation carries the code of the line before it.
                self._lines.append((self._lines[-1][0], _decode(raw[1:])))
            else:
                raise BirdProtocolError(f"unexpected line from BIRD: {raw[:200]!r}")


def _decode(raw: bytes) -> str:
    # Interface names, descriptions and file names are bytes to BIRD.
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def parse_replies(data: bytes) -> list[BirdReply]:
    """All complete replies in data (a greeting counts as one); BirdProtocolError on garbage."""
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


# --- readers of specific replies (pure) -------------------------------------


@dataclass(frozen=True)
class ProtocolState:
    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str


def parse_protocols(reply: BirdReply) -> dict[str, ProtocolState]:
    """``show protocols``: name → state; rows are the 1002 lines (2002 is the header)."""
    protocols: dict[str, ProtocolState] = {}
    if reply.is_error:
        return protocols
    for text in reply.texts(1002):
        fields = text.split(None, 5)
        if len(fields) < 5:
            continue
        name, proto, table, state, since = fields[:5]
        info = fields[5].strip() if len(fields) > 5 else ""
        protocols[name] = ProtocolState(name, proto, table, state, since, info)
    return protocols


def parse_route_networks(reply: BirdReply) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``show route ...``: the networks listed (1007 lines, first token).

    Lines of further routes for the same network start with blanks and carry
    no network; ``Table master4:`` headers are skipped the same way.
    """
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    if reply.is_error:
        return networks
    for text in reply.texts(1007):
        if not text or text[0].isspace():
            continue
        token = text.split(None, 1)[0]
        try:
            networks.add(ipaddress.ip_network(token))
        except ValueError:
            continue
    return networks


_COUNT = re.compile(r"^(\d+) of (\d+) routes for (\d+) networks in table (\S+)$")


def parse_route_count(reply: BirdReply) -> int | None:
    """``show route ... count``: routes counted across the tables listed; None if absent."""
    total = None
    for text in reply.texts(1007) + reply.texts(14):
        match = _COUNT.match(text.strip())
        if match:
            total = (total or 0) + int(match.group(1))
    return total


_STATUS_TIME = re.compile(r"^(Last reboot|Last reconfiguration) on (.+)$")


def parse_status(reply: BirdReply) -> dict[str, str]:
    """``show status``: version, router id, last reboot and reconfiguration (BIRD's local time)."""
    status: dict[str, str] = {}
    for code, text in reply.lines:
        text = text.strip()
        if code == 1000:
            status["version"] = text
        elif text.startswith("Router ID is "):
            status["router_id"] = text.removeprefix("Router ID is ")
        elif match := _STATUS_TIME.match(text):
            key = "last_reboot" if match.group(1) == "Last reboot" else "last_reconfiguration"
            status[key] = match.group(2)
    if reply.code == CODE_STATUS:
        status["daemon"] = reply.message
    return status


_NEIGHBOR_ADDRESS = re.compile(r"^\s*Neighbor address:\s+(\S+)")


def parse_neighbor_addresses(reply: BirdReply) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``show protocols all``: the ``Neighbor address:`` of every BGP protocol (a ``%iface`` scope dropped)."""
    addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    if reply.is_error:
        return addresses
    for text in reply.texts():
        match = _NEIGHBOR_ADDRESS.match(text)
        if match:
            try:
                addresses.add(ipaddress.ip_address(match.group(1).split("%", 1)[0]))
            except ValueError:
                continue
    return addresses


def probe_listening(path: str, timeout: float) -> bool:
    """Does something accept a connection on the socket at ``path``? Connects and hangs up; never raises.

    Cheaper than a command: no greeting is awaited. Used to notice a
    restarted BIRD without waiting for the retry back-off.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def quote_argument(text: str) -> str:
    """A command argument in double quotes; ValueError if it cannot be one."""
    if any(char in '"\\' or ord(char) < 0x20 for char in text):
        raise ValueError(f"{text!r} cannot be passed to BIRD in quotes")
    return f'"{text}"'


# --- the socket -------------------------------------------------------------


class BirdControl:
    """One connection to BIRD's control socket; use as a context manager.

    ``timeout`` bounds connecting plus the greeting, and each command from
    sending it to the last reply line. Raises BirdUnavailable and
    BirdProtocolError only.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.greeting: BirdReply | None = None
        self._socket: socket.socket | None = None
        self._parser = ReplyParser()

    def __enter__(self) -> BirdControl:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> BirdReply:
        """Connect and read the greeting (0001); raises BirdUnavailable."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except TimeoutError as exc:
            sock.close()
            raise BirdUnavailable(f"cannot connect to BIRD at {self.path}: {_os_reason(exc)}") from exc
        except OSError as exc:
            sock.close()
            raise BirdNotListening(f"cannot connect to BIRD at {self.path}: {_os_reason(exc)}") from exc
        self._socket = sock
        self.greeting = self._read_reply(time.monotonic() + self.timeout, "the greeting")
        if self.greeting.code != CODE_WELCOME:
            self.close()
            raise BirdProtocolError(f"unexpected greeting from BIRD: {self.greeting.describe()}")
        return self.greeting

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def command(self, text: str) -> BirdReply:
        """Send one command line and return BIRD's complete reply.

        Raises BirdUnavailable (not connected, timeout, connection lost),
        BirdProtocolError (malformed reply) and ValueError (a newline in text).
        """
        if "\n" in text or "\r" in text:
            raise ValueError("a BIRD command is one line")
        if self._socket is None:
            raise BirdUnavailable("not connected to BIRD")
        deadline = time.monotonic() + self.timeout
        try:
            self._socket.sendall(text.encode("utf-8") + b"\n")
        except OSError as exc:
            self.close()
            raise BirdUnavailable(f"lost BIRD at {self.path} sending {text!r}: {_os_reason(exc)}") from exc
        return self._read_reply(deadline, repr(text))

    def _read_reply(self, deadline: float, what: str) -> BirdReply:
        assert self._socket is not None
        while True:
            try:
                reply = self._parser.next_reply()
            except BirdProtocolError:
                self.close()
                raise
            if reply is not None:
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise BirdUnavailable(f"BIRD at {self.path} did not answer {what} within {self.timeout:g} s")
            try:
                self._socket.settimeout(remaining)
                data = self._socket.recv(65536)
            except TimeoutError as exc:
                self.close()
                raise BirdUnavailable(
                    f"BIRD at {self.path} did not answer {what} within {self.timeout:g} s"
                ) from exc
            except OSError as exc:
                self.close()
                raise BirdUnavailable(f"lost BIRD at {self.path} reading {what}: {_os_reason(exc)}") from exc
            if not data:
                self.close()
                raise BirdUnavailable(f"BIRD at {self.path} closed the connection while answering {what}")
            try:
                self._parser.feed(data)
            except BirdProtocolError:
                self.close()
                raise


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
