#!/usr/bin/python3 -I
"""A small main CNI plugin that follows the spec (0.3.0-1.1.0) and only keeps state files.

It is the harness's control: it must pass every check at every version, and
the deliberately broken plugins in ../broken/ are this plugin with one fault
switched on (``--fault``). Its only resource is one file per attachment,
``<stateDir>/<network name>/<container id>_<ifname>``; CHECK fails without it.
Standard library only and the system interpreter (not a pyenv shim on
PATH), so each exec stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import sys

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
VERB_SINCE = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
FAULTS = ("stderr-errors", "second-del-fails")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def validate_environment(command: str, environ: dict[str, str]) -> None:
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(4, f"missing required environment variables: {', '.join(missing)}")
    if command in ("ADD", "CHECK", "DEL"):
        if not CONTAINER_ID.fullmatch(environ["CNI_CONTAINERID"]):
            raise CniError(4, "invalid CNI_CONTAINERID", environ["CNI_CONTAINERID"])
        ifname = environ["CNI_IFNAME"]
        if (len(ifname.encode()) > 15 or ifname in (".", "..")
                or any(char in "/:" or char.isspace() for char in ifname)):
            raise CniError(4, "invalid CNI_IFNAME", ifname)


def state_directory(config: dict) -> str:
    state_dir = config.get("stateDir")
    if not isinstance(state_dir, str) or not state_dir:
        raise CniError(7, "stateDir must be a non-empty string")
    return os.path.join(state_dir, config["name"])


def attachment_file(config: dict, environ: dict[str, str]) -> str:
    return os.path.join(state_directory(config), f"{environ['CNI_CONTAINERID']}_{environ['CNI_IFNAME']}")


def cmd_add(config: dict, environ: dict[str, str], version: str) -> dict:
    path = attachment_file(config, environ)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump({"netns": environ["CNI_NETNS"]}, stream)
    os.replace(temporary, path)
    return {"cniVersion": version, "interfaces": [], "ips": [], "dns": {}}


def cmd_check(config: dict, environ: dict[str, str]) -> None:
    if not os.path.exists(attachment_file(config, environ)):
        raise CniError(100, "attachment state is missing", attachment_file(config, environ))


def cmd_del(config: dict, environ: dict[str, str], fault: str | None) -> None:
    try:
        os.remove(attachment_file(config, environ))
    except FileNotFoundError:
        if fault == "second-del-fails":
            raise CniError(100, "nothing to delete: attachment unknown") from None


def cmd_gc(config: dict) -> None:
    valid = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
    if not isinstance(valid, list):
        raise CniError(7, "GC needs cni.dev/valid-attachments (or cni.dev/attachments) as a list")
    keep = {f"{item.get('containerID')}_{item.get('ifname')}" for item in valid if isinstance(item, dict)}
    directory = state_directory(config)
    failures = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name not in keep and ".tmp" not in name:
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.append(f"{name}: {exc}")
    if failures:
        raise CniError(100, "GC could not remove every stale attachment", "; ".join(failures))


def cmd_status(config: dict) -> None:
    directory = state_directory(config)
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise CniError(50, "state directory is not writable", directory)


def run(environ: dict[str, str], stdin, stdout, stderr, fault: str | None = None) -> int:
    version = LATEST
    try:
        try:
            raw = stdin.read()
        except OSError as exc:
            raise CniError(5, "cannot read the config from stdin", str(exc)) from exc
        command = environ.get("CNI_COMMAND")
        try:
            config = json.loads(raw) if raw.strip() or command != "VERSION" else {}
        except ValueError as exc:
            raise CniError(6, "the config on stdin is not JSON", str(exc)) from exc
        if not isinstance(config, dict):
            raise CniError(6, "the config on stdin is not a JSON object")
        if isinstance(config.get("cniVersion"), str):
            version = config["cniVersion"]
        if not command:
            raise CniError(4, "missing required environment variables: CNI_COMMAND")
        if command not in REQUIRED_ENV:
            raise CniError(4, f"unknown CNI_COMMAND {command!r}")
        if command == "VERSION":
            stdout.write(json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}))
            return 0
        validate_environment(command, environ)
        if version not in SUPPORTED_VERSIONS:
            raise CniError(1, f"unsupported cniVersion {version}", f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        if command in VERB_SINCE and version_tuple(version) < version_tuple(VERB_SINCE[command]):
            raise CniError(1, f"{command} needs spec {VERB_SINCE[command]}, config is {version}")
        if not isinstance(config.get("name"), str) or not config["name"]:
            raise CniError(7, "the config needs a network 'name'")
        if command == "ADD":
            stdout.write(json.dumps(cmd_add(config, environ, version)))
        elif command == "CHECK":
            cmd_check(config, environ)
        elif command == "DEL":
            cmd_del(config, environ, fault)
        elif command == "GC":
            cmd_gc(config)
        else:
            cmd_status(config)
        return 0
    except CniError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}
        (stderr if fault == "stderr-errors" else stdout).write(json.dumps(error))
        return 1


def main() -> int:
    fault = None
    if len(sys.argv) == 3 and sys.argv[1] == "--fault" and sys.argv[2] in FAULTS:
        fault = sys.argv[2]
    return run(dict(os.environ), sys.stdin, sys.stdout, sys.stderr, fault)


if __name__ == "__main__":
    sys.exit(main())
