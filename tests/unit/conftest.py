"""Fixtures for the unit tier."""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_plugin_log():
    """Undo what a test's execs did to cni_plugin.plugin_log's process-wide state.

    ``main()`` configures logging once per exec; tests run many execs in one
    process, each with its own ``logLevel`` and ``logFile``. Handlers the
    test added are removed, and the next record sets up a stderr handler on
    the then-current ``sys.stderr`` (which capsys may have replaced).
    """
    import logging

    from cni_plugin import plugin_log

    saved = (plugin_log._threshold, plugin_log._log_file, set(plugin_log._log_files_tried), plugin_log._installed)
    logger = logging.getLogger("flock")
    handlers = list(logger.handlers)
    for handler in handlers:
        logger.removeHandler(handler)
    plugin_log._installed = False
    yield
    plugin_log._threshold, plugin_log._log_file, plugin_log._log_files_tried, plugin_log._installed = saved
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
