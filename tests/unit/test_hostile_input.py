"""A hostile-input table: every case gets its CNI code and changes nothing (issue 11).

Grown from the classes of the issue's ~2,600 hostile executions: wrong
types, environment errors, NUL bytes, huge inputs, deep nesting, special
files, odd Unicode, trailing newlines, invalid prevResult, unusable pod IPs
and special anycast addresses. Each case runs through the dispatcher's
injectable ``run`` with the real logging set-up, and must give

* a non-zero exit and exactly one line on stdout: the error JSON with the
  expected code (no traceback, nothing else);
* an unchanged state directory (which holds another attachment's record);
* an answer within seconds (a special file that blocks an open would hang:
  SIGALRM turns that into a failure).

Special files are made without root (mkfifo, a bound Unix socket, /dev/null).
The same files against the executed binaries: tests/netns/test_hostile_files.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time

import pytest

from cni_plugin.anycast import MAX_ADDRESSES
from cni_plugin.dispatch import MAX_NESTING, run
from cni_plugin.main import configure_logging
from netconf.state import StateStore
from netconf.values import Allocation, utc_now

ANYCAST = "192.0.2.53,2001:db8:a::53"
POOLS = ["192.0.2.0/24", "2001:db8:a::/64", "240.0.0.0/24", "198.51.100.8/31"]
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/pod"}],
    "ips": [{"address": "10.244.0.5/24", "interface": 1}, {"address": "fd00:244::5/64", "interface": 1}],
}
SECRET = "hunter2-do-not-leak"

pytestmark = pytest.mark.usefixtures("fresh_plugin_log")


class Lab:
    """Paths of one test: state dir (seeded), a fake netns file, special files."""

    def __init__(self, root) -> None:
        self.root = str(root)
        self.state_dir = os.path.join(self.root, "state")
        self.netns = os.path.join(self.root, "netns")
        open(self.netns, "w").close()
        self.fifo = os.path.join(self.root, "fifo")
        os.mkfifo(self.fifo)
        self.directory = os.path.join(self.root, "a-directory")
        os.mkdir(self.directory)
        self.socket_path = os.path.join(self.root, "socket")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.fifo_link = os.path.join(self.root, "fifo-link")
        os.symlink(self.fifo, self.fifo_link)
        # Files whose content must never reach stdout (a kubeconfig path may be a symlink to anything).
        self.secret_yaml = os.path.join(self.root, "secret.yaml")
        with open(self.secret_yaml, "w") as handle:
            handle.write(f"password: {SECRET}\n")
        self.secret_garbage = os.path.join(self.root, "secret.txt")
        with open(self.secret_garbage, "w") as handle:
            handle.write(f"{{[: {SECRET} ]]\n\t{SECRET}: [\n")
        self.secret_link = os.path.join(self.root, "kubeconfig-link")
        os.symlink(self.secret_garbage, self.secret_link)

    def kubeconfig(self, name: str, user: dict | None = None, cluster: dict | None = None) -> str:
        path = os.path.join(self.root, name)
        document = {
            "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9", **(cluster or {})}}],
            "users": [{"name": "u", "user": user or {"token": "t0ken"}}],
        }
        with open(path, "w") as handle:
            json.dump(document, handle)
        return path

    def close(self) -> None:
        self.listener.close()


def env(command="ADD", **overrides):
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;FLOCK_ANYCAST={ANYCAST}",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def k8s_env(**overrides):
    return env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=dns;K8S_POD_NAME=resolver-0", **overrides)


def config(lab: Lab, version="1.0.0", prev=PREV, top=None, **flock):
    block = {"pools": POOLS, "stateDir": lab.state_dir, **flock}
    document = {"cniVersion": version, "name": "flocknet", "type": "flock-anycast", "flock": block}
    if prev is not None:
        document["prevResult"] = prev
    document.update(top or {})
    return document


def prev_with(*addresses: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
        "ips": [{"address": address, "interface": 0} for address in addresses],
    }


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def raw_config(lab: Lab, inner: bytes, where: str = "x") -> bytes:
    """A valid config with ``inner`` (raw JSON) as the value of top-level key ``where``."""
    text = json.dumps(config(lab)).encode()
    return text[:-1] + b', "' + where.encode() + b'": ' + inner + b"}"


def many(count: int, network: str = "2001:db8:a::") -> list[str]:
    return [f"{network}{index + 1:x}" for index in range(count)]


# Built once: the table is rebuilt per case, these are the expensive parts.
HUNDRED_THOUSAND = many(100_000)
HUNDRED_THOUSAND_TEXT = ",".join(HUNDRED_THOUSAND)
DEEP = nested(200_000)


# (name, environ, stdin, expected code, text the msg or details must contain)
def hostile_cases(lab: Lab):
    good = config(lab)
    gc = config(lab, version="1.1.0", prev=None, top={"cni.dev/valid-attachments": []})

    def with_pod_ips(*addresses: str) -> dict:
        return config(lab, prev=prev_with(*addresses))

    def with_kubeconfig(name: str, **sections) -> dict:
        return config(lab, kubeconfig=lab.kubeconfig(name, **sections))

    return [
        # --- wrong types
        ("pools a string", env(), config(lab, pools="192.0.2.0/24"), 7, "pools"),
        ("pools of numbers", env(), config(lab, pools=[5]), 7, "pools"),
        ("stateDir a number", env(), config(lab, stateDir=5), 7, "stateDir"),
        ("kubeconfig a list", env(), config(lab, kubeconfig=["/x"]), 7, "kubeconfig"),
        ("logFile an object", env(), config(lab, logFile={"a": 1}), 7, "logFile"),
        ("logLevel unknown", env(), config(lab, logLevel="verbose"), 7, "logLevel"),
        ("apiTimeout a string", env(), config(lab, apiTimeout="soon"), 7, "apiTimeout"),
        ("lockTimeout negative", env(), config(lab, lockTimeout=-1), 7, "lockTimeout"),
        ("apiTimeout NaN", env(), json.dumps(config(lab, apiTimeout=float("nan"))).encode(), 7, "apiTimeout"),
        ("lockTimeout Infinity", env(), json.dumps(config(lab, lockTimeout=float("inf"))).encode(), 7, "lockTimeout"),
        ("a number of 5,000 digits", env(), raw_config(lab, b"1" * 5000), 6, "JSON"),
        ("flock a string", env(), {**good, "flock": "yes"}, 7, "flock"),
        ("name a number", env(), {**good, "name": 5}, 7, "name"),
        ("name empty", env(), {**good, "name": ""}, 7, "name"),
        ("cniVersion a number", env(), {**good, "cniVersion": 1.0}, 1, "1.0"),
        ("prevResult a list", env(), config(lab, prev=[]), 7, "prevResult"),
        ("prevResult ips an object", env(), config(lab, prev={"ips": {"address": "10.0.0.5/24"}}), 7, "prevResult"),
        ("prevResult address a number", env(), config(lab, prev={"ips": [{"address": 5}]}), 7, "prevResult"),
        ("runtimeConfig a list", env(), {**good, "runtimeConfig": []}, 7, "runtimeConfig"),
        ("runtimeConfig.anycast a string", env(), {**good, "runtimeConfig": {"anycast": "192.0.2.53"}}, 7, "runtimeConfig"),
        ("args.cni.anycast a number", env(), {**good, "args": {"cni": {"anycast": 5}}}, 7, "args"),
        ("GC attachments a string", env("GC"), {**gc, "cni.dev/valid-attachments": "all"}, 7, "valid-attachments"),
        # --- environment
        ("verb in lower case", env("add"), good, 4, "add"),
        ("verb with trailing newline", env("ADD\n"), good, 4, "CNI_COMMAND"),
        ("container id with trailing newline", env(CNI_CONTAINERID="abc123\n"), good, 4, "CNI_CONTAINERID"),
        ("container id with inner newline", env(CNI_CONTAINERID="abc\n123"), good, 4, "CNI_CONTAINERID"),
        ("container id with NUL", env(CNI_CONTAINERID="abc\x00"), good, 4, "CNI_CONTAINERID"),
        ("container id fullwidth", env(CNI_CONTAINERID="ａbc"), good, 4, "CNI_CONTAINERID"),
        ("container id not UTF-8", env(CNI_CONTAINERID="abc\udcff"), good, 4, "CNI_CONTAINERID"),
        ("DEL container id with newline", env("DEL", CNI_CONTAINERID="abc123\n"), good, 4, "CNI_CONTAINERID"),
        ("ifname with trailing newline", env(CNI_IFNAME="eth0\n"), good, 4, "CNI_IFNAME"),
        ("ifname with NUL", env(CNI_IFNAME="eth\x000"), good, 4, "CNI_IFNAME"),
        ("ifname unicode space", env(CNI_IFNAME="eth\u20030"), good, 4, "CNI_IFNAME"),
        ("ifname not UTF-8", env(CNI_IFNAME="eth\udcff"), good, 4, "CNI_IFNAME"),
        ("ifname 16 bytes of UTF-8", env(CNI_IFNAME="é" * 8), good, 4, "15 bytes"),
        ("netns with NUL", env(CNI_NETNS="/run/netns/\x00pod"), good, 4, "CNI_NETNS"),
        ("netns not UTF-8", env(CNI_NETNS="/run/netns/\udcff"), good, 4, "CNI_NETNS"),
        ("CNI_ARGS not UTF-8", env(CNI_ARGS="K8S_POD_NAME=\udcff"), good, 4, "CNI_ARGS"),
        ("CNI_ARGS with NUL", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53\x00"), good, 4, "CNI_ARGS"),
        ("CNI_ARGS empty key", env(CNI_ARGS="=192.0.2.53"), good, 4, "CNI_ARGS"),
        # --- NUL bytes in config paths (every verb that reads the config)
        ("stateDir with NUL", env(), config(lab, stateDir=lab.state_dir + "\x00x"), 7, "stateDir"),
        ("stateDir with NUL, DEL", env("DEL"), config(lab, stateDir="/var/lib/\x00flock"), 7, "NUL"),
        ("stateDir with NUL, STATUS", env("STATUS"), config(lab, "1.1.0", stateDir="/var/\x00"), 7, "NUL"),
        ("kubeconfig with NUL", k8s_env(), config(lab, kubeconfig="/etc/cni/\x00kc"), 7, "kubeconfig"),
        ("kubeconfig with NUL, CHECK", env("CHECK"), config(lab, kubeconfig="/etc/\x00kc"), 7, "NUL"),
        ("logFile with NUL", env(), config(lab, logFile="/var/log/flock\x00.log"), 7, "logFile"),
        ("logFile with NUL, DEL", env("DEL"), config(lab, logFile="/var/log/\x00"), 7, "NUL"),
        ("logFile with NUL, GC", env("GC"), {**gc, "flock": {**gc["flock"], "logFile": "\x00"}}, 7, "NUL"),
        # --- huge inputs: refused before any address is parsed
        ("65 addresses", env(CNI_ARGS="FLOCK_ANYCAST=" + ",".join(many(MAX_ADDRESSES + 1))), good, 108, "64"),
        ("100,000 addresses in CNI_ARGS", env(CNI_ARGS="FLOCK_ANYCAST=" + HUNDRED_THOUSAND_TEXT), good, 108, "CNI_ARGS"),
        ("100,000 junk items in CNI_ARGS", env(CNI_ARGS="FLOCK_ANYCAST=" + "x," * 100_000), good, 108, "CNI_ARGS"),
        ("100,000 addresses in runtimeConfig", env(),
         {**good, "runtimeConfig": {"anycast": HUNDRED_THOUSAND}}, 108, "runtimeConfig"),
        ("100,000 addresses in args.cni", env(), {**good, "args": {"cni": {"anycast": HUNDRED_THOUSAND_TEXT}}}, 108, "args.cni"),
        ("100,000 duplicates", env(CNI_ARGS="FLOCK_ANYCAST=" + ",".join(["192.0.2.53"] * 100_000)), good, 108, "64"),
        # --- deep nesting
        ("200,000 levels at the top", env(), DEEP, 6, "nested"),
        ("200,000 levels inside the config", env(), raw_config(lab, DEEP), 6, "nested"),
        ("200,000 levels in prevResult", env(), raw_config(lab, b'{"ips": [], "x": ' + DEEP + b"}", "prevResult"), 6, "nested"),
        (f"{MAX_NESTING + 1} levels inside the config", env(), raw_config(lab, nested(MAX_NESTING)), 6, "nested"),
        ("900 levels of objects", env(), raw_config(lab, b'{"a":' * 900 + b"1" + b"}" * 900), 6, "nested"),
        ("200,000 levels, VERSION", env("VERSION"), DEEP, 6, "nested"),
        ("200,000 levels, DEL", env("DEL"), raw_config(lab, DEEP), 6, "nested"),
        # --- special files and symlinks as kubeconfig (the annotation source reads it)
        ("kubeconfig a FIFO", k8s_env(), config(lab, kubeconfig=lab.fifo), 7, "FIFO"),
        ("kubeconfig a symlink to a FIFO", k8s_env(), config(lab, kubeconfig=lab.fifo_link), 7, "FIFO"),
        ("kubeconfig a directory", k8s_env(), config(lab, kubeconfig=lab.directory), 7, "directory"),
        ("kubeconfig a socket", k8s_env(), config(lab, kubeconfig=lab.socket_path), 7, "socket"),
        ("kubeconfig /dev/null", k8s_env(), config(lab, kubeconfig="/dev/null"), 7, "character device"),
        ("kubeconfig /dev/zero", k8s_env(), config(lab, kubeconfig="/dev/zero"), 7, "character device"),
        ("kubeconfig missing", k8s_env(), config(lab, kubeconfig=os.path.join(lab.root, "nope")), 7, "kubeconfig"),
        ("kubeconfig symlink to non-YAML secret", k8s_env(), config(lab, kubeconfig=lab.secret_link), 7, "neither JSON nor YAML"),
        ("kubeconfig a YAML secret", k8s_env(), config(lab, kubeconfig=lab.secret_yaml), 7, "current-context"),
        ("kubeconfig tokenFile a FIFO", k8s_env(), with_kubeconfig("k1", user={"tokenFile": lab.fifo}), 7, "FIFO"),
        ("kubeconfig CA file a FIFO", k8s_env(),
         with_kubeconfig("k2", cluster={"server": "https://127.0.0.1:9", "certificate-authority": lab.fifo}), 7, "FIFO"),
        ("kubeconfig client key /dev/zero", k8s_env(),
         with_kubeconfig("k3", user={"client-certificate": "/dev/zero", "client-key": "/dev/zero"}), 7, "character device"),
        ("kubeconfig token with newline", k8s_env(),
         with_kubeconfig("k4", user={"token": SECRET + "\nX-Evil: 1"}), 7, "bearer token"),
        ("kubeconfig server a number", k8s_env(), with_kubeconfig("k5", cluster={"server": 5}), 7, "server"),
        ("kubeconfig server with bad port", k8s_env(), with_kubeconfig("k6", cluster={"server": "https://h:port"}), 7, "port"),
        ("kubeconfig CA data not base64", k8s_env(),
         with_kubeconfig("k7", cluster={"certificate-authority-data": "a"}), 7, "base64"),
        ("kubeconfig CA data not a certificate", k8s_env(),
         with_kubeconfig("k8", cluster={"server": "https://127.0.0.1:9", "certificate-authority-data": "aGVsbG8="}), 7, "CA"),
        # --- odd Unicode
        ("stdin with a lone surrogate escape", env(),
         json.dumps(config(lab, logLevel="warning")).replace('"flocknet"', '"\\ud800"').encode(), 6, "Unicode"),
        ("stdin with a UTF-8-encoded surrogate", env(),
         json.dumps(good).replace('"flocknet"', '"X"').encode().replace(b'"X"', b'"\xed\xa0\x80"'), 6, "Unicode"),
        ("stdin in Latin-1", env(),
         json.dumps(good).replace('"flocknet"', '"fl\\u00f6ck"').encode().replace(b"\\u00f6", b"\xf6"), 6, "JSON"),
        ("anycast in Arabic digits", env(CNI_ARGS="FLOCK_ANYCAST=١٩٢.0.2.53"), good, 100, "FLOCK_ANYCAST"),
        ("anycast in fullwidth digits", env(CNI_ARGS="FLOCK_ANYCAST=１92.0.2.53"), good, 100, "FLOCK_ANYCAST"),
        ("anycast with a scope id", env(CNI_ARGS="FLOCK_ANYCAST=2001:db8:a::53%eth0"), good, 100, "scope"),
        ("anycast with a zero-width space", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53\u200b"), good, 100, "192.0.2.53"),
        # --- trailing newlines elsewhere
        ("cniVersion with trailing newline", env(), {**good, "cniVersion": "1.0.0\n"}, 1, "1.0.0"),
        ("anycast with an inner newline", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.\n53"), good, 100, "192.0.2."),
        # --- invalid prevResult
        ("prevResult address without prefix", env(), with_pod_ips("10.244.0.5"), 7, "prefix length"),
        ("prevResult IPv6 without prefix", env(), with_pod_ips("fd00:244::5"), 7, "prefix length"),
        ("prevResult address with scope id", env(), with_pod_ips("fe80::5%eth0/64"), 7, "scope"),
        ("prevResult prefix too long", env(), with_pod_ips("10.244.0.5/33"), 7, "prevResult"),
        ("prevResult address with newline", env(), with_pod_ips("10.244.0.5/24\n"), 7, "prevResult"),
        ("CHECK prevResult without prefix", env("CHECK"), with_pod_ips("10.244.0.5"), 7, "prefix length"),
        # --- pod IPs that are no usable next hop (code 102)
        ("pod IP loopback", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"), with_pod_ips("127.0.0.5/8"), 102, "127.0.0.5"),
        ("pod IP unspecified", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"), with_pod_ips("0.0.0.0/24"), 102, "0.0.0.0"),
        ("pod IP in 0.0.0.0/8", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"), with_pod_ips("0.1.2.3/8"), 102, "0.1.2.3"),
        ("pod IP broadcast", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"),
         with_pod_ips("255.255.255.255/32"), 102, "255.255.255.255"),
        ("pod IP multicast", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"), with_pod_ips("224.0.0.5/4"), 102, "224.0.0.5"),
        ("pod IP link-local v4", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"), with_pod_ips("169.254.3.4/16"), 102, "169.254.3.4"),
        ("pod IP link-local v6", env(CNI_ARGS="FLOCK_ANYCAST=2001:db8:a::53"),
         with_pod_ips("10.244.0.5/24", "fe80::5/64"), 102, "fe80::5"),
        ("pod IP IPv4-mapped", env(CNI_ARGS="FLOCK_ANYCAST=2001:db8:a::53"),
         with_pod_ips("::ffff:10.244.0.5/96"), 102, "not usable"),
        ("pod IP multicast v6", env(CNI_ARGS="FLOCK_ANYCAST=2001:db8:a::53"), with_pod_ips("ff02::5/64"), 102, "ff02::5"),
        ("pod IP is the anycast address", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.53"),
         with_pod_ips("192.0.2.53/24"), 102, "192.0.2.53"),
        ("pod IP v6 is the anycast address", env(), with_pod_ips("10.244.0.5/24", "2001:db8:a::53/64"), 102, "2001:db8:a::53"),
        # --- anycast addresses no pool may hand out
        ("anycast class E", env(CNI_ARGS="FLOCK_ANYCAST=240.0.0.53"), good, 100, "class E"),
        ("anycast limited broadcast", env(CNI_ARGS="FLOCK_ANYCAST=255.255.255.255"),
         config(lab, pools=["255.255.255.255/32"]), 100, "class E"),
        ("anycast in 0.0.0.0/8", env(CNI_ARGS="FLOCK_ANYCAST=0.0.0.53"), config(lab, pools=["0.0.0.0/24"]), 100, "this network"),
        ("anycast IPv4-mapped", env(CNI_ARGS="FLOCK_ANYCAST=::ffff:192.0.2.53"),
         config(lab, pools=["::ffff:0:0/96"]), 100, "IPv4-mapped"),
        ("anycast loopback", env(CNI_ARGS="FLOCK_ANYCAST=127.0.0.53"), config(lab, pools=["127.0.0.0/8"]), 100, "loopback"),
        ("anycast pool network address", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.0"),
         good, 101, "network address of pool 192.0.2.0/24"),
        ("anycast pool broadcast address", env(CNI_ARGS="FLOCK_ANYCAST=192.0.2.255"),
         good, 101, "broadcast address of pool 192.0.2.0/24"),
        ("anycast IPv6 Subnet-Router anycast", env(CNI_ARGS="FLOCK_ANYCAST=2001:db8:a::"), good, 101, "Subnet-Router"),
    ]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    store = StateStore(lab.state_dir)
    now = utc_now()
    with store.transaction() as transaction:  # another attachment's record, which must survive every case
        transaction.put(
            Allocation(
                network="flocknet",
                container_id="other",
                ifname="eth0",
                netns=lab.netns,
                anycast=(),
                pod_ips=(),
                state="committed",
                created_at=now,
                updated_at=now,
            )
        )
    yield lab
    lab.close()


def snapshot(directory: str) -> dict[str, bytes | str]:
    """Every entry below ``directory``: file bytes, or the kind of anything else."""
    found: dict[str, bytes | str] = {}
    for parent, directories, files in os.walk(directory):
        for name in directories:
            found[os.path.relpath(os.path.join(parent, name), directory)] = "dir"
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


class Hang(Exception):
    pass


def invoke(environ, stdin, seconds: int = 20):
    """run() with the real logging set-up; a call that blocks fails after ``seconds``."""
    raw = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    out = io.StringIO()

    def interrupt(signum, frame):
        raise Hang(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        code = run(environ, io.BytesIO(raw), out, setup_logging=configure_logging)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue()


def assert_error(code, stdout, expected_code, mentioned=None):
    assert code != 0
    assert "Traceback" not in stdout
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout[:500]
    error = json.loads(stdout)
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    assert error["code"] == expected_code, error
    if mentioned is not None:
        assert mentioned in error["msg"] + error["details"], error
    return error


class _Placeholder:
    """Stands in for a Lab where only the case names are needed (collection)."""

    def __getattr__(self, name: str) -> str:
        return "/placeholder"

    def kubeconfig(self, *args, **kwargs) -> str:
        return "/placeholder"


CASE_NAMES = [case[0] for case in hostile_cases(_Placeholder())]


@pytest.mark.parametrize("index", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_hostile_input_gets_its_code_and_changes_nothing(lab, index):
    name, environ, stdin, expected_code, mentioned = hostile_cases(lab)[index]
    environ = {**environ, "CNI_NETNS": lab.netns} if environ.get("CNI_NETNS") == "/run/netns/pod" else environ
    before = snapshot(lab.state_dir)
    started = time.monotonic()
    code, stdout = invoke(environ, stdin)
    elapsed = time.monotonic() - started
    error = assert_error(code, stdout, expected_code, mentioned)
    assert SECRET not in stdout, error
    assert snapshot(lab.state_dir) == before
    assert elapsed < 5, f"{name}: {elapsed:.1f}s"


# Cases refused while the config is decoded or validated: the same answer for every verb that reads one.
CONFIG_LEVEL = [
    "pools a string", "pools of numbers", "stateDir a number", "kubeconfig a list", "logFile an object",
    "logLevel unknown", "apiTimeout a string", "apiTimeout NaN", "lockTimeout negative", "lockTimeout Infinity",
    "a number of 5,000 digits", "flock a string", "name a number", "name empty", "prevResult a list",
    "runtimeConfig a list", "runtimeConfig.anycast a string", "args.cni.anycast a number",
    "stateDir with NUL", "kubeconfig with NUL", "logFile with NUL",
    "200,000 levels at the top", "200,000 levels inside the config", "200,000 levels in prevResult",
    f"{MAX_NESTING + 1} levels inside the config", "900 levels of objects",
    "stdin with a lone surrogate escape", "stdin with a UTF-8-encoded surrogate", "stdin in Latin-1",
]
OTHER_VERBS = ["DEL", "CHECK", "GC", "STATUS"]


def as_version(stdin, version: str):
    if isinstance(stdin, dict):
        return {**stdin, "cniVersion": version}
    return stdin.replace(b'"cniVersion": "1.0.0"', f'"cniVersion": "{version}"'.encode(), 1)


@pytest.mark.parametrize("verb", OTHER_VERBS)
@pytest.mark.parametrize("name", CONFIG_LEVEL)
def test_config_level_hostile_input_for_every_verb(lab, name, verb):
    cases = {case[0]: case for case in hostile_cases(lab)}
    _, environ, stdin, expected_code, mentioned = cases[name]
    environ = {**environ, "CNI_COMMAND": verb, "CNI_NETNS": lab.netns}
    before = snapshot(lab.state_dir)
    code, stdout = invoke(environ, as_version(stdin, "1.1.0"))
    assert_error(code, stdout, expected_code, mentioned)
    assert snapshot(lab.state_dir) == before
