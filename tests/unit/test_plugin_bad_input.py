"""Every bad input gets its CNI code, an error JSON on stdout, and changes nothing.

Driven through the dispatcher's injectable ``run`` — no process, no root.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from cni_plugin.dispatch import run
from netconf.state import StateStore

PREV_DUAL = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 1}, {"address": "fd00:244::5/64", "interface": 1}],
}
PREV_V4 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 0}],
}


def env(command="ADD", **overrides):
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;FLOCK_ANYCAST=192.0.2.53,2001:db8:a::53",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def config(state_dir, version="1.0.0", prev=PREV_DUAL, **flock):
    block = {"pools": ["192.0.2.0/24", "2001:db8:a::/64"], "stateDir": state_dir, **flock}
    document = {"cniVersion": version, "name": "flocknet", "type": "flock-anycast", "flock": block}
    if prev is not None:
        document["prevResult"] = prev
    return document


def invoke(environ, stdin: bytes | dict):
    raw = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    out = io.StringIO()
    code = run(environ, io.BytesIO(raw), out)
    return code, out.getvalue()


def _cases(state_dir):
    good = config(state_dir)
    return [
        ("no CNI_COMMAND", env(CNI_COMMAND=None), good, 4, "CNI_COMMAND"),
        ("unknown verb", env("FROB"), good, 4, "FROB"),
        ("missing container id", env(CNI_CONTAINERID=None), good, 4, "CNI_CONTAINERID"),
        ("missing netns", env(CNI_NETNS=None), good, 4, "CNI_NETNS"),
        ("missing ifname", env(CNI_IFNAME=None), good, 4, "CNI_IFNAME"),
        ("bad container id", env(CNI_CONTAINERID="-abc"), good, 4, "CNI_CONTAINERID"),
        ("container id with slash", env(CNI_CONTAINERID="a/b"), good, 4, "CNI_CONTAINERID"),
        ("ifname too long", env(CNI_IFNAME="a" * 16), good, 4, "15 bytes"),
        ("ifname dot", env(CNI_IFNAME="."), good, 4, "CNI_IFNAME"),
        ("ifname slash", env(CNI_IFNAME="eth/0"), good, 4, "CNI_IFNAME"),
        ("ifname colon", env(CNI_IFNAME="eth:0"), good, 4, "CNI_IFNAME"),
        ("ifname space", env(CNI_IFNAME="eth 0"), good, 4, "CNI_IFNAME"),
        ("CNI_ARGS without =", env(CNI_ARGS="IgnoreUnknown"), good, 4, "CNI_ARGS"),
        ("stdin not JSON", env(), b"{nope", 6, "JSON"),
        ("stdin a list", env(), b"[1]", 6, "object"),
        ("stdin empty", env(), b"", 6, "config"),
        ("unknown cniVersion", env(), config(state_dir, version="9.9.9"), 1, "9.9.9"),
        ("no cniVersion (0.1.0)", env(), {k: v for k, v in good.items() if k != "cniVersion"}, 1, "0.1.0"),
        ("CHECK below 0.4.0", env("CHECK"), config(state_dir, version="0.3.1"), 1, "0.4.0"),
        ("GC below 1.1.0", env("GC"), config(state_dir, version="1.0.0"), 1, "1.1.0"),
        ("GC without CNI_PATH", env("GC", CNI_PATH=None), config(state_dir, version="1.1.0", prev=None), 4, "CNI_PATH"),
        ("STATUS below 1.1.0", env("STATUS"), config(state_dir, version="0.4.0"), 1, "1.1.0"),
        ("unknown key in flock block", env(), config(state_dir, bogus=1), 2, "bogus"),
        ("no flock block", env(), {k: v for k, v in good.items() if k != "flock"}, 7, "flock"),
        ("pools not CIDRs", env(), config(state_dir, pools=["nope"]), 7, "invalid network config"),
        ("pool with host bits", env(), config(state_dir, pools=["192.0.2.1/24"]), 7, "invalid network config"),
        ("relative stateDir", env(), config("relative/dir"), 7, "invalid network config"),
        ("ADD without prevResult", env(), config(state_dir, prev=None), 7, "prevResult"),
        ("prevResult with bad address", env(), config(state_dir, prev={"ips": [{"address": "nope"}]}), 7, "prevResult"),
        ("anycast not an address", env(CNI_ARGS="FLOCK_ANYCAST=banana"), good, 100, "banana"),
        ("anycast is a prefix", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.0/24"), good, 100, "192.0.2.0/24"),
        ("anycast multicast", env(CNI_ARGS="FLOCK_ANYCAST=ff02::1"), good, 100, "ff02::1"),
        ("anycast outside pools", env(CNI_ARGS="FLOCK_ANYCAST=198.51.100.7"), good, 101, "198.51.100.7"),
        ("empty pools allow nothing", env(), config(state_dir, pools=[]), 101, "192.0.2.53"),
        ("IPv6 anycast in IPv4-only pod", env(), config(state_dir, prev=PREV_V4), 102, "2001:db8:a::53"),
        ("pod netns missing", env(CNI_NETNS="/nonexistent/netns"), good, 103, "/nonexistent/netns"),
    ]


CASE_NAMES = [case[0] for case in _cases("/x")]
KEY = ("flocknet", "abc123", "eth0")  # network name, CNI_CONTAINERID, CNI_IFNAME of env() and config()


def written(state_dir):
    """What a verb left in the state directory besides the lock and the empty allocations directory."""
    if not os.path.exists(state_dir):
        return []
    found = [name for name in os.listdir(state_dir) if name not in ("state.lock", "allocations")]
    allocations = os.path.join(state_dir, "allocations")
    if os.path.isdir(allocations):
        found += [os.path.join("allocations", name) for name in os.listdir(allocations)]
    return sorted(found)


@pytest.mark.parametrize("index", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_bad_input_gets_its_code_and_writes_nothing(tmp_path, index):
    state_dir = str(tmp_path / "state")
    name, environ, stdin, expected_code, mentioned = _cases(state_dir)[index]
    code, stdout = invoke(environ, stdin)
    assert code != 0
    error = json.loads(stdout)  # exactly one JSON document, no traceback
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert error["code"] == expected_code, error
    assert mentioned in error["msg"] + error["details"], error
    # Nothing written: no record file (at most the empty directories and the lock).
    assert written(state_dir) == [], written(state_dir)


def test_missing_variables_are_all_named_at_once(tmp_path):
    code, stdout = invoke(env(CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None), config(str(tmp_path)))
    error = json.loads(stdout)
    assert error["code"] == 4
    for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
        assert name in error["msg"]


def test_error_uses_the_config_version_when_known(tmp_path):
    code, stdout = invoke(env(CNI_ARGS="FLOCK_ANYCAST=198.51.100.7"), config(str(tmp_path), version="0.4.0"))
    assert json.loads(stdout)["cniVersion"] == "0.4.0"


def test_unexpected_failure_is_code_999_not_relabelled(tmp_path, monkeypatch):
    from cni_plugin import verbs

    def explode(context):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(verbs, "cmd_add", explode)
    code, stdout = invoke(env(), config(str(tmp_path)))
    error = json.loads(stdout)
    assert code != 0 and error["code"] == 999
    assert "ZeroDivisionError" in error["details"]


@pytest.mark.parametrize("stdin", [b"", b'{"cniVersion":"0.4.0"}', b'{"cniVersion":"1.1.0"}'])
def test_version_needs_only_the_command(stdin):
    code, stdout = invoke({"CNI_COMMAND": "VERSION"}, stdin)
    reply = json.loads(stdout)
    assert code == 0
    assert reply["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert reply["cniVersion"] == (json.loads(stdin)["cniVersion"] if stdin else "1.1.0")


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
def test_verbs_that_do_not_need_netns(tmp_path, command):
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": "",
        "CNI_PATH": "/opt/cni/bin",
    }
    document = config(str(tmp_path / "state"), version="1.1.0", prev=None)
    document["cni.dev/valid-attachments"] = []
    code, stdout = invoke(environ, document)
    assert code == 0, stdout
    assert stdout == ""


CORRUPT = b'{"version": 2, "allocation": {"network": "flocknet", '


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC"])
def test_corrupt_state_record_is_reported_and_kept(tmp_path, request, command):
    state_dir = tmp_path / "state"
    path = StateStore(str(state_dir)).path_of(KEY)
    os.makedirs(os.path.dirname(path), mode=0o700)
    with open(path, "wb") as handle:
        handle.write(CORRUPT)
    if command == "ADD":
        # A real pod namespace, so ADD gets as far as the state (any other path is refused first).
        if os.geteuid() != 0:
            pytest.skip("needs root for a pod network namespace")
        netns = request.getfixturevalue("make_netns")("pod").path
    else:
        netns = str(tmp_path / "netns")
    document = config(str(state_dir), version="1.1.0", prev=None if command == "GC" else PREV_DUAL)
    document["cni.dev/valid-attachments"] = []
    code, stdout = invoke(env(command, CNI_NETNS=netns), document)
    error = json.loads(stdout)
    if command == "GC":  # GC reports it with the other failures and goes on
        assert code != 0 and error["code"] == 106 and path in error["details"], error
    else:
        assert code != 0 and error["code"] == 5, error
        assert path in error["msg"], error
    assert open(path, "rb").read() == CORRUPT
    assert written(str(state_dir)) == ["allocations/" + os.path.basename(path)]


def test_corrupt_record_of_another_attachment_is_only_reported_by_gc(tmp_path):
    state_dir = tmp_path / "state"
    other = StateStore(str(state_dir)).path_of(("flocknet", "other", "eth0"))
    os.makedirs(os.path.dirname(other), mode=0o700)
    with open(other, "wb") as handle:
        handle.write(CORRUPT)
    document = config(str(state_dir), version="1.1.0", prev=None)
    document["cni.dev/valid-attachments"] = []
    code, stdout = invoke(env("DEL", CNI_NETNS=""), document)
    assert (code, stdout) == (0, "")
    code, stdout = invoke(env("GC"), document)
    error = json.loads(stdout)
    assert error["code"] == 106 and other in error["details"], error
    assert open(other, "rb").read() == CORRUPT


def test_status_reports_unusable_state_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    document = config(str(blocker / "state"), version="1.1.0", prev=None)
    code, stdout = invoke({"CNI_COMMAND": "STATUS"}, document)
    error = json.loads(stdout)
    assert code != 0 and error["code"] == 50
