"""Fixtures for the end-to-end lab (router + node + pods, real BIRD and FRR).

Each test gets a lab of its own, built in throwaway namespaces and torn down
afterwards whatever happened; on failure the reconciler's and BIRD's logs are
attached to the report.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator

import pytest

from lab.topology import Lab, flock_anycast_binary, flock_reconciler_binary

_REQUIRED_TOOLS = ("bird", "birdc", "nsenter", "ping", "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/cni/ptp")


def _missing_tools() -> list[str]:
    return [tool for tool in _REQUIRED_TOOLS if not (shutil.which(tool) or os.access(tool, os.X_OK))]


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, BIRD, FRR)"
    missing = _missing_tools()
    if missing:
        return f"lab tools missing: {', '.join(missing)}"
    return None


def reconciler_skip_reason() -> str | None:
    if importlib.util.find_spec("reconciler.main") is None:
        return "reconciler.main (flock-reconciler) does not exist yet"
    if not os.access(flock_reconciler_binary(), os.X_OK):
        return f"{flock_reconciler_binary()} is not executable"
    return None


def plugin_skip_reason() -> str | None:
    binary = flock_anycast_binary()
    if not os.access(binary, os.X_OK):
        return f"{binary} is not executable"
    return None


def _built_lab(request: pytest.FixtureRequest, *reasons: str | None) -> Iterator[Lab]:
    for reason in (lab_skip_reason(), *reasons):
        if reason:
            pytest.skip(reason)
    with Lab(drain_delay=0.3) as built:
        try:
            yield built
        finally:
            _attach_logs(request, built)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Router + node with BIRD and FRR up and both sessions Established."""
    yield from _built_lab(request)


@pytest.fixture
def reconciler_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The same lab, for tests that also need the plugin and the reconciler binaries."""
    yield from _built_lab(request, plugin_skip_reason(), reconciler_skip_reason())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _attach_logs(request: pytest.FixtureRequest, built: Lab) -> None:
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for title, path in (
        ("reconciler log", built.reconciler_log_path),
        ("bird log", built.bird.log_path if built.bird else ""),
    ):
        if path and os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                tail = "".join(handle.readlines()[-80:])
            report.sections.append((title, tail))
