"""CNI spec versions flock speaks, and comparisons between them.

Kept free of pydantic so the VERSION verb imports nothing heavy.
"""

from __future__ import annotations

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]


def version_tuple(version: str) -> tuple[int, ...]:
    """Parse ``"1.0.0"`` into ``(1, 0, 0)``; raises ValueError on junk."""
    parts = version.split(".")
    if len(parts) != 3:
        raise ValueError(f"not a semantic version: {version!r}")
    return tuple(int(part) for part in parts)


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)
