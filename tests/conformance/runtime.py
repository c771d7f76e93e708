"""A small container runtime: namespaces, attachments and the verbs on them.

Each check gets a :class:`Lab` (its own "host" netns, pod namespaces and a
tmp directory, all removed afterwards even on failure) and a
:class:`Runtime` that drives the plugin the way libcni would: ADD with the
main plugin's result as ``prevResult`` for a chained plugin, DEL in reverse
order, CHECK with the final ADD result, GC and STATUS without an attachment.

The plugin process always runs inside the lab's host netns, so anything it
does "on the host" (veths, qdiscs, sysctls) stays in a namespace we delete.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lab.cni import Invocation, exec_plugin, ptp_config, reference_plugin
from lab.netns import Netns, create_netns, delete_netns
from tests.conformance.execution import PluginCall, run_plugin
from tests.conformance.settings import HarnessSettings, substitute_tmpdir
from tests.conformance.spec import (
    IPS_VERSION_DROPPED,
    PREV_RESULT_ON_DEL_SINCE,
    VALID_ATTACHMENTS_KEY,
    at_least,
)

# The chain's main plugin (Debian's ptp + host-local) stops at spec 1.0.0; a
# 1.0.0 result is a valid 1.1.0 result (1.1.0 only adds optional fields), so
# for 1.1.0 the harness relabels it, as libcni 1.2 does when converting.
MAIN_PLUGIN = "ptp"
MAIN_PLUGIN_MAX_VERSION = "1.0.0"
MAIN_SUBNET4 = "10.250.0.0/24"
MAIN_SUBNET6 = "fd00:250::/64"
CONFIGURED_CNI_PATH = "<--cni-path>"


class LabError(RuntimeError):
    """The harness's own scaffolding failed (main plugin, netns): not the plugin's fault."""


def session_netns_role(kind: str) -> str:
    """``cni<pid><kind>``: namespaces of one harness session are recognisable by its PID."""
    return f"cni{os.getpid()}{kind}"


class Lab:
    """Namespaces and a directory for one check; :meth:`close` removes the namespaces."""

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = tmpdir
        self._host: Netns | None = None
        self._namespaces: list[Netns] = []
        self._lock = threading.Lock()

    @property
    def host(self) -> Netns:
        """The namespace plugin processes run in, made on first use."""
        with self._lock:
            if self._host is None:
                self._host = create_netns(session_netns_role("h"), forwarding=True)
                self._namespaces.append(self._host)
            return self._host

    def new_pod(self) -> Netns:
        with self._lock:
            pod = create_netns(session_netns_role("p"))
            self._namespaces.append(pod)
            return pod

    def close(self) -> None:
        with self._lock:
            for namespace in reversed(self._namespaces):
                delete_netns(namespace)
            self._namespaces.clear()


@dataclass
class Attachment:
    """One (container ID, ifname) the harness added: what a remove-resources hook receives.

    ``netns`` is CNI_NETNS (the pod), ``host_netns`` the namespace the plugin
    ran in, ``config`` the config sent with ADD, ``result`` the plugin's ADD
    result and ``prev_result`` the main plugin's (chained plugins only).
    """

    container_id: str
    ifname: str
    netns: str
    host_netns: str
    config: dict[str, Any]
    result: dict[str, Any] | None = None
    prev_result: dict[str, Any] | None = None
    main_config: dict[str, Any] | None = field(default=None, repr=False)
    plugin_deleted: bool = False
    main_deleted: bool = False

    def as_gc_entry(self) -> dict[str, str]:
        return {"containerID": self.container_id, "ifname": self.ifname}


def relabel(result: dict[str, Any], version: str) -> dict[str, Any]:
    relabelled = copy.deepcopy(result)
    relabelled["cniVersion"] = version
    return relabelled


class Runtime:
    """Drives the plugin under test at one spec version inside one :class:`Lab`."""

    def __init__(self, settings: HarnessSettings, version: str, lab: Lab) -> None:
        self.settings = settings
        self.version = version
        self.lab = lab
        self.attachments: list[Attachment] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    # --- what a runtime sends -------------------------------------------------

    def new_container_id(self, role: str = "pod") -> str:
        """Unique, and using every character class the spec allows (alnum, ``_ . -``)."""
        return f"{secrets.token_hex(5)}_{role}.{next(self._sequence)}-x"

    def cni_args(self, container_id: str) -> str:
        """containerd's CNI_ARGS, then the user's (CONVENTIONS "CNI_ARGS")."""
        args = (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE=conformance;K8S_POD_NAME={container_id};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={container_id}"
        )
        return f"{args};{self.settings.cni_args}" if self.settings.cni_args else args

    def plugin_config(self, prev_result: dict[str, Any] | None = None) -> dict[str, Any]:
        """What libcni sends: the user's keys, then the injected cniVersion, name and prevResult."""
        config: dict[str, Any] = {"type": self.settings.plugin_type}
        config.update(substitute_tmpdir(self.settings.config_extra, self.lab.tmpdir))
        config["cniVersion"] = self.version
        config["name"] = self.settings.network_name
        if prev_result is not None:
            config["prevResult"] = prev_result
        return config

    def environ(
        self,
        command: str | None,
        container_id: str | None = None,
        netns: str | None = None,
        ifname: str | None = None,
        args: str | None = None,
        path: str | None = CONFIGURED_CNI_PATH,
    ) -> dict[str, str]:
        """The process environment; a ``None`` parameter leaves the variable unset."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        values = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": self.settings.cni_path if path == CONFIGURED_CNI_PATH else path,
        }
        env.update({key: value for key, value in values.items() if value is not None})
        return env

    def attachment_environ(self, command: str, attachment: Attachment, netns: str | None = None) -> dict[str, str]:
        return self.environ(
            command,
            container_id=attachment.container_id,
            netns=attachment.netns if netns is None else netns,
            ifname=attachment.ifname,
            args=self.cni_args(attachment.container_id),
        )

    def invoke(
        self,
        environ: Mapping[str, str],
        config: dict[str, Any] | bytes | None,
        unreadable_stdin: bool = False,
    ) -> PluginCall:
        stdin = json.dumps(config).encode() if isinstance(config, dict) else config
        return run_plugin(self.settings.plugin, environ, stdin, unreadable_stdin, host=self.lab.host)

    # --- the chain's main plugin ----------------------------------------------

    @property
    def main_version(self) -> str:
        newer_than_main = at_least(self.version, MAIN_PLUGIN_MAX_VERSION) and self.version != MAIN_PLUGIN_MAX_VERSION
        return MAIN_PLUGIN_MAX_VERSION if newer_than_main else self.version

    def _main_config(self) -> dict[str, Any]:
        data_dir = os.path.join(self.lab.tmpdir, "host-local")
        config = ptp_config(self.main_version, self.settings.network_name, data_dir, MAIN_SUBNET4, MAIN_SUBNET6)
        config.update(substitute_tmpdir(self.settings.chain_main_config, self.lab.tmpdir))
        return config

    def _run_main(self, command: str, attachment: Attachment, config: dict[str, Any]) -> Any:
        invocation = Invocation(
            command=command,
            container_id=attachment.container_id,
            netns=attachment.netns,
            ifname=attachment.ifname,
            args=self.cni_args(attachment.container_id),
        )
        return exec_plugin(reference_plugin(MAIN_PLUGIN), invocation, config, host=self.lab.host)

    def _add_main(self, attachment: Attachment) -> None:
        config = self._main_config()
        attachment.main_config = config
        run = self._run_main("ADD", attachment, config)
        if run.returncode != 0:
            attachment.main_deleted = True
            raise LabError(f"main plugin {MAIN_PLUGIN} ADD failed: {run.stdout} {run.stderr}")
        attachment.prev_result = relabel(run.json(), self.version)

    def _delete_main(self, attachment: Attachment) -> None:
        if attachment.main_config is None or attachment.main_deleted:
            return
        config = dict(attachment.main_config)
        if attachment.prev_result is not None and at_least(self.main_version, PREV_RESULT_ON_DEL_SINCE):
            config["prevResult"] = relabel(attachment.prev_result, self.main_version)
        run = self._run_main("DEL", attachment, config)
        attachment.main_deleted = True
        if run.returncode != 0:
            raise LabError(f"main plugin {MAIN_PLUGIN} DEL failed: {run.stdout} {run.stderr}")

    # --- verbs on attachments -------------------------------------------------

    def prepare(self, ifname: str = "eth0", role: str = "pod") -> Attachment:
        """A pod netns, a container ID and (chained) the main plugin's result; no ADD yet."""
        pod = self.lab.new_pod()
        attachment = Attachment(
            container_id=self.new_container_id(role),
            ifname=ifname,
            netns=pod.path,
            host_netns=self.lab.host.path,
            config={},
        )
        with self._lock:
            self.attachments.append(attachment)
        if self.settings.chained:
            self._add_main(attachment)
        attachment.config = self.plugin_config(prev_result=attachment.prev_result)
        return attachment

    def add_call(self, attachment: Attachment) -> PluginCall:
        """ADD the prepared attachment; the result is kept only when the call succeeded."""
        call = self.invoke(self.attachment_environ("ADD", attachment), attachment.config)
        if call.returncode == 0:
            try:
                attachment.result = json.loads(call.stdout)
            except json.JSONDecodeError:
                attachment.result = None
        return call

    def add(self, ifname: str = "eth0", role: str = "pod") -> Attachment:
        """A successful ADD, or :class:`Deviation` with the plugin's answer."""
        attachment = self.prepare(ifname, role)
        call = self.add_call(attachment)
        attachment.result = call.expect_result()
        return attachment

    def final_result(self, attachment: Attachment) -> dict[str, Any]:
        """What libcni caches after ADD and sends as prevResult to CHECK and DEL."""
        return attachment.result if attachment.result is not None else (attachment.prev_result or {})

    def check(self, attachment: Attachment) -> PluginCall:
        config = self.plugin_config(prev_result=self.final_result(attachment))
        return self.invoke(self.attachment_environ("CHECK", attachment), config)

    def delete(
        self,
        attachment: Attachment,
        netns: str | None = None,
        with_prev_result: bool | None = None,
    ) -> PluginCall:
        """DEL the plugin's part; ``netns`` overrides CNI_NETNS (``""`` for none).

        By default prevResult is sent from 0.4.0 on, as libcni does; 0.3.x never sends it.
        """
        if with_prev_result is None:
            with_prev_result = at_least(self.version, PREV_RESULT_ON_DEL_SINCE)
        prev_result = self.final_result(attachment) if with_prev_result else None
        config = self.plugin_config(prev_result=prev_result)
        call = self.invoke(self.attachment_environ("DEL", attachment, netns=netns), config)
        if call.returncode == 0:
            attachment.plugin_deleted = True
        return call

    def release(self, attachment: Attachment) -> None:
        """The rest of the runtime's DEL: the main plugin after the plugin under test."""
        self._delete_main(attachment)

    def gc(self, valid: list[Attachment], keys: tuple[str, ...] = (VALID_ATTACHMENTS_KEY,)) -> PluginCall:
        config = self.plugin_config()
        for key in keys:
            config[key] = [attachment.as_gc_entry() for attachment in valid]
        return self.invoke(self.environ("GC"), config)

    def status(self) -> PluginCall:
        return self.invoke(self.environ("STATUS"), self.plugin_config())

    def rejection_request(self, ifname: str = "eth0") -> tuple[str, dict[str, Any]]:
        """CNI_NETNS and a valid-looking config, for calls the plugin must refuse.

        The plugin must reject bad input before touching any namespace, so
        CNI_NETNS is the lab's host netns (one netns fewer per check; if a
        plugin wrongly goes ahead, it only changes a namespace we delete).
        A chained plugin gets a synthetic prevResult, so no main plugin runs.
        """
        netns = self.lab.host.path
        prev_result = synthetic_prev_result(self.version, netns, ifname) if self.settings.chained else None
        return netns, self.plugin_config(prev_result=prev_result)

    def run_concurrently(self, count: int, action: Callable[[int], Any]) -> list[Any]:
        """``action(i)`` for i in range(count), all released at once by a barrier."""
        barrier = threading.Barrier(count)

        def start(index: int) -> Any:
            barrier.wait()
            return action(index)

        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(start, range(count)))

    def cleanup(self) -> None:
        """Best-effort DEL of what a check left behind, then the main plugin's DEL."""
        for attachment in reversed(self.attachments):
            if not attachment.plugin_deleted:
                try:
                    self.delete(attachment)
                except Exception:  # noqa: BLE001 - cleanup must reach every attachment
                    pass
            try:
                self._delete_main(attachment)
            except LabError:
                pass


def synthetic_prev_result(version: str, netns: str, ifname: str) -> dict[str, Any]:
    """A ptp-shaped result in ``version``'s format, for requests that never reach the pod."""
    ips = [
        {"interface": 1, "address": "10.250.0.2/24", "gateway": "10.250.0.1"},
        {"interface": 1, "address": "fd00:250::2/64", "gateway": "fd00:250::1"},
    ]
    if not at_least(version, IPS_VERSION_DROPPED):
        ips[0]["version"], ips[1]["version"] = "4", "6"
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": "vethconformance", "mac": "02:00:00:00:00:01"},
            {"name": ifname, "mac": "02:00:00:00:00:02", "sandbox": netns},
        ],
        "ips": ips,
        "dns": {},
    }
