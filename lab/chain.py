"""The chain the plugin lives in: ``ptp`` + ``host-local``, then ``flock-anycast``.

Exec'd like a runtime does a conflist, from inside the lab's host (node)
namespace. The reference Go plugins stop at spec 1.0.0, so a 1.1.0 chain
runs ptp at 1.0.0 and hands its result on as a 1.1.0 prevResult, which a
1.0.0 result is (1.1.0 only added optional fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.cni import Invocation, PluginRun, exec_plugin, ptp_config, reference_plugin
from lab.netns import Netns

NETWORK = "flocknet"
POOLS = ["2001:db8:a::/64", "192.0.2.0/24"]
GO_PLUGIN_MAX_VERSION = "1.0.0"


def flock_entry(state_dir: str, pools: list[str] | None = None, **block: Any) -> dict[str, Any]:
    return {"type": "flock-anycast", "flock": {"pools": POOLS if pools is None else pools, "stateDir": state_dir, **block}}


@dataclass
class Chain:
    """One network: the main plugin's config and our entry, at one spec version."""

    binary: str
    host: Netns
    cni_version: str
    state_dir: str
    ipam_dir: str
    subnet4: str = "10.244.0.0/24"
    subnet6: str | None = "fd00:244::/64"
    flock_block: dict[str, Any] = field(default_factory=dict)

    @property
    def main_version(self) -> str:
        return min(self.cni_version, GO_PLUGIN_MAX_VERSION, key=lambda v: tuple(map(int, v.split("."))))

    def main_config(self) -> dict[str, Any]:
        return ptp_config(self.main_version, NETWORK, self.ipam_dir, self.subnet4, self.subnet6)

    def flock_config(self, prev_result: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        config = {"cniVersion": self.cni_version, "name": NETWORK, **flock_entry(self.state_dir, **self.flock_block)}
        if prev_result is not None:
            config["prevResult"] = prev_result
        config.update(extra)
        return config

    def invocation(self, command: str, container_id: str, netns: str, args: str = "") -> Invocation:
        return Invocation(command=command, container_id=container_id, netns=netns, ifname="eth0", args=args)

    def main_add(self, container_id: str, pod: Netns) -> dict[str, Any]:
        result = exec_plugin(
            reference_plugin("ptp"), self.invocation("ADD", container_id, pod.path), self.main_config(), host=self.host
        ).ok()
        # What a runtime hands the next plugin: the result in the list's version.
        result["cniVersion"] = self.cni_version
        return result

    def main_del(self, container_id: str, netns: str) -> PluginRun:
        return exec_plugin(
            reference_plugin("ptp"), self.invocation("DEL", container_id, netns), self.main_config(), host=self.host
        )

    def flock(self, command: str, container_id: str, netns: str, prev_result=None, args: str = "", **extra: Any) -> PluginRun:
        return exec_plugin(
            self.binary,
            self.invocation(command, container_id, netns, args),
            self.flock_config(prev_result, **extra),
            host=self.host,
        )


def containerd_args(namespace: str, name: str, uid: str = "", anycast: str = "") -> str:
    """CNI_ARGS shaped the way containerd sends them, plus our optional key."""
    args = (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
        f"K8S_POD_INFRA_CONTAINER_ID=infra{name};K8S_POD_UID={uid or name + '-uid'}"
    )
    if anycast:
        args += f";FLOCK_ANYCAST={anycast}"
    return args
