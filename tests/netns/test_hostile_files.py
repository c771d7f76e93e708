"""Special files as ``kubeconfig`` and ``logFile``, against the executed binaries (issue 11, defect 4).

The unit tier drives ``run()`` in-process (tests/unit/test_hostile_input.py,
test_log_file.py); this one execs the source entry point and the frozen
binary the way a runtime does, so ``main()``'s real stdout, stderr and exit
are what is judged, and a plugin that blocks on an open is killed by the
timeout instead of hanging the suite. No namespace is entered: every case is
refused, or answered, before the pod netns is used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

TIMEOUT = 20
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 0}],
}


def exec_plugin(binary: str, environ: dict[str, str], document: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary],
        input=json.dumps(document).encode(),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ},
        capture_output=True,
        timeout=TIMEOUT,  # a hang fails here
    )


def make_special(tmp_path, kind: str) -> str:
    path = str(tmp_path / kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
    elif kind == "char-device":
        return "/dev/zero"  # endless: read whole, it would exhaust memory
    elif kind == "symlink-to-fifo":
        os.mkfifo(path + "-target")
        os.symlink(path + "-target", path)
    return path


def base(tmp_path, **flock) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24"], "stateDir": str(tmp_path / "state"), **flock},
        "prevResult": PREV,
    }


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/pod", "CNI_IFNAME": "eth0"}
KINDS = ["fifo", "directory", "socket", "char-device", "symlink-to-fifo"]


@pytest.mark.parametrize("kind", KINDS)
def test_special_kubeconfig_is_code_7_without_hanging(plugin_binary, tmp_path, kind):
    path = make_special(tmp_path, kind)
    environ = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=dns;K8S_POD_NAME=resolver-0"}
    completed = exec_plugin(plugin_binary, environ, base(tmp_path, kubeconfig=path))
    assert completed.returncode != 0
    error = json.loads(completed.stdout)
    assert error["code"] == 7 and "not a regular file" in error["details"], error
    assert not os.path.exists(tmp_path / "state" / "allocations") or not os.listdir(tmp_path / "state" / "allocations")


@pytest.mark.parametrize("kind", KINDS)
def test_special_log_file_does_not_hang_or_change_the_answer(plugin_binary, tmp_path, kind):
    path = make_special(tmp_path, kind)
    environ = {**ENV, "CNI_ARGS": "FLOCK_ANYCAST=198.51.100.7"}  # outside the pool: 101, logged
    completed = exec_plugin(plugin_binary, environ, base(tmp_path, logFile=path))
    assert completed.returncode == 1
    assert json.loads(completed.stdout)["code"] == 101
    assert b"cannot use log file" in completed.stderr


def test_nul_in_log_file_is_code_7_on_stdout(plugin_binary, tmp_path):
    completed = exec_plugin(
        plugin_binary, {**ENV, "CNI_ARGS": "FLOCK_ANYCAST=198.51.100.7"}, base(tmp_path, logFile="/tmp/x\x00y")
    )
    assert completed.returncode != 0
    assert b"Traceback" not in completed.stdout
    error = json.loads(completed.stdout)
    assert error["code"] == 7 and "logFile" in error["details"], error


def test_deep_nesting_is_code_6(plugin_binary, tmp_path):
    completed = subprocess.run(
        [plugin_binary],
        input=b"[" * 200_000 + b"]" * 200_000,
        env={"PATH": os.environ.get("PATH", ""), **ENV},
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert completed.returncode != 0 and json.loads(completed.stdout)["code"] == 6
