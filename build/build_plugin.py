"""Build the frozen ``flock-anycast`` plugin with PyInstaller (``make build``).

Output, all under build/ and git-ignored::

    build/dist/flock-anycast.d/flock-anycast   the executable (onedir bootloader)
    build/dist/flock-anycast.d/_internal/      interpreter, libraries, .pyc files
    build/dist/flock-anycast                   symlink -> flock-anycast.d/flock-anycast
    build/work/pyinstaller/                    PyInstaller's work directory

``--importtime`` makes a diagnostic build under build/work/importtime/dist/
whose interpreter runs with ``-X importtime`` (timings on stderr). It stays
out of build/dist/, which the image copies and install-cni installs from.

After building, the binary is exec'd once through a symlink in a temporary
CNI bin dir (the way runtimes and the tests reach it) and must answer VERSION.
Run with the project's venv interpreter: PyInstaller freezes the interpreter
and packages it runs in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

BUILD_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BUILD_DIR)
SPEC = os.path.join(BUILD_DIR, "flock-anycast.spec")
DIST_DIR = os.path.join(BUILD_DIR, "dist")
WORK_DIR = os.path.join(BUILD_DIR, "work", "pyinstaller")
BUNDLE = "flock-anycast.d"
EXECUTABLE = "flock-anycast"


def build(importtime: bool = False, clean: bool = False) -> str:
    """Run PyInstaller on the spec; returns the path of the executable symlink."""
    if importtime:
        dist = os.path.join(BUILD_DIR, "work", "importtime", "dist")
        work = os.path.join(BUILD_DIR, "work", "importtime", "pyinstaller")
    else:
        dist, work = DIST_DIR, WORK_DIR
    env = dict(os.environ)
    env["FLOCK_PYI_IMPORTTIME"] = "1" if importtime else "0"
    argv = [
        sys.executable, "-m", "PyInstaller",
        "--noconfirm", "--log-level", "WARN",
        "--distpath", dist, "--workpath", work,
        SPEC,
    ]
    if clean:
        argv.insert(3, "--clean")
    subprocess.run(argv, cwd=REPO, env=env, check=True)
    link = os.path.join(dist, EXECUTABLE)
    # Relative, so the dist directory can be copied or moved as a whole.
    target = os.path.join(BUNDLE, EXECUTABLE)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)
    return link


def smoke_test(binary: str) -> None:
    """Exec VERSION through a symlink in a throwaway CNI bin dir; raise on a bad answer."""
    with tempfile.TemporaryDirectory(prefix="flock-bin-") as bin_dir:
        linked = os.path.join(bin_dir, EXECUTABLE)
        os.symlink(os.path.realpath(binary), linked)
        completed = subprocess.run(
            [linked],
            input=b'{"cniVersion": "1.0.0"}',
            env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True,
            timeout=30,
        )
    if completed.returncode != 0:
        raise SystemExit(f"smoke test failed rc={completed.returncode}: {completed.stdout!r} {completed.stderr!r}")
    reply = json.loads(completed.stdout)
    if reply.get("cniVersion") != "1.0.0" or "1.0.0" not in reply.get("supportedVersions", ()):
        raise SystemExit(f"smoke test: unexpected VERSION reply {reply!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--importtime", action="store_true", help="diagnostic build with -X importtime")
    parser.add_argument("--clean", action="store_true", help="drop PyInstaller's cache first")
    args = parser.parse_args(argv)
    # The plugin validates with the compiled schemas: never freeze stale ones.
    subprocess.run([sys.executable, "-m", "netconf.compile_schemas", "--check"], cwd=REPO, check=True)
    link = build(importtime=args.importtime, clean=args.clean)
    smoke_test(link)
    print(f"built {link} -> {os.readlink(link)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
