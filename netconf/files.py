"""Atomic file replacement, shared by the state store, install-cni and the BIRD exporter.

A reader — the reconciler listing state records, BIRD re-reading its
config, libcni loading a conflist — must see the old file or the new one,
never half of one, and a crash must leave one of the two: write a temp file
in the same directory, fsync it, rename it over the target, fsync the
directory. The directory fsync is separate so that a caller replacing
several files in one directory pays it once.

The readers here open files named by configs and state directories
without hanging on special files: a FIFO blocks ``open()`` forever (the
runtime's ADD with it, and every GC queued behind the state lock), a device
can have side effects on open, a directory or socket only fails later and
less clearly. So the type is checked before the open, the open never blocks
(O_NONBLOCK), and the type is checked again on the descriptor, because the
path can be swapped in between. Their errors say what a file is, never what
it holds: error details reach pod events, and a symlinked path must not
leak the content of the file it points at.

Standard library only (``os``, ``stat``): the plugin imports this on every exec.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from io import TextIOWrapper


def replace_file(
    path: str,
    payload: bytes,
    *,
    mode: int,
    temp_path: str | None = None,
    owner: tuple[int, int] | None = None,
    dir_fd: int | None = None,
) -> None:
    """Put ``payload`` at ``path`` by renaming a fsync'd temp file over it; raises OSError.

    ``temp_path`` defaults to ``.<name>.tmp`` beside ``path``; callers that
    hold a lock may share one temp name between files. ``owner`` (uid, gid)
    is applied when the process may (a file BIRD reads as user ``bird``).
    With ``dir_fd``, ``path`` and ``temp_path`` are names inside that
    directory: no path is resolved again after the caller checked the
    directory. The temp file is removed if anything fails. Follow with
    ``fsync_directory`` (or an fsync of ``dir_fd``) to make the rename durable.
    """
    if temp_path is None:
        directory, name = os.path.split(os.path.abspath(path))
        temp_path = os.path.join(directory, f".{name}.tmp")
    # O_NOFOLLOW: a symlink planted at the temp path must not make root write elsewhere.
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, payload)
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp_path, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise


def fsync_directory(directory: str) -> None:
    """Make the renames and unlinks done in ``directory`` durable; raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotRegularFile(OSError):
    """The path names something other than a regular file; ``kind`` says what."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class FileTooLarge(OSError):
    """A file is larger than its reader accepts."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words, for an error message."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return f"of unknown type {stat.S_IFMT(mode):o}"


def _require_regular(mode: int, path: str) -> None:
    if not stat.S_ISREG(mode):
        kind = file_kind(mode)
        raise NotRegularFile(f"{path} is {kind}, not a regular file", kind)


def read_regular_file(path: str, limit: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Symlinks are followed unless ``follow_symlinks`` is False: Kubernetes
    mounts secrets and projected tokens through them, while the state
    store follows none (a link there is planted). With ``dir_fd``,
    ``path`` is relative to that directory. Raises NotRegularFile (a
    symlink too, when not followed), FileTooLarge, FileNotFoundError and
    other OSError, and ValueError for a path with a NUL byte.
    """
    _require_regular(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks).st_mode, path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    descriptor = os.open(path, flags, dir_fd=dir_fd)
    try:
        info = os.fstat(descriptor)
        _require_regular(info.st_mode, path)
        if info.st_size > limit:
            raise FileTooLarge(f"{path} is larger than {limit} bytes")
        chunks = []
        size = 0
        while True:  # the file can grow after fstat: read at most limit + 1
            chunk = os.read(descriptor, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(f"{path} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def open_for_append(path: str) -> TextIOWrapper:
    """A regular file opened for appending as a UTF-8 text stream, created 0600 if missing.

    Never through a symlink (O_NOFOLLOW, and lstat first): root appending
    to whatever a link in a shared directory names would be a write
    anywhere. Raises NotRegularFile, OSError, and ValueError for a path with
    a NUL byte.
    """
    try:
        _require_regular(os.lstat(path).st_mode, path)
    except FileNotFoundError:
        pass  # created below
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    descriptor = os.open(path, flags, 0o600)
    try:
        _require_regular(os.fstat(descriptor).st_mode, path)
        return os.fdopen(descriptor, "a", encoding="utf-8", errors="backslashreplace")
    except BaseException:
        os.close(descriptor)
        raise
