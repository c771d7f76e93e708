"""Fixtures shared by every tier: throwaway namespaces and the plugin builds under test."""

from __future__ import annotations

import os

import pytest

from lab.plugin import plugin_builds


def pytest_collection_modifyitems(config, items):
    # Tiers that need root and namespaces are skipped, loudly, for non-root runs.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if "/netns/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def make_netns():
    """Factory for namespaces that are deleted after the test, also when it fails."""
    from lab.netns import create_netns, delete_netns

    created = []

    def factory(role: str, forwarding: bool = False):
        namespace = create_netns(role, forwarding=forwarding)
        created.append(namespace)
        return namespace

    yield factory
    for namespace in reversed(created):
        delete_netns(namespace)


@pytest.fixture(params=["source", "frozen"])
def plugin_binary(request) -> str:
    """Each integration test runs against the source entry point and the frozen binary.

    The frozen build is required when FLOCK_REQUIRE_FROZEN=1 (``make test``
    sets it after ``make build``), so CI cannot pass by skipping it.
    """
    binary = plugin_builds()[request.param]
    if not os.access(binary, os.X_OK):
        if request.param == "frozen" and os.environ.get("FLOCK_REQUIRE_FROZEN") != "1":
            pytest.skip(f"frozen binary not built at {binary} (run make build)")
        pytest.fail(f"plugin binary {binary} missing")
    return binary
