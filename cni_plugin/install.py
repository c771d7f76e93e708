"""``flock-install-cni``: put the plugin on a node and into its CNI chain, and take it out again.

Run by the DaemonSet's init container (or by hand on a systemd host). It
copies the frozen plugin into the CNI bin dir, appends a ``flock-anycast``
entry to the node's primary conflist (the first file libcni would load from
the conf dir), and writes a kubeconfig for the plugin's annotation lookup.

Every step is idempotent — a second run with the same inputs writes no byte
— and reversible: ``uninstall`` removes exactly what ``install`` added,
including undoing a ``.conf`` → ``.conflist`` conversion. Files are written
atomically, because the kubelet may read the conf dir at any moment.
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from netconf.files import fsync_directory, read_regular_file, replace_file

PLUGIN_TYPE = "flock-anycast"
# Top-level keys in our entry: the plugin's envelope ignores unknown keys,
# and uninstall uses them to know what install did.
CONVERTED_FROM_KEY = "flock.fritzlab.net/converted-from"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
ORIGINAL_SUFFIX = ".flock-original"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBECONFIG_NAME = "flock-anycast.kubeconfig"
# A conflist or kubeconfig is a few KiB; anything past this is not one.
_LARGEST_CONFIG = 1 << 20


class InstallError(Exception):
    """The node's CNI config cannot be changed safely; str() says why."""


@dataclass(frozen=True)
class Change:
    path: str
    action: str  # "written", "unchanged", "removed", "restored"


# --- pure transformations -------------------------------------------------


def primary_config_name(names: list[str]) -> str | None:
    """The file libcni (and so the kubelet) loads first: lowest name with a CNI extension."""
    candidates = sorted(name for name in names if name.endswith(CONF_EXTENSIONS))
    return candidates[0] if candidates else None


def with_flock_entry(document: dict[str, Any], entry: dict[str, Any], converted_from: str | None = None) -> dict[str, Any]:
    """The conflist with our entry appended (or replaced in place); everything else untouched.

    A single-plugin ``.conf`` document is wrapped into a conflist first.
    Raises InstallError for a document that is neither.
    """
    if "plugins" not in document:
        if "type" not in document:
            raise InstallError("CNI config has neither 'plugins' nor 'type'")
        single = {key: value for key, value in document.items() if key not in ("cniVersion", "name")}
        document = {"cniVersion": document.get("cniVersion", "0.3.1"), "name": document.get("name", "flock"), "plugins": [single]}
    else:
        document = copy.deepcopy(document)
    if not isinstance(document["plugins"], list) or not document["plugins"]:
        raise InstallError("conflist has no plugins to chain after")
    ours = dict(entry, type=PLUGIN_TYPE)
    if converted_from:
        ours[CONVERTED_FROM_KEY] = converted_from
    plugins = document["plugins"]
    existing = [index for index, plugin in enumerate(plugins) if plugin.get("type") == PLUGIN_TYPE]
    if existing:
        previous = plugins[existing[0]]
        if CONVERTED_FROM_KEY in previous:
            ours[CONVERTED_FROM_KEY] = previous[CONVERTED_FROM_KEY]
        plugins[existing[0]] = ours
    else:
        plugins.append(ours)
    return document


def without_flock_entry(document: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The conflist without our entry, and the ``.conf`` it was converted from, if any."""
    document = copy.deepcopy(document)
    converted_from = None
    kept = []
    for plugin in document.get("plugins", []):
        if plugin.get("type") == PLUGIN_TYPE:
            converted_from = plugin.get(CONVERTED_FROM_KEY) or converted_from
        else:
            kept.append(plugin)
    document["plugins"] = kept
    return document, converted_from


def render_json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def render_kubeconfig(server: str, token: str, ca_data_b64: str) -> bytes:
    """A kubeconfig with the token inline: the host cannot see the pod's token file."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca_data_b64}}],
        "users": [{"name": "flock-anycast", "user": {"token": token}}],
        "contexts": [{"name": "flock-anycast", "context": {"cluster": "local", "user": "flock-anycast"}}],
        "current-context": "flock-anycast",
    }
    return render_json(config)


