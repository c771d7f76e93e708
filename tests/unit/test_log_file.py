"""``logFile`` never hangs the plugin, never follows a link, never fails the verb (issue 11, defect 4).

Logging is not the protocol: a log file that cannot be used is reported on
stderr and the verb's answer on stdout is what it would have been without
it. The type is checked before opening, so a FIFO without a reader (which
would block ``open()`` forever) is never opened.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat

import pytest

from cni_plugin.dispatch import run
from cni_plugin.main import configure_logging

pytestmark = pytest.mark.usefixtures("fresh_plugin_log")

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 0}],
}


def invoke(tmp_path, log_file: str, anycast: str | None, log_level: str = "warning"):
    """An ADD through run() with the real logging set-up; SIGALRM fails a call that blocks."""
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/pod", "CNI_IFNAME": "eth0"}
    if anycast:
        environ["CNI_ARGS"] = f"FLOCK_ANYCAST={anycast}"
    document = {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24"], "stateDir": str(tmp_path / "state"), "logFile": log_file, "logLevel": log_level},
        "prevResult": PREV,
    }
    out = io.StringIO()

    def hang(signum, frame):
        raise TimeoutError("the plugin blocked")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        code = run(environ, io.BytesIO(json.dumps(document).encode()), out, setup_logging=configure_logging)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue()


def special_file(tmp_path, kind: str) -> str:
    path = str(tmp_path / kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)  # the socket file stays after close
    elif kind == "char-device":
        path = "/dev/null"
    elif kind == "symlink-to-file":
        target = tmp_path / "target"
        target.write_text("precious\n")
        os.symlink(target, path)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "fifo-target")
        os.symlink(tmp_path / "fifo-target", path)
    elif kind == "missing-directory":
        path = str(tmp_path / "no" / "such" / "dir" / "flock.log")
    return path


KINDS = ["fifo", "directory", "socket", "char-device", "symlink-to-file", "symlink-to-fifo", "missing-directory"]


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_log_file_on_a_failing_verb_keeps_the_error_answer(tmp_path, capsys, kind):
    log_file = special_file(tmp_path, kind)
    code, stdout = invoke(tmp_path, log_file, anycast="198.51.100.7")  # outside the pool: code 101, logged
    assert code == 1
    error = json.loads(stdout)
    assert error["code"] == 101 and stdout.count("\n") == 1, stdout
    assert "cannot use log file" in capsys.readouterr().err
    if kind == "symlink-to-file":
        assert (tmp_path / "target").read_text() == "precious\n"


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_log_file_on_a_succeeding_verb_keeps_the_result(tmp_path, capsys, kind):
    log_file = special_file(tmp_path, kind)
    code, stdout = invoke(tmp_path, log_file, anycast=None, log_level="debug")  # no source: passes prevResult on, logs at info
    assert code == 0, stdout
    assert json.loads(stdout)["ips"] == PREV["ips"]
    assert "cannot use log file" in capsys.readouterr().err


def test_regular_log_file_is_created_private_and_appended(tmp_path):
    log_file = tmp_path / "flock.log"
    code, stdout = invoke(tmp_path, str(log_file), anycast="198.51.100.7")
    assert json.loads(stdout)["code"] == 101
    assert "198.51.100.7" in log_file.read_text()
    assert stat.S_IMODE(os.stat(log_file).st_mode) & 0o077 == 0
