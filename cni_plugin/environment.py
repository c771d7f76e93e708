"""The CNI_* environment of one plugin exec, parsed and validated.

Pure, and free of pydantic and dataclasses (which imports inspect): this
module is imported by every exec but VERSION.
Rules from SPEC.md "Parameters" and CONVENTIONS.md "CNI_ARGS".
"""

from __future__ import annotations

import re

from netconf.errors import InvalidEnvironment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which variables each verb needs (SPEC.md 1.1.0 "Parameters"). CNI_PATH is
# not enforced for ADD/DEL/CHECK: a chained plugin that delegates nothing
# never reads it, and libcni always sends it anyway. GC lists it as required.
REQUIRED_VARIABLES: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}

# Matched with fullmatch: "$" would also match before a trailing newline.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")
_IFNAMSIZ = 15  # kernel IFNAMSIZ 16, minus the terminating NUL


class CniEnvironment:
    """The validated CNI_* variables; ``args`` is CNI_ARGS as a dict."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: Mapping[str, str] | None = None,
        path: str = "",
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = dict(args or {})
        self.path = path

    def replace(self, **changes: Any) -> CniEnvironment:
        fields = {name: getattr(self, name) for name in self.__slots__}
        return CniEnvironment(**{**fields, **changes})

    def __repr__(self) -> str:
        return "CniEnvironment(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__) + ")"


def read_command(environ: Mapping[str, str]) -> str:
    """CNI_COMMAND, checked first: without a verb nothing else can be judged."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise InvalidEnvironment("required environment variable CNI_COMMAND is missing")
    if command not in VERBS:
        raise InvalidEnvironment(
            f"unknown CNI_COMMAND {command!r}", f"expected one of {', '.join(VERBS)}"
        )
    return command


def parse_environment(environ: Mapping[str, str]) -> CniEnvironment:
    """Validate every CNI_* variable the verb needs; raises InvalidEnvironment (code 4).

    Missing variables are reported all at once so an operator fixes the
    runtime config in one round. NETNS and IFNAME are not validated for
    VERSION, STATUS and GC, where libcni sends dummies or nothing. A NUL
    byte or invalid UTF-8 in a variable the verb uses is refused too.
    """
    command = read_command(environ)
    missing = [name for name in REQUIRED_VARIABLES[command] if not environ.get(name)]
    if missing:
        raise InvalidEnvironment(
            f"required environment variables missing: {', '.join(missing)}",
            f"CNI_COMMAND={command} needs {', '.join(REQUIRED_VARIABLES[command])}",
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
            _check_text(name, environ.get(name, ""))
        _check_container_id(container_id)
        _check_ifname(ifname)
    return CniEnvironment(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(_check_text("CNI_ARGS", environ.get("CNI_ARGS", ""))),
        path=environ.get("CNI_PATH", ""),
    )


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` → dict; unknown keys are kept (callers ignore them)."""
    parsed: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvironment(f"CNI_ARGS: invalid pair {pair!r}", "expected KEY=VALUE pairs separated by ';'")
        parsed[key] = value
    return parsed


def _check_text(name: str, value: str) -> str:
    """No NUL byte, and valid UTF-8 (no lone surrogates from os.environ's surrogateescape).

    Neither can come from a real environment block or a sane runtime, and
    both would fail later, in open() or in a record's JSON, as code 999.
    """
    if "\0" in value:
        raise InvalidEnvironment(f"{name} contains a NUL byte")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidEnvironment(f"{name} is not valid UTF-8", str(exc)) from exc
    return value


def _check_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise InvalidEnvironment(
            f"invalid CNI_CONTAINERID {container_id!r}",
            "must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        )


def _check_ifname(ifname: str) -> None:
    problem = None
    if len(ifname.encode()) > _IFNAMSIZ:
        problem = f"longer than {_IFNAMSIZ} bytes"
    elif ifname in (".", ".."):
        problem = "'.' and '..' are not interface names"
    elif _IFNAME_FORBIDDEN.search(ifname):
        problem = "contains '/', ':' or whitespace"
    if problem:
        raise InvalidEnvironment(f"invalid CNI_IFNAME {ifname!r}", problem)
