"""Process entry point: the only place that touches the real process.

``run`` gets the environment and streams injected, so tests drive the whole
dispatcher without a subprocess; ``main`` hands it the real ones and owns
process-wide set-up and teardown (umask, logging, the pyroute2 import,
the garbage collector, the exit).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

_FORMAT = "%(asctime)s flock-anycast[%(process)d] %(levelname)s %(message)s"


def main() -> NoReturn:
    """Serve one CNI call and end the process with its exit code."""
    import gc

    # A CNI exec lives well under a second and allocates a bounded amount,
    # which reference counting frees as soon as it is unused. The cyclic
    # collector would walk every module, class and model object, again and
    # again while pydantic and the state file allocate: ~10% of an ADD.
    gc.disable()
    from cni_plugin.dispatch import run
    from cni_plugin.startup import defer_package_init

    # pyroute2's package __init__ imports all of pyroute2 (~115 ms); the
    # plugin needs three of its message modules (docs/frozen-binary.md).
    defer_package_init("pyroute2")
    # Files we create (state, lock, log) are for root only.
    os.umask(0o077)
    code = run(os.environ, sys.stdin.buffer, sys.stdout, setup_logging=configure_logging)
    # The answer is out. End here rather than through the interpreter's
    # teardown (atexit, a last full GC pass, freeing every module: another
    # ~10% of an ADD) which does nothing a CNI exec needs: the state file is
    # fsync'd and closed, sockets are closed, log handlers flush per record.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging(block=None) -> None:
    """Log to stderr; given the config's ``flock`` block, also apply its ``logLevel`` and ``logFile``.

    The dispatcher calls this before its first log line and once the config
    is parsed. logging is imported here rather than at start-up because
    VERSION, which never logs, would otherwise pay for it on every call.
    """
    import logging

    logger = logging.getLogger("flock")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    if block is None:
        return
    logger.setLevel(block.log_level.upper())
    if block.log_file:
        try:
            handler = logging.FileHandler(block.log_file)
        except OSError as exc:
            logger.warning("cannot open log file %s: %s", block.log_file, exc)
            return
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
