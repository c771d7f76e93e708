"""Exec a plugin binary once, exactly as a runtime does, and read its answer.

A runtime talks to a plugin through environment variables, the config on
stdin, stdout and the exit code (SPEC §2 "Overview"). The harness needs
more control than ``lab.cni.exec_plugin`` offers: variables that are
*unset* rather than empty, and a stdin that cannot be read.  The answer
readers raise :class:`Deviation` with the evidence when the plugin's reply
does not have the required form.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lab.netns import Netns
from tests.conformance.spec import Deviation

DEFAULT_TIMEOUT = 30.0


def clip(text: str, limit: int = 240) -> str:
    """One line of at most ``limit`` characters, for reasons in the report."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class PluginCall:
    """One finished exec: what was sent and what came back."""

    command: str | None
    environ: Mapping[str, str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        parts = [f"{self.command or '<no CNI_COMMAND>'} exit={self.returncode}"]
        parts.append(f"stdout={clip(self.stdout, 200)!r}")
        if self.stderr.strip():
            parts.append(f"stderr={clip(self.stderr, 160)!r}")
        return " ".join(parts)

    def _single_json_object(self, text: str, what: str) -> dict[str, Any]:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Deviation(f"{what} is not one JSON document ({exc.msg}): {self.describe()}") from None
        if not isinstance(document, dict):
            raise Deviation(f"{what} is JSON but not an object: {self.describe()}")
        return document

    def expect_result(self) -> dict[str, Any]:
        """The JSON object a successful verb printed; stdout holds nothing else."""
        if self.returncode != 0:
            raise Deviation(f"{self.command} failed: {self.describe()}")
        if not self.stdout.strip():
            raise Deviation(f"{self.command} succeeded but printed no result on stdout: {self.describe()}")
        return self._single_json_object(self.stdout, f"{self.command} stdout")

    def expect_silent_success(self) -> None:
        """Exit 0 with nothing on stdout (DEL, CHECK, GC, STATUS on success)."""
        if self.returncode != 0:
            raise Deviation(f"{self.command} failed: {self.describe()}")
        if self.stdout.strip():
            raise Deviation(f"{self.command} succeeded but printed on stdout: {self.describe()}")

    def expect_error(self) -> dict[str, Any]:
        """The error object of a failed exec, read from stdout as libcni does."""
        if self.returncode == 0:
            raise Deviation(f"{self.command or 'a call without CNI_COMMAND'} should have failed but exited 0: "
                            f"{self.describe()}")
        if not self.stdout.strip():
            if self.stderr.strip().startswith("{"):
                raise Deviation(
                    f"error JSON printed on stderr only, stdout is empty "
                    f"(libcni reads the error from stdout): {self.describe()}"
                )
            raise Deviation(f"failed with nothing on stdout, no error JSON: {self.describe()}")
        error = self._single_json_object(self.stdout, "error output on stdout")
        if not isinstance(error.get("code"), int) or isinstance(error.get("code"), bool):
            raise Deviation(f"error JSON has no integer 'code': {self.describe()}")
        return error

    def expect_error_code(self, code: int, naming: tuple[str, ...] = ()) -> dict[str, Any]:
        """An error with ``code`` whose msg or details name every variable in ``naming``."""
        error = self.expect_error()
        if error["code"] != code:
            raise Deviation(f"error code {error['code']}, expected {code}: {self.describe()}")
        text = f"{error.get('msg', '')} {error.get('details', '')}"
        unnamed = [name for name in naming if name not in text]
        if unnamed:
            raise Deviation(f"error message does not name {', '.join(unnamed)}: {self.describe()}")
        return error


def run_plugin(
    binary: str,
    environ: Mapping[str, str],
    stdin: bytes | None = None,
    unreadable_stdin: bool = False,
    host: Netns | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PluginCall:
    """Exec ``binary`` inside ``host`` with exactly ``environ``.

    ``unreadable_stdin`` hands the plugin a write-only stdin: it opens, but
    read() fails with EBADF. (A directory would fail too, but CPython refuses
    to start on one, so a Python plugin could never answer with code 5.)
    """
    argv = [binary] if host is None else host.command([binary])
    stdin_fd = os.open(os.devnull, os.O_WRONLY) if unreadable_stdin else None
    try:
        completed = subprocess.run(
            argv,
            input=stdin if stdin_fd is None else None,
            stdin=stdin_fd,
            env=dict(environ),
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise Deviation(f"{environ.get('CNI_COMMAND')} did not finish within {timeout:.0f}s") from None
    finally:
        if stdin_fd is not None:
            os.close(stdin_fd)
    return PluginCall(
        command=environ.get("CNI_COMMAND"),
        environ=dict(environ),
        returncode=completed.returncode,
        stdout=completed.stdout.decode(errors="replace"),
        stderr=completed.stderr.decode(errors="replace"),
    )
