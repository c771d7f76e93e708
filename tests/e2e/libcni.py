"""A real libcni client for the tests: build it offline, run it like a runtime.

``libcni_client/`` is a small Go program over libcni 1.1.2, the library
containerd and CRI-O embed; with it the plugins see exactly the stdin and
CNI_* a runtime gives them, and the runtime sees their errors the way
libcni decodes them. It is built at test time against Debian's
``golang-github-appc-cni-dev`` source with the module proxy off, and the
binary is cached under a name derived from a hash of everything that goes
into it, so repeated runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lab.cni import PluginRun
from lab.netns import Netns

CLIENT_SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libcni_client")
CLIENT_SOURCES = ("go.mod", "main.go")
LIBCNI_SOURCE_DIR = "/usr/share/gocode/src/github.com/containernetworking/cni"
GO_BUILD_TIMEOUT = 300.0


class ClientBuildError(RuntimeError):
    """``go build`` of the libcni client failed; the message carries go's output."""


def go_binary() -> str:
    """Path of the ``go`` tool; raises ClientBuildError when it is not installed."""
    found = shutil.which("go") or next((p for p in ("/usr/lib/go/bin/go", "/usr/bin/go") if os.access(p, os.X_OK)), None)
    if found is None:
        raise ClientBuildError("go is not installed (Debian package golang-go)")
    return found


def _go_environ(cache_dir: str) -> dict[str, str]:
    # Offline and hermetic: no proxy, no checksum database, no user go.env,
    # no workspace; every cache inside cache_dir so the build writes nothing
    # under $HOME. -mod=mod lets go resolve the directory replacement without
    # a vendored tree; with a directory replace there is no go.sum to check.
    # No CGO_ENABLED=0 or -trimpath: go 1.19 ships the standard library
    # precompiled for the default settings, and changing them makes a cold
    # build recompile it (~50 s instead of ~5 s on two cores).
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": cache_dir,
        "GOENV": "off",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GONOSUMDB": "*",
        "GOWORK": "off",
        "GO111MODULE": "on",
        "GOTOOLCHAIN": "local",
        "GOPATH": os.path.join(cache_dir, "gopath"),
        "GOMODCACHE": os.path.join(cache_dir, "gopath", "pkg", "mod"),
        "GOCACHE": os.path.join(cache_dir, "go-build"),
    }


def source_digest(go: str) -> str:
    """Hash of the client's sources, the libcni source it builds against and the go version."""
    digest = hashlib.sha256()
    for name in CLIENT_SOURCES:
        with open(os.path.join(CLIENT_SOURCE_DIR, name), "rb") as source:
            digest.update(name.encode() + b"\0" + source.read() + b"\0")
    for root, _dirs, files in sorted(os.walk(LIBCNI_SOURCE_DIR)):
        for name in sorted(files):
            path = os.path.join(root, name)
            status = os.stat(path)
            digest.update(f"{os.path.relpath(path, LIBCNI_SOURCE_DIR)}:{status.st_size}:{status.st_mtime_ns}\0".encode())
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest.update(version.encode())
    return digest.hexdigest()[:16]


def build_client(cache_dir: str) -> str:
    """The path of a built libcni client, building it only when its inputs changed.

    The build happens in a copy of the sources, so ``go`` can never rewrite
    the tracked ``go.mod``; the binary is moved into place atomically, so
    concurrent test sessions at worst build twice. Raises ClientBuildError.
    """
    go = go_binary()
    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    binary = os.path.join(cache_dir, f"libcni-client-{source_digest(go)}")
    if os.access(binary, os.X_OK):
        return binary
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="src-") as workdir:
        for name in CLIENT_SOURCES:
            shutil.copyfile(os.path.join(CLIENT_SOURCE_DIR, name), os.path.join(workdir, name))
        output = os.path.join(workdir, "libcni-client")
        completed = subprocess.run(
            [go, "build", "-o", output, "."],
            cwd=workdir,
            env=_go_environ(cache_dir),
            capture_output=True,
            text=True,
            timeout=GO_BUILD_TIMEOUT,
        )
        if completed.returncode != 0:
            raise ClientBuildError(f"go build of the libcni client failed:\n{completed.stdout}{completed.stderr}")
        os.replace(output, binary)
    return binary


@dataclass(frozen=True)
class ClientRun(PluginRun):
    """A run of the libcni client: its stdout is the chain's result or error."""

    label = "libcni client"

    def failure(self) -> dict[str, Any]:
        """The decoded error of a failed run: ``error`` and, from the plugin, ``code``/``msg``/``details``."""
        assert self.returncode != 0, f"libcni client unexpectedly succeeded: {self.stdout}"
        return json.loads(self.stdout)


def run_client(
    client: str,
    verb: str,
    *,
    host: Netns,
    conflist: str,
    bin_dirs: Sequence[str],
    cache_dir: str,
    container_id: str,
    netns: str,
    ifname: str = "eth0",
    args: str = "",
    cap_anycast: Sequence[str] | None = None,
    capability_args: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> ClientRun:
    """Run one ``add``/``check``/``del`` of the conflist through libcni.

    The client runs inside ``host`` (nsenter), so main plugins such as
    ``ptp`` create their host-side interfaces there and not in the root
    namespace. libcni hands its own environment on to the plugins, so the
    client gets a minimal one. ``cache_dir`` is libcni's result cache (the
    source of prevResult for CHECK and DEL).
    """
    argv = [
        client,
        verb,
        "--conflist", conflist,
        "--bin-dir", os.pathsep.join(bin_dirs),
        "--cache-dir", cache_dir,
        "--container-id", container_id,
        "--netns", netns,
        "--ifname", ifname,
        "--args", args,
    ]
    if cap_anycast:
        argv += ["--cap-anycast", ",".join(cap_anycast)]
    if capability_args:
        argv += ["--capability-args", json.dumps(capability_args)]
    completed = subprocess.run(
        host.command(argv),
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return ClientRun(completed.returncode, completed.stdout, completed.stderr)
