"""Exec CNI plugins the way a runtime does: env vars, config on stdin, result on stdout.

The plugin process runs inside the lab's "host" namespace (``nsenter``),
so that main plugins like ``ptp`` create their host-side veth there and not
in the root namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from lab.netns import Netns

REFERENCE_PLUGIN_DIR = "/usr/lib/cni"


@dataclass(frozen=True)
class PluginRun:
    returncode: int
    stdout: str
    stderr: str

    # Who ran, for assertion messages.
    label = "plugin"

    def json(self) -> Any:
        return json.loads(self.stdout)

    def ok(self) -> Any:
        """The decoded result of a successful run (None for an empty stdout), or AssertionError with the error JSON."""
        assert self.returncode == 0, f"{self.label} failed rc={self.returncode}: {self.stdout} {self.stderr}"
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class Invocation:
    """One plugin exec: verb, identity of the attachment and the config document."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = "eth0"
    args: str = ""
    path: str = REFERENCE_PLUGIN_DIR
    extra_env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        env = {
            "CNI_COMMAND": self.command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": self.args,
            "CNI_PATH": self.path,
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        env.update(self.extra_env)
        return env


def exec_plugin(
    binary: str,
    invocation: Invocation,
    config: dict[str, Any] | str | bytes,
    host: Netns | None = None,
    timeout: float = 30.0,
) -> PluginRun:
    """Run ``binary`` once; ``host`` is the namespace the plugin process lives in."""
    if isinstance(config, dict):
        stdin = json.dumps(config).encode()
    elif isinstance(config, str):
        stdin = config.encode()
    else:
        stdin = config
    argv = [binary] if host is None else host.command([binary])
    completed = subprocess.run(
        argv,
        input=stdin,
        env=invocation.environ(),
        capture_output=True,
        timeout=timeout,
    )
    return PluginRun(completed.returncode, completed.stdout.decode(), completed.stderr.decode())


def reference_plugin(name: str) -> str:
    return os.path.join(REFERENCE_PLUGIN_DIR, name)


def ptp_config(
    cni_version: str, name: str, data_dir: str, subnet4: str, subnet6: str | None = None
) -> dict[str, Any]:
    """A ``ptp`` + ``host-local`` entry, the main plugin of the lab chains.

    ``data_dir`` keeps host-local's leases in the test's own directory.
    """
    ranges = [[{"subnet": subnet4}]]
    if subnet6:
        ranges.append([{"subnet": subnet6}])
    return {
        "cniVersion": cni_version,
        "name": name,
        "type": "ptp",
        "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": ranges, "dataDir": data_dir},
    }
