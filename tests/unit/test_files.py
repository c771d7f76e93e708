"""Atomic replacement shared by the state store, install-cni and the BIRD exporter."""

from __future__ import annotations

import os
import stat

import pytest

from netconf.files import fsync_directory, replace_file


def test_replaces_with_the_given_mode_whatever_the_umask(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    previous = os.umask(0o077)
    try:
        replace_file(str(target), b"new", mode=0o644)
    finally:
        os.umask(previous)
    fsync_directory(str(tmp_path))
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["file"]  # no temp file left


def test_a_symlink_at_the_temp_path_is_refused_and_nothing_changes(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    elsewhere = tmp_path / "elsewhere"
    os.symlink(elsewhere, tmp_path / ".file.tmp")
    with pytest.raises(OSError):
        replace_file(str(target), b"new", mode=0o600)
    assert target.read_bytes() == b"old"
    assert not elsewhere.exists()


def test_a_failed_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "directory"
    target.mkdir()
    (target / "child").write_bytes(b"")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        replace_file(str(target), b"new", mode=0o600, temp_path=str(tmp_path / "shared.tmp"))
    assert sorted(os.listdir(tmp_path)) == ["directory"]
