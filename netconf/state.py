"""The node-local state shared by every plugin exec and the reconciler.

Layout of the state directory (``stateDir``, 0700)::

    state.lock                         writers serialise on an fcntl lock of it
    allocations/                       one JSON file per attachment (0700)
        <network>+<containerID>+<ifname>.json

Each file holds the schema ``version`` and one allocation, keyed by
(network name, container ID, ifname); the file name is derived from that
key, so a plugin exec reads and writes only its own attachment's file: the
cost of an ADD or DEL does not grow with the number of pods on the node.
A file is replaced atomically (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a reader — the reconciler lists
the directory without the lock — never sees half a record, and a writer
killed at any instant leaves either the old or the new record.

A corrupt record or an unknown schema version is reported (code 5), never
reset or removed: the allocation in it describes addresses that live in a
pod right now. A corrupt record only blocks the verbs of its own attachment:
``read`` lists it in ``unreadable`` and returns every other record (GC
reports it, the reconciler keeps its last good view of that one record).

The directory is trusted only when it is this process's own (see
StateStore): every file is opened relative to a checked directory
descriptor, never through a symbolic link, never blocking on a special
file; only files that decode as records are ever deleted.

flock 0.1 kept every allocation in one document, ``state.json`` (schema
version 1). While that file exists it is the whole truth for readers; the
first writer turns it into records and renames it ``state.json.v1``.

The records are declared here, once, and validated by pydantic-core
(``netconf.records``). This module does file I/O only: no netlink, no
subprocess.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import time
from stat import S_IMODE, S_ISLNK, S_ISREG, S_ISVTX

from netconf.errors import CniError, IOFailure, LockTimeout, StateCorrupt
from netconf.files import FileTooLarge, NotRegularFile, read_regular_file, replace_file
from netconf.records import validation_error_class
from netconf.values import (
    SCHEMA_VERSION,
    Allocation,
    AllocationFile,
    AllocationKey,
    LegacyStateDocument,
    encode_record,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

LOCK_FILE = "state.lock"
ALLOCATIONS_DIR = "allocations"
LEGACY_STATE_FILE = "state.json"
LEGACY_MIGRATED_SUFFIX = ".v1"
_RECORD_SUFFIX = ".json"
# The one temp file writers write before renaming it over a record. Writers
# hold the lock, so one name serves all of them, and what a killed writer
# left is overwritten by the next: no leftovers pile up.
_TEMP_NAME = ".record.tmp"
_LONGEST_NAME = 255

class StateDocument:
    """A snapshot of the node: every readable allocation, ordered by key, and the unreadable records.

    ``unreadable`` maps a record's file name (``record_file_name`` of its
    key, for a record that once was good) to why it cannot be read.
    """

    __slots__ = ("allocations", "unreadable")

    def __init__(
        self, allocations: list[Allocation] | None = None, unreadable: dict[str, CniError] | None = None
    ) -> None:
        self.allocations = list(allocations or ())
        self.unreadable = dict(unreadable or {})


def record_file_name(key: AllocationKey) -> str:
    """``<network>+<containerID>+<ifname>.json``, each part escaped.

    Bytes outside ``[A-Za-z0-9_.-]`` (and a leading ``.``, which marks temp
    files) become ``%XX``, so ``+`` only separates and any key maps to one
    name and back. A name too long for the file system (255 bytes)
    becomes ``~<sha256 of the key>.json``; the
    key is in the record either way.
    """
    name = "+".join(_escape(part) for part in key) + _RECORD_SUFFIX
    if len(name) > _LONGEST_NAME:
        import hashlib

        name = "~" + hashlib.sha256("\0".join(key).encode()).hexdigest() + _RECORD_SUFFIX
    return name


def record_network(name: str) -> str | None:
    """The network name a record file name carries; None for a hashed or foreign name."""
    if name.startswith("~") or not name.endswith(_RECORD_SUFFIX):
        return None
    parts = name[: -len(_RECORD_SUFFIX)].split("+")
    if len(parts) != 3:
        return None
    try:
        return _unescape(parts[0])
    except ValueError:
        return None


def _unescape(part: str) -> str:
    out = bytearray()
    index = 0
    while index < len(part):
        if part[index] == "%":
            out.append(int(part[index + 1 : index + 3], 16))
            index += 3
        else:
            out += part[index].encode()
            index += 1
    return out.decode()


def _escape(part: str) -> str:
    out = []
    for index, byte in enumerate(part.encode()):
        char = chr(byte)
        if (char.isascii() and char.isalnum()) or char in "_-" or (char == "." and index > 0):
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


class Transaction:
    """A locked read-modify-write of some records; see StateStore.transaction.

    Only the records asked for are read, so a transaction costs the same
    with one pod on the node or a thousand. ``flush`` makes the changes so
    far durable without giving up the transaction's lock: a verb records
    what it is about to do (``pending``) before it touches the pod, and
    finishes under the same lock, so two execs for one pod never interleave.
    """

    def __init__(self, store: StateStore, directories: _Directories, node_locked: bool = True) -> None:
        self._store = store
        self._directories = directories
        # False for a container-scoped transaction: writes take the node-wide lock themselves.
        self._node_locked = node_locked
        self._seen: dict[AllocationKey, Allocation | None] = {}
        self._changes: dict[AllocationKey, Allocation | None] = {}

    @property
    def changes(self) -> dict[AllocationKey, Allocation | None]:
        """Records to write (None: to remove), by key."""
        return dict(self._changes)

    def get(self, key: AllocationKey) -> Allocation | None:
        if key in self._changes:
            return self._changes[key]
        if key not in self._seen:
            self._seen[key] = self._store._get(self._directories, key)
        return self._seen[key]

    def put(self, allocation: Allocation) -> None:
        """Write ``allocation`` at commit; raises StateCorrupt if its record is unreadable.

        The record in place is read first, so a corrupt one is reported,
        never silently replaced.
        """
        self.get(allocation.key)
        self._changes[allocation.key] = allocation

    def remove(self, key: AllocationKey) -> None:
        """Remove the record at commit; only a record that decoded is ever removed."""
        if self.get(key) is not None:
            self._changes[key] = None

    def flush(self) -> None:
        """Write the changes so far now, keeping the lock; raises IOFailure, LockTimeout."""
        if not self._changes:
            return
        if self._node_locked:
            self._store._commit(self._directories, self._changes)
        else:
            with _NodeLock(self._store, self._directories):
                self._store._commit(self._directories, self._changes)
        self._seen.update(self._changes)
        self._changes = {}

    def container_siblings(self, key: AllocationKey) -> tuple[list[Allocation], list[str]]:
        """Other attachments of ``key``'s container ID, in any network: (records, unreadable names).

        A pod with several attachments (Multus, podman with two networks)
        has one ``lo`` and one container ID (the runtime's sandbox ID) for
        all of them, so only records whose file name carries the same
        container ID are read: the cost grows with the attachments of this
        pod, not with the pods of the node. Names too long for the file
        system (hashed) are read too, since their key is only inside.
        """
        wanted = _escape(key[1])
        infix = f"+{wanted}+"  # a substring test first: most names on a node are other pods'
        own = record_file_name(key)
        found: list[Allocation] = []
        unreadable: list[str] = []
        for name in self._store._list_record_names(self._directories):
            if name == own:
                continue
            if not name.startswith("~"):
                if infix not in name:
                    continue
                parts = name[: -len(_RECORD_SUFFIX)].split("+")
                if len(parts) != 3 or parts[1] != wanted:
                    continue
            try:
                record = self._store._read_named(self._directories, name)
            except CniError:
                unreadable.append(name)
                continue
            if record is None or record.container_id != key[1] or record.key == key:
                continue
            record = self._changes.get(record.key, record)  # this transaction's own change wins
            if record is not None:
                found.append(record)
        return found, unreadable


class _Directories:
    """Descriptors of the state directory and ``allocations/``, checked when opened.

    Every file of the store is opened relative to these, without following
    symbolic links, so a path component swapped after the check cannot
    redirect root's reads and writes.
    """

    __slots__ = ("state_fd", "records_fd")

    def __init__(self, state_fd: int, records_fd: int) -> None:
        self.state_fd = state_fd
        self.records_fd = records_fd

    def close(self) -> None:
        for fd in (self.records_fd, self.state_fd):
            if fd >= 0:
                os.close(fd)
        self.state_fd = self.records_fd = -1


class StateStore:
    """The state directory of one node.

    Raises StateCorrupt (code 5) for an unreadable record, IOFailure
    (code 5) when the directory or lock cannot be used or cannot be
    trusted, and LockTimeout (code 11) when another writer holds the lock
    past ``lock_timeout``.

    Trust: the state directory, ``allocations/`` and ``state.lock`` must be
    owned by this process's user and writable by no one else, and every
    directory above the state directory must be owned by root (or this
    user) and not writable by others unless it is sticky (``/tmp``):
    otherwise another user could swap a path under root's feet, or hold
    the lock and stall every pod start. Anything else is refused with a
    message saying what to fix; nothing is repaired silently.
    """

    def __init__(self, state_dir: str, lock_timeout: float = 5.0) -> None:
        self.state_dir = state_dir
        self.allocations_dir = os.path.join(state_dir, ALLOCATIONS_DIR)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.legacy_path = os.path.join(state_dir, LEGACY_STATE_FILE)
        self.lock_timeout = lock_timeout
        # read() remembers each record file it decoded (or failed to decode)
        # by name, with the file's (inode, size, mtime): writers replace a
        # record by renaming a new file over it, so an unchanged signature
        # is an unchanged record. The reconciler reads every record on every
        # pass; this keeps a pass over 10,000 unchanged records — or 50,000
        # junk files — to one stat each.
        self._decoded: dict[str, tuple[tuple[int, int, int], Allocation | CniError]] = {}

    def path_of(self, key: AllocationKey) -> str:
        return os.path.join(self.allocations_dir, record_file_name(key))

    # -- readers (no lock) -------------------------------------------------------

    def get(self, key: AllocationKey) -> Allocation | None:
        """One attachment's allocation, without the lock (records are replaced atomically)."""
        directories = self._open(create=False)
        if directories is None:
            return None
        try:
            return self._get(directories, key)
        finally:
            directories.close()

    def read(self) -> StateDocument:
        """A snapshot of every readable allocation, without the lock.

        A record that cannot be read (corrupt, unknown schema version, not a
        regular file) does not stop the others: it is listed in
        ``unreadable`` by file name with its error. Raises IOFailure only
        when the directory itself cannot be used. Records written while the
        directory is listed may or may not be in it, which a level-triggered
        reader (the reconciler) catches on its next pass.
        """
        directories = self._open(create=False)
        if directories is None:
            return StateDocument()
        try:
            if self._legacy_exists(directories):
                # Not migrated yet: the legacy document is the whole truth (see migrate_legacy).
                return StateDocument(sorted(self._read_legacy(directories), key=lambda item: item.key))
            return self._read_records(directories)
        finally:
            directories.close()

    def _read_records(self, directories: _Directories) -> StateDocument:
        if directories.records_fd < 0:
            return StateDocument()  # a state directory no plugin has written to yet
        found: dict[AllocationKey, Allocation] = {}
        unreadable: dict[str, CniError] = {}
        decoded: dict[str, tuple[tuple[int, int, int], Allocation | CniError]] = {}
        try:
            with os.scandir(directories.records_fd) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(_RECORD_SUFFIX):
                        continue  # the writers' temp file
                    outcome = self._read_entry(directories, entry)
                    if outcome is None:
                        continue
                    decoded[name] = outcome
                    if isinstance(outcome[1], CniError):
                        unreadable[name] = outcome[1]
                    else:
                        found[outcome[1].key] = outcome[1]
        except OSError as exc:
            raise IOFailure(f"cannot list state directory {self.allocations_dir}", os.strerror(exc.errno or 0)) from exc
        self._decoded = decoded
        return StateDocument([found[key] for key in sorted(found)], unreadable)

    def _read_entry(
        self, directories: _Directories, entry: os.DirEntry[str]
    ) -> tuple[tuple[int, int, int], Allocation | CniError] | None:
        """The record (or its error) of one directory entry; None if it went away since the listing."""
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        known = self._decoded.get(entry.name)
        if known is not None and known[0] == signature:
            return known
        try:
            allocation = self._read_named(directories, entry.name)
        except CniError as exc:
            return signature, exc
        return None if allocation is None else (signature, allocation)

    def _read_named(self, directories: _Directories, name: str) -> Allocation | None:
        """The record in file ``name``, checked against its name; None if there is none."""
        path = os.path.join(self.allocations_dir, name)
        raw = _read_regular_file(directories.records_fd, name, path, "state record")
        if raw is None:
            return None
        allocation = self._decode(raw, path, None)
        if record_file_name(allocation.key) != name:
            raise StateCorrupt(
                f"state record {path} holds the allocation of {allocation.key}, not of its file name",
                "renamed by hand? move it back to " + record_file_name(allocation.key),
            )
        return allocation

    def _get(self, directories: _Directories, key: AllocationKey) -> Allocation | None:
        if self._legacy_exists(directories):
            return next((item for item in self._read_legacy(directories) if item.key == key), None)
        name = record_file_name(key)
        path = os.path.join(self.allocations_dir, name)
        raw = _read_regular_file(directories.records_fd, name, path, "state record")
        if raw is None:
            return None
        return self._decode(raw, path, key)

    def _list_record_names(self, directories: _Directories) -> list[str]:
        """Names of record files (the writers' dot temp file aside)."""
        try:
            names = os.listdir(directories.records_fd)
        except OSError as exc:
            raise IOFailure(f"cannot list state directory {self.allocations_dir}", os.strerror(exc.errno or 0)) from exc
        return [name for name in names if name[0] != "." and name.endswith(_RECORD_SUFFIX)]

    # -- writers (under the lock) --------------------------------------------------

    def transaction(self, container_id: str | None = None) -> _TransactionContext:
        """Lock, yield a Transaction, and write the records it changed.

        With ``container_id`` (what the verbs use): that container's lock is
        held for the whole block, and the node-wide lock only while records
        are written. Every attachment of one pod (and so every record whose
        addresses share one ``lo``) has the pod's container ID, so execs for
        one pod never interleave, while execs for different pods overlap
        except for their writes. Without it, the node-wide lock is held
        throughout. An exception inside the block writes nothing more (what
        ``flush`` wrote stays written).
        """
        return _TransactionContext(self, container_id)

    def ensure_directory(self) -> None:
        """Create the state directory and ``allocations/`` (0700) if missing; raises IOFailure."""
        directories = self._open(create=True)
        if directories is not None:
            directories.close()

    def probe(self) -> None:
        """Check that an ADD could be served: directories trusted and writable, lock usable, legacy file readable.

        Records are not read: a corrupt one blocks only its own attachment,
        so it must not make the node refuse every new pod.
        """
        directories = self._open(create=True)
        assert directories is not None  # create=True opens or raises
        try:
            for fd, directory in ((directories.state_fd, self.state_dir), (directories.records_fd, self.allocations_dir)):
                if not os.access(f"/proc/self/fd/{fd}", os.W_OK | os.X_OK):
                    raise IOFailure(f"state directory {directory} is not writable")
            os.close(self._lock(directories))
            if self._legacy_exists(directories):
                self._read_legacy(directories)  # the next transaction migrates it
        finally:
            directories.close()

    def _open(self, create: bool) -> _Directories | None:
        """Open and check the state directory and ``allocations/``; None if absent and not ``create``."""
        _check_ancestors(self.state_dir)
        if create:
            try:
                # Missing levels are created 0700; an existing one is judged below.
                os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            except FileExistsError:
                pass  # a dangling symlink or a file: the open below says which
            except OSError as exc:
                raise IOFailure(f"cannot create state directory {self.state_dir}", os.strerror(exc.errno or 0)) from exc
        state_fd = _open_private_directory(self.state_dir, None, self.state_dir)
        if state_fd is None:
            if create:
                raise IOFailure(f"state directory {self.state_dir} vanished while being created")
            return None
        try:
            if create:
                try:
                    os.mkdir(ALLOCATIONS_DIR, 0o700, dir_fd=state_fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise IOFailure(
                        f"cannot create state directory {self.allocations_dir}", os.strerror(exc.errno or 0)
                    ) from exc
            records_fd = _open_private_directory(ALLOCATIONS_DIR, state_fd, self.allocations_dir)
        except BaseException:
            os.close(state_fd)
            raise
        if records_fd is None:
            if create:
                os.close(state_fd)
                raise IOFailure(f"state directory {self.allocations_dir} vanished while being created")
            # A node where only state.json (flock 0.1) or nothing exists yet.
            records_fd = -1
        return _Directories(state_fd, records_fd)

    def _lock(self, directories: _Directories) -> int:
        """Open and take the node-wide writers' lock; closing the descriptor releases it."""
        fd = self._open_lock_file(directories)
        try:
            self._acquire(fd, lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), "state lock")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lock_container(self, directories: _Directories, container_id: str) -> int:
        """Open and take one container's lock; closing the descriptor releases it.

        An open-file-description lock on one byte of ``state.lock`` chosen by
        the container ID: no lock file per pod to create and clean up, and,
        unlike a classic POSIX record lock, not dropped when this process
        closes another descriptor of the same file (the node-wide lock's).
        Two containers whose IDs share a byte only wait for each other.
        """
        fd = self._open_lock_file(directories)
        request = _RANGE_LOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _lock_byte(container_id), 1, 0)
        try:
            self._acquire(fd, lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request), f"lock of container {container_id}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_lock_file(self, directories: _Directories) -> int:
        try:
            # O_NOFOLLOW: a symlink planted at the lock path must not make
            # root create or truncate a file elsewhere. O_NONBLOCK: a FIFO
            # there must not hang the plugin.
            fd = os.open(
                LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
                dir_fd=directories.state_fd,
            )
        except OSError as exc:
            raise IOFailure(f"cannot use lock file {self.lock_path}: {_refusal_reason(exc)}") from exc
        try:
            info = os.fstat(fd)
            if not S_ISREG(info.st_mode):
                raise IOFailure(f"lock file {self.lock_path} is not a regular file; refusing to use it")
            # Anyone who can open the lock can hold it (flock needs no write
            # access) and stall every pod start on the node.
            _require_private(info, f"lock file {self.lock_path}", 0o077)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _acquire(self, fd: int, try_lock: Callable[[], object], what: str) -> None:
        """Call ``try_lock`` until it succeeds or ``lock_timeout`` passes; raises LockTimeout, IOFailure."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                try_lock()
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise IOFailure(f"cannot take the {what} in {self.lock_path}", repr(exc)) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    f"{what} in {self.lock_path} busy for {self.lock_timeout:g}s",
                    "another flock-anycast process holds it; the runtime should retry",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)

    def _decode(self, raw: bytes, path: str, key: AllocationKey | None) -> Allocation:
        try:
            # The common case in one pass, parsed and validated by pydantic-core.
            # strict: accepts a subset of what the lax path below accepts, with
            # the same values, so anything else gets the original treatment.
            allocation = AllocationFile.validate_json(raw, strict=True).allocation
        except validation_error_class():
            allocation = self._diagnose(raw, path)
        if key is not None and allocation.key != key:
            raise StateCorrupt(
                f"state record {path} holds the allocation of {allocation.key}, not of {key}",
                "renamed by hand? move it back to " + record_file_name(allocation.key),
            )
        return allocation

    def _diagnose(self, raw: bytes, path: str) -> Allocation:
        """The slow path for a record that did not validate in one pass: say what is wrong.

        Raises StateCorrupt; returns the allocation only where ``json``
        accepts what pydantic-core's parser did not (e.g. UTF-16 text).
        """
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StateCorrupt(
                f"state record {path} is not valid JSON; refusing to touch it",
                f"{str(exc)[:200]}; move it aside after checking the pod it describes",
            ) from exc
        if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
            found = data.get("version") if isinstance(data, dict) else type(data).__name__
            raise StateCorrupt(
                f"state record {path} has schema version {repr(found)[:80]}, this flock reads version {SCHEMA_VERSION}",
                "written by a different flock release; upgrade or downgrade to match",
            )
        try:
            return AllocationFile.validate(data).allocation
        except validation_error_class() as exc:
            raise StateCorrupt(
                f"state record {path} does not match schema version {SCHEMA_VERSION}",
                str(exc),
            ) from exc

    def _legacy_exists(self, directories: _Directories) -> bool:
        try:
            os.stat(LEGACY_STATE_FILE, dir_fd=directories.state_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise IOFailure(f"cannot look for {self.legacy_path}", os.strerror(exc.errno or 0)) from exc
        return True

    def _read_legacy(self, directories: _Directories) -> list[Allocation]:
        raw = _read_regular_file(directories.state_fd, LEGACY_STATE_FILE, self.legacy_path, "state file")
        if raw is None:
            return []
        try:
            return list(LegacyStateDocument.validate_json(raw).allocations)
        except validation_error_class() as exc:
            raise StateCorrupt(
                f"state file {self.legacy_path} of flock 0.1 cannot be read; refusing to touch it",
                str(exc),
            ) from exc

    def migrate_legacy(self, directories: _Directories) -> None:
        """Move flock 0.1's ``state.json`` into record files; the caller holds the lock.

        While ``state.json`` exists it is the whole truth: either nothing was
        migrated yet, or flock was downgraded to 0.1 (which writes only that
        file) and upgraded again, leaving records that 0.1 never saw
        change. So every record becomes what the document says, records it
        does not list are removed, and the document is kept as
        ``state.json.v1`` (for another downgrade: rename it back). Only
        files that decode as records are removed: the store never deletes a
        file it did not write. A crash half-way is repaired by the next
        transaction doing the same again.
        """
        allocations = {allocation.key: allocation for allocation in self._read_legacy(directories)}
        for allocation in allocations.values():
            self._write_record(directories, allocation)
        wanted = {record_file_name(key) for key in allocations}
        for name in self._list_record_names(directories):
            if name in wanted:
                continue
            try:
                if self._read_named(directories, name) is None:
                    continue
            except CniError:
                continue  # not a record this store wrote: leave it for a person to judge
            _unlink_record(directories, name, os.path.join(self.allocations_dir, name))
        _sync(directories.records_fd, self.allocations_dir)
        try:
            os.replace(
                LEGACY_STATE_FILE,
                LEGACY_STATE_FILE + LEGACY_MIGRATED_SUFFIX,
                src_dir_fd=directories.state_fd,
                dst_dir_fd=directories.state_fd,
            )
        except OSError as exc:
            raise IOFailure(f"cannot move {self.legacy_path} aside after migrating it", os.strerror(exc.errno or 0)) from exc
        _sync(directories.state_fd, self.state_dir)

    def _commit(self, directories: _Directories, changes: dict[AllocationKey, Allocation | None]) -> None:
        """Write or remove the changed records; the caller holds the lock."""
        for key, allocation in changes.items():
            if allocation is None:
                _unlink_record(directories, record_file_name(key), self.path_of(key))
            else:
                self._write_record(directories, allocation)
        _sync(directories.records_fd, self.allocations_dir)

    def _write_record(self, directories: _Directories, allocation: Allocation) -> None:
        name = record_file_name(allocation.key)
        try:
            replace_file(name, encode_record(allocation), mode=0o600, temp_path=_TEMP_NAME, dir_fd=directories.records_fd)
        except OSError as exc:
            raise IOFailure(f"cannot write state record {self.path_of(allocation.key)}", os.strerror(exc.errno or 0)) from exc


class _TransactionContext:
    """``with store.transaction() as transaction:`` without contextlib (and the modules it imports, on every exec)."""

    def __init__(self, store: StateStore, container_id: str | None) -> None:
        self._store = store
        self._container_id = container_id
        self._directories: _Directories | None = None
        self._fd = -1

    def __enter__(self) -> Transaction:
        store = self._store
        directories = store._open(create=True)
        assert directories is not None  # create=True opens or raises
        self._directories = directories
        try:
            if self._container_id is None:
                self._fd = store._lock(directories)
                if store._legacy_exists(directories):
                    store.migrate_legacy(directories)
            else:
                self._fd = store._lock_container(directories, self._container_id)
                if store._legacy_exists(directories):
                    with _NodeLock(store, directories):
                        if store._legacy_exists(directories):
                            store.migrate_legacy(directories)
        except BaseException:
            self._release()
            raise
        self._transaction = Transaction(store, directories, node_locked=self._container_id is None)
        return self._transaction

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._transaction.flush()
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._directories is not None:
            self._directories.close()
            self._directories = None


class _NodeLock:
    """The node-wide lock for one write of a container-scoped transaction."""

    def __init__(self, store: StateStore, directories: _Directories) -> None:
        self._store = store
        self._directories = directories
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = self._store._lock(self._directories)

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)


# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_RANGE_LOCK = struct.Struct("@hhqqi4x")


def _lock_byte(container_id: str) -> int:
    """A byte of state.lock for this container: FNV-1a of the ID, past byte 0."""
    value = 0xCBF29CE484222325
    for byte in container_id.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return 1 + (value & 0x3FFFFFFF)


# -- checked opens -----------------------------------------------------------------

_LARGEST_RECORD = 1 << 20  # a record is ~600 bytes; anything near this is not ours


def _check_ancestors(state_dir: str) -> None:
    """Refuse a state directory below a directory another user could rewrite; raises IOFailure.

    Symbolic links among the ancestors (``/var/run`` → ``/run``) are fine:
    what is checked is where they lead. A world-writable directory is fine
    when sticky (``/tmp``): others cannot rename or remove what is ours.
    """
    euid = os.geteuid()
    current = os.path.realpath(os.path.dirname(state_dir))
    while True:
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            pass  # created below, 0700
        except OSError as exc:
            raise IOFailure(f"cannot check state directory parent {current}", os.strerror(exc.errno or 0)) from exc
        else:
            if info.st_uid not in (0, euid):
                raise IOFailure(
                    f"state directory {state_dir} is below {current}, owned by uid {info.st_uid}; refusing to use it",
                    "another user could replace the state directory: choose a stateDir below root-owned directories",
                )
            if info.st_mode & 0o022 and not info.st_mode & S_ISVTX:
                raise IOFailure(
                    f"state directory {state_dir} is below {current}, which others can write "
                    f"(mode {S_IMODE(info.st_mode):04o}); refusing to use it",
                    "another user could replace the state directory: remove group/other write or set the sticky bit",
                )
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def _open_private_directory(name: str, dir_fd: int | None, path: str) -> int | None:
    """A descriptor of a directory of ours, not a symlink, that only we can write; None if absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = _refusal_reason(exc)
        if exc.errno == errno.ENOTDIR and _is_symlink(name, dir_fd):
            reason = _refusal_reason(OSError(errno.ELOOP, ""))
        raise IOFailure(f"cannot use state directory {path}: {reason}") from exc
    try:
        _require_private(os.fstat(fd), f"state directory {path}", 0o022)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_private(info: os.stat_result, what: str, forbidden_bits: int) -> None:
    if info.st_uid != os.geteuid():
        raise IOFailure(
            f"{what} is owned by uid {info.st_uid}, not by uid {os.geteuid()} running flock; refusing to use it",
            "the state directory must be flock's own: chown it or choose another stateDir",
        )
    if info.st_mode & forbidden_bits:
        raise IOFailure(
            f"{what} has mode {S_IMODE(info.st_mode):04o}; refusing to use it",
            f"other users must not be able to {'write' if forbidden_bits == 0o022 else 'open'} it: "
            f"chmod {'go-w' if forbidden_bits == 0o022 else '600'}",
        )


