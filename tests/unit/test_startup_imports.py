"""What each verb imports: the structure behind the start-up budget (issue 4).

Timings live in benchmarks/plugin_startup.py; these tests pin the shape that
makes them possible, by exec'ing ``python -X importtime -m cni_plugin`` the
way a runtime execs the plugin and reading which modules got imported:

* VERSION needs neither pydantic, nor netlink, nor the state store;
* ADD, CHECK and DEL load pyroute2's rtnetlink message classes only, never
  pyroute2's package ``__init__`` (IPRoute, NDB, IPDB, asyncio, ...), nor
  ``ifinfmsg`` and the ``pyroute2.config`` it drags in;
* no verb imports pydantic: the records are validated by pydantic-core's
  compiled extension alone (netconf.records), and nothing loads what
  pydantic-core's package ``__init__`` or its serializer would
  (``core_schema``, typing_extensions, decimal, uuid);
* a DEL of an attachment the state file does not know loads no netlink.

The pod netns of ADD, CHECK and DEL is a real, throwaway namespace (root
only: the plugin refuses any path that is no network namespace before it
loads the netlink code, so a stand-in file would not get that far).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys

import pytest

from netconf.state import StateStore
from netconf.values import Allocation, utc_now

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANYCAST = "192.0.2.53,2001:db8:a::53"

# Heavy parts of pyroute2 (and what they drag in) that the plugin must not load.
PYROUTE2_NEVER = (
    "pyroute2.ndb",
    "pyroute2.ipdb",
    "pyroute2.iproute",
    "pyroute2.conntrack",
    "pyroute2.nftables",
    "pyroute2.netns",
    "pyroute2.nslink",
    "pyroute2.netlink.nlsocket",
    "pyroute2.netlink.core",
    "pyroute2.netlink.rtnl.iprsocket",
    "pyroute2.netlink.rtnl.tcmsg",
    "pyroute2.netlink.rtnl.ifinfmsg",
    "pyroute2.config",
    "multiprocessing",
    "asyncio",
    "unittest",
)
# The rtnetlink pieces the loopback adapter does use: the shared transport
# splits and decodes replies itself, without pyroute2's Marshal.
PYROUTE2_USED = (
    "pyroute2.netlink.rtnl.ifaddrmsg",
    "rtnetlink.transport",
    "cni_plugin.rtnl",
)
# What pydantic itself, or the parts of pydantic-core the records avoid, would import.
PYDANTIC_NEVER = (
    "pydantic",
    "pydantic_core.core_schema",
    "typing_extensions",
    "netconf.compile_schemas",
    "decimal",
    "uuid",
    "dataclasses",
    "inspect",
)


def imported_modules(
    command: str, stdin: bytes, extra_env: dict[str, str] | None = None
) -> tuple[set[str], subprocess.CompletedProcess]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": REPO,
        "CNI_COMMAND": command,
        **(extra_env or {}),
    }
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cni_plugin"],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", completed.stderr.decode(), re.MULTILINE))
    assert modules, completed.stderr.decode()[-2000:]
    return modules, completed


def loaded(modules: set[str], prefix: str) -> list[str]:
    return sorted(name for name in modules if name == prefix or name.startswith(prefix + "."))


@pytest.fixture
def lab(tmp_path, request):
    """A state dir, a pod netns and the env/config for one attachment."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a pod network namespace")
    fake_netns = request.getfixturevalue("make_netns")("imports").path
    state_dir = tmp_path / "state"
    env = {
        "CNI_CONTAINERID": "startup1", "CNI_NETNS": str(fake_netns), "CNI_IFNAME": "eth0", "CNI_ARGS": f"FLOCK_ANYCAST={ANYCAST}"
    }
    config = {
        "cniVersion": "1.0.0",
        "name": "flocknet",
        "type": "flock-anycast",
        "flock": {"pools": ["192.0.2.0/24", "2001:db8:a::/64"], "stateDir": str(state_dir)},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": str(fake_netns)}],
            "ips": [{"address": "10.244.0.5/24", "interface": 0}, {"address": "fd00:244::5/64", "interface": 0}],
        },
    }
    return {"env": env, "stdin": json.dumps(config).encode(), "state_dir": str(state_dir), "netns": str(fake_netns)}


def committed_record(lab) -> None:
    now = utc_now()
    with StateStore(lab["state_dir"]).transaction() as transaction:
        transaction.put(
            Allocation(
                network="flocknet",
                container_id="startup1",
                ifname="eth0",
                netns=lab["netns"],
                anycast=tuple(ipaddress.ip_address(item) for item in ANYCAST.split(",")),
                pod_ips=(ipaddress.ip_address("10.244.0.5"), ipaddress.ip_address("fd00:244::5")),
                state="committed",
                created_at=now,
                updated_at=now,
            )
        )


def test_version_imports_no_pydantic_netlink_state_or_logging():
    modules, completed = imported_modules("VERSION", b'{"cniVersion": "1.0.0"}')
    assert completed.returncode == 0
    assert json.loads(completed.stdout)["cniVersion"] == "1.0.0"
    for heavy in ("pydantic", "pydantic_core", "pyroute2", "netconf.config", "netconf.state", "netconf.results",
                  "cni_plugin.loopback", "cni_plugin.rtnl", "rtnetlink", "cni_plugin.verbs", "logging", "dataclasses"):
        assert not loaded(modules, heavy), f"VERSION imported {loaded(modules, heavy)}"


def test_add_uses_only_rtnetlink_message_classes(lab):
    modules, completed = imported_modules("ADD", lab["stdin"], lab["env"])
    assert completed.returncode == 0, completed.stdout
    for used in PYROUTE2_USED:
        assert used in modules, f"ADD did not reach the netlink adapter ({used} missing)"
    for heavy in PYROUTE2_NEVER + PYDANTIC_NEVER:
        assert not loaded(modules, heavy), f"ADD imported {loaded(modules, heavy)}"


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_del_and_check_use_only_rtnetlink_message_classes(lab, command):
    committed_record(lab)
    modules, completed = imported_modules(command, lab["stdin"], lab["env"])
    if command == "CHECK":  # the record says committed, but the addresses were never added
        assert json.loads(completed.stdout)["code"] == 105, completed.stdout
    else:
        assert completed.returncode == 0 and completed.stdout == b"", completed.stdout
    for used in PYROUTE2_USED:
        assert used in modules, f"{command} did not reach the netlink adapter ({used} missing)"
    for heavy in PYROUTE2_NEVER + PYDANTIC_NEVER:
        assert not loaded(modules, heavy), f"{command} imported {loaded(modules, heavy)}"


def test_del_of_an_unknown_attachment_loads_no_netlink(lab):
    modules, completed = imported_modules("DEL", lab["stdin"], lab["env"])
    assert completed.returncode == 0 and completed.stdout == b""
    assert not loaded(modules, "pyroute2")
    assert not loaded(modules, "cni_plugin.rtnl")
    assert not loaded(modules, "rtnetlink")


def test_add_without_anycast_passes_through_without_netlink_or_state(lab):
    env = dict(lab["env"], CNI_ARGS="IgnoreUnknown=1")
    modules, completed = imported_modules("ADD", lab["stdin"], env)
    assert completed.returncode == 0, completed.stdout
    assert not loaded(modules, "pyroute2")
