"""Facts from the CNI spec that the checks share: versions, verbs, error codes.

Pure data and comparisons; nothing here runs a process or touches a netns.
Section names follow SPEC.md at spec-v1.1.0 (and CONVENTIONS.md).
"""

from __future__ import annotations

SPEC_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SPEC_VERSIONS[-1]

# The first spec version that knows a verb; below it the verb is code 1.
CHECK_SINCE = "0.4.0"
GC_SINCE = "1.1.0"
STATUS_SINCE = "1.1.0"
# From 1.0.0 on ``ips[].version`` is gone; 0.4.0 started sending prevResult on DEL.
IPS_VERSION_DROPPED = "1.0.0"
PREV_RESULT_ON_DEL_SINCE = "0.4.0"

# Error codes, SPEC §5 "Error".
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7

# Required environment per verb, SPEC §2 "CNI operations" (CNI_PATH is
# optional for ADD/DEL/CHECK, required for GC).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_COMMAND", "CNI_PATH"),
    "STATUS": ("CNI_COMMAND",),
    "VERSION": ("CNI_COMMAND",),
}

# GC's list of attachments still in use: the released key, and the key of
# the draft libcni 1.2 still sends alongside it (containernetworking/cni#1101).
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; raises ValueError on anything else."""
    parts = version.split(".")
    if len(parts) != 3:
        raise ValueError(f"not a CNI spec version: {version!r}")
    return tuple(int(part) for part in parts)


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def parse_versions(text: str) -> tuple[str, ...]:
    """A ``--versions`` value, in spec order; raises ValueError naming unknown ones."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [version for version in wanted if version not in SPEC_VERSIONS]
    if unknown or not wanted:
        raise ValueError(f"unknown spec versions {unknown}; choose from {', '.join(SPEC_VERSIONS)}")
    return tuple(version for version in SPEC_VERSIONS if version in wanted)


class Deviation(AssertionError):
    """The plugin did not do what the spec asks; the message says what it did instead."""