def _refusal_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link; flock follows none in its state directory"
    if exc.errno == errno.ENOTDIR:
        return "it is not a directory"
    return os.strerror(exc.errno or 0)


def _is_symlink(name: str, dir_fd: int | None) -> bool:
    try:
        return S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _read_regular_file(dir_fd: int, name: str, path: str, what: str) -> bytes | None:
    """The bytes of regular file ``name`` below ``dir_fd``; None if absent.

    Never follows a symbolic link (whose target would leak into error
    details) and never blocks on a FIFO (netconf.files). Raises
    StateCorrupt or IOFailure.
    """
    if dir_fd < 0:
        return None
    try:
        return read_regular_file(name, _LARGEST_RECORD, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise StateCorrupt(f"{what} {path} is {exc.kind}, not a regular file; refusing to read it", "move it aside") from exc
    except FileTooLarge as exc:
        raise StateCorrupt(f"{what} {path} is far larger than a record", "move it aside") from exc
    except OSError as exc:
        raise IOFailure(f"cannot read {what} {path}", os.strerror(exc.errno or 0)) from exc


def _unlink_record(directories: _Directories, name: str, path: str) -> None:
    try:
        os.unlink(name, dir_fd=directories.records_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise IOFailure(f"cannot remove state record {path}", os.strerror(exc.errno or 0)) from exc


def _sync(fd: int, directory: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise IOFailure(f"cannot sync state directory {directory}", os.strerror(exc.errno or 0)) from exc