# --- effectful steps ------------------------------------------------------


def write_atomically(path: str, payload: bytes, mode: int = 0o644) -> Change:
    """Replace ``path`` with ``payload`` unless it already holds exactly that."""
    try:
        if read_regular_file(path, max(len(payload), _LARGEST_CONFIG)) == payload:
            return Change(path, "unchanged")
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from exc
    replace_file(path, payload, mode=mode)
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return Change(path, "written")


def install_binary(source: str, bin_dir: str) -> Change:
    """Copy the plugin (a file, or a onedir folder plus its launcher symlink)."""
    target = os.path.join(bin_dir, PLUGIN_TYPE)
    real_source = os.path.realpath(source)
    if os.path.isfile(real_source) and os.path.dirname(real_source) != os.path.dirname(os.path.abspath(source)):
        # A onedir build: the executable lives in a folder next to the link.
        folder = os.path.dirname(real_source)
        folder_target = os.path.join(bin_dir, f"{PLUGIN_TYPE}.d")
        if os.path.isdir(folder_target) and _same_tree(folder, folder_target):
            changed = False
        else:
            staging = folder_target + ".new"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(folder, staging, symlinks=True)
            if os.path.isdir(folder_target):
                shutil.rmtree(folder_target)
            os.replace(staging, folder_target)
            changed = True
        link_target = os.path.join(f"{PLUGIN_TYPE}.d", os.path.basename(real_source))
        if os.path.islink(target) and os.readlink(target) == link_target and not changed:
            return Change(target, "unchanged")
        temp_link = target + ".new"
        if os.path.lexists(temp_link):
            os.unlink(temp_link)
        os.symlink(link_target, temp_link)
        os.replace(temp_link, target)
        return Change(target, "written")
    with open(real_source, "rb") as handle:
        return write_atomically(target, handle.read(), mode=0o755)


def install_into_conf_dir(conf_dir: str, entry: dict[str, Any]) -> list[Change]:
    """Append our entry to the primary config, converting a ``.conf`` when needed."""
    name = primary_config_name(os.listdir(conf_dir))
    if name is None:
        raise InstallError(f"no CNI config in {conf_dir}: install the main CNI plugin first")
    path = os.path.join(conf_dir, name)
    document = _load_json(path)
    if "plugins" in document:
        return [write_atomically(path, render_json(with_flock_entry(document, entry)))]
    # A single-plugin .conf: libcni cannot chain it, so it becomes a
    # .conflist of the same stem (sorting first, as the original did), and
    # the original is kept under a name libcni ignores, for uninstall.
    stem = os.path.splitext(name)[0]
    conflist_path = os.path.join(conf_dir, stem + ".conflist")
    changes = [write_atomically(conflist_path, render_json(with_flock_entry(document, entry, converted_from=name)))]
    os.replace(path, path + ORIGINAL_SUFFIX)
    changes.append(Change(path, "removed"))
    return changes


def uninstall_from_conf_dir(conf_dir: str) -> list[Change]:
    """Remove our entry from every config that has one; undo a conversion byte for byte."""
    changes = []
    for name in sorted(os.listdir(conf_dir)):
        if not name.endswith(CONF_EXTENSIONS):
            continue
        path = os.path.join(conf_dir, name)
        document = _load_json(path)
        if not any(plugin.get("type") == PLUGIN_TYPE for plugin in document.get("plugins", [])):
            continue
        remaining, converted_from = without_flock_entry(document)
        if converted_from and os.path.exists(original := os.path.join(conf_dir, converted_from + ORIGINAL_SUFFIX)):
            os.replace(original, os.path.join(conf_dir, converted_from))
            os.unlink(path)
            changes += [Change(os.path.join(conf_dir, converted_from), "restored"), Change(path, "removed")]
        else:
            changes.append(write_atomically(path, render_json(remaining)))
    return changes


