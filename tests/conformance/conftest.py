"""Loads the conformance harness's pytest hooks and fixtures (tests/conformance/plugin.py).

pytest reads ``pytest_addoption`` from this file when ``tests/conformance``
(or a file in it) is on the command line, so the harness runs as
``pytest tests/conformance --cni-plugin PATH``; see docs/conformance.md.
"""

from tests.conformance.plugin import (  # noqa: F401 - pytest finds hooks and fixtures by name
    conformance,
    harness_settings,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_ignore_collect,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    version_probe,
)
