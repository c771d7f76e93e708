"""The node-local state file shared by every plugin exec and the reconciler.

One JSON document, ``<stateDir>/state.json``, with a schema ``version`` and
one record per attachment, keyed by (network name, container ID, ifname).
Writers serialise on an ``fcntl`` lock of the sibling ``state.lock`` and
replace the document atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a reader — the reconciler takes
snapshots without the lock — never sees half a file, and a writer killed at
any instant leaves either the old or the new document.

A corrupt document or an unknown schema version is reported, never reset:
the allocations in it describe addresses that live in pods right now.

This module does file I/O only: no netlink, no subprocess.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError

from netconf.errors import IOFailure, LockTimeout, StateCorrupt

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
_TEMP_FILE = ".state.json.tmp"

IPAddress = IPv4Address | IPv6Address
AllocationKey = tuple[str, str, str]


def utc_now() -> datetime:
    return datetime.now(UTC)


# Every plugin exec reads (and ADD and DEL rewrite) the whole document, four
# addresses per allocation. pydantic's own ipaddress support parses each
# text with both IPv4Address and IPv6Address in pure Python and formats it
# back with str(): with 1,000 allocations that was most of an ADD. These two
# functions give the same values and the same text through the C parser and
# formatter, and hand everything unusual to the ipaddress module.


def parse_ip_address(value: Any) -> IPAddress:
    """Validate one address as ``ipaddress.ip_address`` does; raises ValueError.

    Texts ``inet_pton`` accepts are a subset of those ipaddress accepts, with
    equal values (both refuse leading zeros in IPv4); the rest (scope ids,
    ints, packed bytes, junk) goes to ``ipaddress.ip_address`` itself.
    """
    if type(value) is str:
        try:
            if ":" in value:
                return IPv6Address(socket.inet_pton(socket.AF_INET6, value))
            return IPv4Address(socket.inet_pton(socket.AF_INET, value))
        except (OSError, ValueError):
            pass
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    return ipaddress.ip_address(value)


def format_ip_address(address: IPAddress) -> str:
    """``str(address)``, through ``inet_ntop`` where both agree (RFC 5952 text).

    glibc writes IPv4-mapped and -compatible IPv6 addresses with a dotted
    quad, and inet_ntop knows no scope id: those keep ``str()``.
    """
    if address.version == 6 and address.scope_id is None:
        text = socket.inet_ntop(socket.AF_INET6, address.packed)
        if "." not in text:
            return text
    return str(address)


# An address field: IPv4Address | IPv6Address in Python, its text in JSON.
StoredIPAddress = Annotated[
    IPAddress,
    PlainValidator(parse_ip_address),
    PlainSerializer(format_ip_address, return_type=str, when_used="json"),
]


class PodRef(BaseModel):
    """Who the attachment belongs to, when the runtime told us (K8S_* args)."""

    model_config = ConfigDict(frozen=True)

    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Allocation(BaseModel):
    """Anycast addresses put on ``lo`` of one attachment.

    ``pending`` is written before the addresses are added and ``committed``
    after, so a plugin killed in between leaves a record that DEL and GC
    know to clean up, and that the reconciler never advertises.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    network: str
    container_id: str = Field(alias="containerID")
    ifname: str
    netns: str
    pod: PodRef = Field(default_factory=PodRef)
    anycast: tuple[StoredIPAddress, ...]
    pod_ips: tuple[StoredIPAddress, ...] = Field(alias="podIPs")
    state: Literal["pending", "committed"]
    created_at: datetime = Field(alias="createdAt")
    updated_at: datetime = Field(alias="updatedAt")

    @property
    def key(self) -> AllocationKey:
        return (self.network, self.container_id, self.ifname)


