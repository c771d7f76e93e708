"""Process entry point: the only place that touches the real process.

``run`` gets the environment and streams injected, so tests drive the whole
dispatcher without a subprocess; ``main`` hands it the real ones and owns
process-wide set-up (umask, logging).
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s flock-anycast[%(process)d] %(levelname)s %(message)s"


def main() -> int:
    from cni_plugin.dispatch import run

    # Files we create (state, lock, log) are for root only.
    os.umask(0o077)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger = logging.getLogger("flock")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return run(os.environ, sys.stdin.buffer, sys.stdout, setup_logging=configure_logging)


def configure_logging(block) -> None:
    """Apply the config's ``logLevel`` and optional ``logFile`` (stderr stays on)."""
    logger = logging.getLogger("flock")
    logger.setLevel(block.log_level.upper())
    if block.log_file:
        try:
            handler = logging.FileHandler(block.log_file)
        except OSError as exc:
            logger.warning("cannot open log file %s: %s", block.log_file, exc)
            return
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
