"""Opening files named in the network config without hanging on special files.

A config can name any path as ``logFile`` or ``kubeconfig`` (and the
kubeconfig names more: token, CA, client certificate). A FIFO there blocks
``open()`` forever (the runtime's ADD with it, and every GC queued behind
the state lock); a device can have side effects on open; a directory or a
socket only fails later, less clearly. So the type is checked before the
open, the open never blocks (O_NONBLOCK), and the type is checked again on
the descriptor, because the path can be swapped in between.

Errors are OSError whose message says what the file is, never what it
holds: error details reach pod events, and a symlinked path must not leak
the content of the file it points at.
"""

from __future__ import annotations

import os
import stat


class NotRegularFile(OSError):
    """The path names something other than a regular file."""


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
        raise NotRegularFile(f"{path} is {file_kind(mode)}, not a regular file")


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; symlinks are followed.

    Followed because Kubernetes mounts secrets and projected tokens through
    symlinks. Raises NotRegularFile, FileTooLarge, OSError, and ValueError
    for a path with a NUL byte.
    """
    _require_regular(os.stat(path).st_mode, path)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
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


def open_for_append(path: str):
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