class StateDocument(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    version: int = SCHEMA_VERSION
    allocations: list[Allocation] = Field(default_factory=list)


class Transaction:
    """A locked read-modify-write of the document; see StateStore.transaction."""

    def __init__(self, document: StateDocument) -> None:
        self._allocations = {allocation.key: allocation for allocation in document.allocations}
        self.changed = False

    def get(self, key: AllocationKey) -> Allocation | None:
        return self._allocations.get(key)

    def allocations(self) -> list[Allocation]:
        return list(self._allocations.values())

    def put(self, allocation: Allocation) -> None:
        self._allocations[allocation.key] = allocation
        self.changed = True

    def remove(self, key: AllocationKey) -> None:
        if self._allocations.pop(key, None) is not None:
            self.changed = True

    def document(self) -> StateDocument:
        ordered = sorted(self._allocations.values(), key=lambda allocation: allocation.key)
        return StateDocument(version=SCHEMA_VERSION, allocations=ordered)


class StateStore:
    """The state file of one state directory.

    Raises StateCorrupt (code 5) for an unreadable document, IOFailure
    (code 5) when the directory or lock cannot be used, and LockTimeout
    (code 11) when another writer holds the lock past ``lock_timeout``.
    """

    def __init__(self, state_dir: str, lock_timeout: float = 5.0) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.lock_timeout = lock_timeout
        # The bytes last read or written, and their document. A plugin exec
        # reads the file two or three times (ADD: pending, then committed);
        # when it still holds the same bytes, validating them again would
        # give the same document, so it is reused (see _decode).
        self._known: tuple[bytes, tuple[Allocation, ...]] | None = None

    def read(self) -> StateDocument:
        """A consistent snapshot without taking the lock (writers rename atomically)."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return StateDocument()
        except OSError as exc:
            raise IOFailure(f"cannot read state file {self.path}", repr(exc)) from exc
        return self._decode(raw)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, load, yield a Transaction, and write it back if it changed.

        An exception inside the block leaves the file as it was.
        """
        self.ensure_directory()
        with self._locked():
            transaction = Transaction(self.read())
            yield transaction
            if transaction.changed:
                self._write(transaction.document())

    def ensure_directory(self) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise IOFailure(f"cannot create state directory {self.state_dir}", repr(exc)) from exc

    def probe(self) -> None:
        """Check that a writer could work here: directory, lock and document usable."""
        self.ensure_directory()
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise IOFailure(f"state directory {self.state_dir} is not writable")
        with self._locked():
            self.read()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            # O_NOFOLLOW: a symlink planted at the lock path must not make
            # root create or truncate a file elsewhere.
            fd = os.open(
                self.lock_path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as exc:
            raise IOFailure(f"cannot open lock file {self.lock_path}", repr(exc)) from exc
        try:
            self._acquire(fd)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise IOFailure(f"cannot lock {self.lock_path}", repr(exc)) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    f"state lock {self.lock_path} busy for {self.lock_timeout:g}s",
                    "another flock-anycast process holds it; the runtime should retry",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)

    def _decode(self, raw: bytes) -> StateDocument:
        if self._known is not None and self._known[0] == raw:
            # A fresh list each time: callers may change theirs.
            return StateDocument.model_construct(version=SCHEMA_VERSION, allocations=list(self._known[1]))
        try:
            # The common case in one pass, parsed and validated by pydantic-core.
            # strict: accepts a subset of what the lax path below accepts, with
            # the same values, so anything else gets the original treatment.
            document = StateDocument.model_validate_json(raw, strict=True)
        except ValidationError:
            document = None
        if document is None or document.version != SCHEMA_VERSION:
            document = self._diagnose(raw)
        self._known = (raw, tuple(document.allocations))
        return document

    def _diagnose(self, raw: bytes) -> StateDocument:
        """The slow path for a document that did not validate in one pass: say what is wrong.

        Raises StateCorrupt; returns the document only where ``json`` accepts
        what pydantic-core's parser did not (e.g. UTF-16 text).
        """
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StateCorrupt(
                f"state file {self.path} is not valid JSON; refusing to touch it",
                f"{exc}; move it aside after checking the pods it describes",
            ) from exc
        if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
            found = data.get("version") if isinstance(data, dict) else type(data).__name__
            raise StateCorrupt(
                f"state file {self.path} has schema version {found!r}, "
                f"this flock reads version {SCHEMA_VERSION}",
                "written by a different flock release; upgrade or downgrade to match",
            )
        try:
            return StateDocument.model_validate(data)
        except ValidationError as exc:
            raise StateCorrupt(
                f"state file {self.path} does not match schema version {SCHEMA_VERSION}",
                str(exc),
            ) from exc

    def _write(self, document: StateDocument) -> None:
        payload = document.model_dump_json(by_alias=True, indent=1).encode() + b"\n"
        self._known = None  # until the new bytes are in place
        temp_path = os.path.join(self.state_dir, _TEMP_FILE)
        try:
            # The temp name is fixed: writers hold the lock, and a temp file
            # left by a killed writer is simply overwritten.
            fd = os.open(
                temp_path,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_path, self.path)
            # Reading these bytes back would validate to this document.
            self._known = (payload, tuple(document.allocations))
            directory_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)
        except OSError as exc:
            raise IOFailure(f"cannot write state file {self.path}", repr(exc)) from exc