def write_kubeconfig(path: str, service_account_dir: str, server: str) -> Change:
    import base64

    with open(os.path.join(service_account_dir, "token"), encoding="utf-8") as handle:
        token = handle.read().strip()
    with open(os.path.join(service_account_dir, "ca.crt"), "rb") as handle:
        ca_data = base64.b64encode(handle.read()).decode()
    return write_atomically(path, render_kubeconfig(server, token, ca_data), mode=0o600)


def _load_json(path: str) -> dict[str, Any]:
    try:
        # A FIFO named *.conflist must not hang the install step.
        document = json.loads(read_regular_file(path, _LARGEST_CONFIG))
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read CNI config {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise InstallError(f"CNI config {path} is not a JSON object")
    return document


def _same_tree(left: str, right: str) -> bool:
    comparison = filecmp.dircmp(left, right)
    if comparison.left_only or comparison.right_only or comparison.diff_files or comparison.funny_files:
        return False
    return all(_same_tree(os.path.join(left, sub), os.path.join(right, sub)) for sub in comparison.common_dirs)


# --- command line ---------------------------------------------------------


def build_entry(arguments: argparse.Namespace, kubeconfig_path: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"pools": arguments.pool, "stateDir": arguments.state_dir}
    if kubeconfig_path:
        block["kubeconfig"] = kubeconfig_path
    entry: dict[str, Any] = {"type": PLUGIN_TYPE, "flock": block}
    if arguments.capability:
        entry["capabilities"] = {"anycast": True}
    return entry


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flock-install-cni", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    install = sub.add_parser("install", help="copy the plugin and chain it into the primary conflist")
    install.add_argument("--binary", required=True, help="the frozen flock-anycast (or its launcher symlink)")
    install.add_argument("--pool", action="append", default=[], help="anycast pool CIDR (repeatable)")
    install.add_argument("--state-dir", default="/var/lib/flock")
    install.add_argument("--capability", action="store_true", help="declare the 'anycast' capability")
    install.add_argument("--kubeconfig", help="write a kubeconfig for the plugin's annotation lookup here")
    install.add_argument(
        "--kubeconfig-on-host",
        help="the same file's path as the plugin on the host sees it (default: --kubeconfig)",
    )
    install.add_argument("--service-account-dir", default=SERVICE_ACCOUNT_DIR)
    install.add_argument("--api-server", help="API server URL (default: from KUBERNETES_SERVICE_HOST/PORT)")
    uninstall = sub.add_parser("uninstall", help="remove exactly what install added")
    for action in (install, uninstall):
        action.add_argument("--bin-dir", default="/opt/cni/bin")
        action.add_argument("--conf-dir", default="/etc/cni/net.d")
    return parser.parse_args(argv)


def run(argv: list[str], stdout: TextIO = sys.stdout, environ: Mapping[str, str] = os.environ) -> int:
    arguments = parse_arguments(argv)
    try:
        if arguments.action == "install":
            changes = [install_binary(arguments.binary, arguments.bin_dir)]
            if arguments.kubeconfig:
                server = arguments.api_server or _in_cluster_server(environ)
                changes.append(write_kubeconfig(arguments.kubeconfig, arguments.service_account_dir, server))
            changes += install_into_conf_dir(
                arguments.conf_dir, build_entry(arguments, arguments.kubeconfig_on_host or arguments.kubeconfig)
            )
        else:
            changes = uninstall_from_conf_dir(arguments.conf_dir)
            changes += _remove_binary(arguments.bin_dir)
    except (InstallError, OSError) as exc:
        print(f"flock-install-cni: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        print(f"{change.action:9} {change.path}", file=stdout)
    return 0


def _remove_binary(bin_dir: str) -> list[Change]:
    changes = []
    target = os.path.join(bin_dir, PLUGIN_TYPE)
    if os.path.lexists(target):
        os.unlink(target)
        changes.append(Change(target, "removed"))
    folder = os.path.join(bin_dir, f"{PLUGIN_TYPE}.d")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
        changes.append(Change(folder, "removed"))
    return changes


def _in_cluster_server(environ: Mapping[str, str]) -> str:
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise InstallError("--api-server not given and KUBERNETES_SERVICE_HOST is not set")
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def main() -> int:
    os.umask(0o022)
    return run(sys.argv[1:])
