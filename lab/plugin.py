"""Where the flock-anycast binaries under test live, and CNI bin dirs holding them.

Two builds are tested the same way: the source entry point (the venv's
console script) and the frozen PyInstaller binary from ``make build``.
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_BINARY = os.path.join(os.path.dirname(sys.executable), "flock-anycast")
FROZEN_BINARY = os.environ.get("FLOCK_FROZEN_BINARY", os.path.join(REPO, "build", "dist", "flock-anycast"))
REFERENCE_PLUGIN_DIR = "/usr/lib/cni"


def plugin_builds() -> dict[str, str]:
    return {"source": SOURCE_BINARY, "frozen": FROZEN_BINARY}


def make_bin_dir(
    directory: str,
    flock_binary: str,
    reference: tuple[str, ...] = ("ptp", "host-local", "bandwidth", "tuning", "portmap", "loopback"),
) -> str:
    """A CNI_PATH directory with ``flock-anycast`` and the reference plugins, as symlinks."""
    os.makedirs(directory, exist_ok=True)
    os.symlink(flock_binary, os.path.join(directory, "flock-anycast"))
    for name in reference:
        os.symlink(os.path.join(REFERENCE_PLUGIN_DIR, name), os.path.join(directory, name))
    return directory
