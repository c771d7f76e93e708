"""Readiness sources: always, and the watched file (real inotify, no root needed)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from ipaddress import ip_address

import pytest

from netconf.values import Allocation, PodRef
from reconciler.main import make_readiness_source
from reconciler.node_config import ReadinessSettings
from reconciler.readiness import (
    AlwaysReady,
    FileReadiness,
    ReadinessFileError,
    parse_readiness_document,
    readiness_keys,
)
from reconciler.watch import ANY_FILE, FileWatch

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def allocation(cid="c0ffee", namespace="dns", name="resolver-0", uid="uid-1"):
    return Allocation(
        network="flocknet",
        container_id=cid,
        ifname="eth0",
        netns="/run/netns/x",
        pod=PodRef(namespace=namespace, name=name, uid=uid),
        anycast=(ip_address("192.0.2.53"),),
        pod_ips=(ip_address("10.1.0.2"),),
        state="committed",
        created_at=T0,
        updated_at=T0,
    )


def write_atomically(path, text):
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temp, path)


class Wakes:
    def __init__(self):
        self.reasons = []
        self.event = threading.Event()

    def __call__(self, reason):
        self.reasons.append(reason)
        self.event.set()

    def wait(self, timeout=5.0):
        assert self.event.wait(timeout), "no wake-up within the deadline"
        self.event.clear()


def test_always_source_says_every_allocation_is_ready():
    source = AlwaysReady()

    assert source.observe().is_ready(allocation())
    assert source.status().healthy


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"uid-1": true, "dns/other": false}', {"uid-1": True, "dns/other": False}),
        ("uid-1: true\ndns/resolver-0: no\n", {"uid-1": True, "dns/resolver-0": False}),
        ("", {}),
        ("{}", {}),
    ],
    ids=["json", "yaml", "empty", "empty mapping"],
)
def test_parse_readiness_document(text, expected):
    assert parse_readiness_document(text) == expected


@pytest.mark.parametrize(
    "text",
    ['["uid-1"]', '{"uid-1": "yes please"}', '{"uid-1": 1}', "{: true", "key: [unclosed"],
    ids=["list", "string value", "number value", "broken json+yaml", "broken yaml"],
)
def test_invalid_readiness_documents_are_rejected(text):
    with pytest.raises(ReadinessFileError):
        parse_readiness_document(text)


def test_keys_most_specific_first():
    assert readiness_keys(allocation()) == ["uid-1", "dns/resolver-0", "c0ffee"]
    assert readiness_keys(allocation(namespace=None, name=None, uid=None)) == ["c0ffee"]


@pytest.mark.parametrize(
    "mapping, ready",
    [
        ({"uid-1": True}, True),
        ({"dns/resolver-0": True}, True),
        ({"c0ffee": True}, True),
        ({"uid-1": False, "dns/resolver-0": True}, False),
        ({"dns/resolver-0": False, "c0ffee": True}, False),
        ({"dns/other": True}, False),
        ({}, False),
    ],
    ids=["uid", "namespace/name", "container id", "uid wins", "name wins over container", "other pod", "missing"],
)
def test_file_lookup(tmp_path, mapping, ready):
    path = tmp_path / "ready.json"
    import json

    path.write_text(json.dumps(mapping))
    source = FileReadiness(str(path))

    assert source.observe().is_ready(allocation()) is ready


def test_bad_file_keeps_last_good_view_and_reports_it(tmp_path):
    path = tmp_path / "ready.yaml"
    path.write_text("uid-1: true\n")
    source = FileReadiness(str(path))
    assert source.observe().is_ready(allocation())

    path.write_text("uid-1: [broken\n")
    view = source.observe()

    assert view.is_ready(allocation())
    status = source.status()
    assert not status.healthy and "invalid readiness file" in status.detail

    path.unlink()
    assert source.observe().is_ready(allocation())
    assert "cannot read" in source.status().detail

    path.write_text("uid-1: false\n")
    assert not source.observe().is_ready(allocation())
    assert source.status().healthy


def test_missing_file_at_start_means_nothing_ready(tmp_path):
    source = FileReadiness(str(tmp_path / "absent.json"))

    assert not source.observe().is_ready(allocation())
    assert not source.status().healthy


def test_file_source_wakes_the_loop_on_atomic_replace_and_in_place_write(tmp_path):
    path = tmp_path / "ready.json"
    path.write_text("{}")
    wakes = Wakes()
    source = FileReadiness(str(path))
    source.start(wakes)
    try:
        write_atomically(path, '{"uid-1": true}')
        wakes.wait()
        assert source.observe().is_ready(allocation())

        path.write_text('{"uid-1": false}')
        wakes.wait()
        assert not source.observe().is_ready(allocation())
        assert set(wakes.reasons) == {"readiness-file"}
    finally:
        source.stop()


def test_file_watch_ignores_other_files_in_the_directory(tmp_path):
    wakes = Wakes()
    watch = FileWatch({str(tmp_path / "state.json"): "state-file"}, wakes)
    watch.start()
    try:
        (tmp_path / "state.lock").write_text("")
        (tmp_path / ".state.json.tmp").write_text("{}")
        os.replace(tmp_path / ".state.json.tmp", tmp_path / "state.json")
        wakes.wait()
        assert wakes.reasons == ["state-file"]  # the lock and temp files woke nobody
    finally:
        watch.stop()


def test_file_watch_picks_up_a_directory_created_later(tmp_path):
    directory = tmp_path / "later"
    wakes = Wakes()
    watch = FileWatch({str(directory / "state.json"): "state-file"}, wakes)
    watch.start()
    try:
        assert watch.ensure_watches() == [str(directory)]
        directory.mkdir()
        assert watch.ensure_watches() == []
        (directory / "state.json").write_text("{}")
        wakes.wait()
        assert set(wakes.reasons) == {"state-file"}
    finally:
        watch.stop()


def test_file_watch_wildcard_wakes_on_record_files_but_not_on_dot_files(tmp_path):
    wakes = Wakes()
    # "sentinel" has its own reason (an exact name wins over the wildcard): touching it
    # after the dot-file writes proves, by queue order, that those writes woke nobody.
    watch = FileWatch({str(tmp_path / ANY_FILE): "state-file", str(tmp_path / "sentinel"): "sentinel"}, wakes)
    watch.start()
    try:
        # Writes to dot files alone (a writer's temp file, created, written, removed): no wake-up.
        (tmp_path / ".x.tmp").write_text("{}")
        (tmp_path / ".y.tmp").write_text("{}")
        os.unlink(tmp_path / ".y.tmp")
        os.mkdir(tmp_path / "sentinel")  # one inotify event, so one wake-up
        wakes.wait()
        assert wakes.reasons == ["sentinel"]

        # The writer renames its temp file into place: a record file appears.
        del wakes.reasons[:]
        os.replace(tmp_path / ".x.tmp", tmp_path / "a+b+c.json")
        wakes.wait()
        assert wakes.reasons == ["state-file"]

        # A record is removed (DEL, GC).
        del wakes.reasons[:]
        os.unlink(tmp_path / "a+b+c.json")
        wakes.wait()
        assert wakes.reasons == ["state-file"]
    finally:
        watch.stop()


def test_file_watch_wildcard_covers_a_directory_created_later(tmp_path):
    directory = tmp_path / "state" / "allocations"
    wakes = Wakes()
    watch = FileWatch({str(directory / ANY_FILE): "state-file"}, wakes)
    watch.start()
    try:
        assert watch.ensure_watches() == [str(directory)]
        directory.mkdir(parents=True)
        assert watch.ensure_watches() == []
        (directory / ".n+c+eth0.json.tmp").write_text("{}")
        os.replace(directory / ".n+c+eth0.json.tmp", directory / "n+c+eth0.json")
        wakes.wait()
        assert wakes.reasons == ["state-file"]
    finally:
        watch.stop()


def test_make_readiness_source_by_setting(tmp_path):
    assert make_readiness_source(ReadinessSettings(source="always")).name == "always"
    file_source = make_readiness_source(ReadinessSettings(source="file", file=str(tmp_path / "r.json")))
    assert file_source.name == "file"
    with pytest.raises(ValueError, match="needs nodeName"):
        make_readiness_source(ReadinessSettings(source="kubernetes"))
    unusable = ReadinessSettings(source="kubernetes", kubernetes={"kubeconfig": str(tmp_path / "nonexistent")})
    with pytest.raises(ValueError, match="nonexistent"):
        make_readiness_source(unusable, node_name="node-a")
