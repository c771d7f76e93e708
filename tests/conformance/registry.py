"""Declaring checks: an id, the spec section it comes from, and where it applies.

A check is a pytest test function decorated with :func:`check`; it runs once
per spec version. The decorator first decides whether the check applies at
that version (otherwise skip, with the reason), then applies the *version
gate*: a version missing from the plugin's ``supportedVersions`` fails every
check at that version with one recognisable reason, instead of producing a
different symptom per check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conformance.runtime import Runtime
from tests.conformance.settings import HarnessSettings
from tests.conformance.spec import Deviation, at_least

ALL_CHECKS: dict[str, CheckInfo] = {}


@dataclass(frozen=True)
class CheckInfo:
    check_id: str
    section: str
    title: str
    since: str | None = None
    below: str | None = None
    chained_only: bool = False
    needs_hook: bool = False

    def not_applicable_reason(self, version: str, settings: HarnessSettings) -> str | None:
        if self.since and not at_least(version, self.since):
            return f"not applicable: only from spec {self.since}"
        if self.below and at_least(version, self.below):
            return f"not applicable: only below spec {self.below}"
        if self.chained_only and not settings.chained:
            return "not applicable: chained plugins only (--chained)"
        if self.needs_hook and settings.remove_resources_hook is None:
            return "not run: no --remove-resources-hook given"
        return None


@dataclass(frozen=True)
class VersionProbe:
    """The plugin's VERSION answer, asked once per session."""

    supported_versions: tuple[str, ...] | None
    failure: str = ""


def unsupported_version_reason(version: str, probe: VersionProbe) -> str:
    return (
        f"version deviation: plugin does not list cniVersion {version} in supportedVersions "
        f"{list(probe.supported_versions or ())}"
    )


@dataclass
class CheckContext:
    """What a check body receives: the version under test and a runtime in a fresh lab."""

    version: str
    settings: HarnessSettings
    runtime: Runtime
    probe: VersionProbe


def check(
    check_id: str,
    section: str,
    title: str,
    since: str | None = None,
    below: str | None = None,
    chained_only: bool = False,
    needs_hook: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a check; the test function takes one fixture, ``conformance``."""
    info = CheckInfo(check_id, section, title, since, below, chained_only, needs_hook)
    if check_id in ALL_CHECKS:
        raise ValueError(f"duplicate check id {check_id}")
    ALL_CHECKS[check_id] = info

    def decorate(function: Callable[[CheckContext], None]) -> Callable[..., Any]:
        @functools.wraps(function)
        def run_check(conformance: CheckContext) -> None:
            reason = info.not_applicable_reason(conformance.version, conformance.settings)
            if reason:
                pytest.skip(reason)
            probe = conformance.probe
            # version-supported reports the missing version itself; every other check is gated.
            if (
                check_id != "version-supported"
                and probe.supported_versions is not None
                and conformance.version not in probe.supported_versions
            ):
                raise Deviation(unsupported_version_reason(conformance.version, probe) + "; check not run")
            function(conformance)

        run_check.conformance_check = info  # type: ignore[attr-defined]
        return run_check

    return decorate
