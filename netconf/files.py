"""Atomic file replacement (STYLE rule 10), shared by the state store, install-cni and the BIRD exporter.

A reader — the reconciler listing state records, BIRD re-reading its
config, libcni loading a conflist — must see the old file or the new one,
never half of one, and a crash must leave one of the two: write a temp file
in the same directory, fsync it, rename it over the target, fsync the
directory. The directory fsync is separate so that a caller replacing
several files in one directory pays it once.

Standard library ``os`` only: the plugin imports this on every exec.
"""

from __future__ import annotations

import os


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
