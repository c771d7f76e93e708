"""Process entry point: the only place that touches the real process.

``run`` gets the environment and streams injected, so tests drive the whole
dispatcher without a subprocess; ``main`` hands it the real ones and owns
process-wide set-up and teardown (umask, logging, the pyroute2 import,
the garbage collector, the exit).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would cost every exec
    from typing import NoReturn

    from netconf.config import FlockBlock


def main() -> NoReturn:
    """Serve one CNI call and end the process with its exit code."""
    import gc

    # A CNI exec lives well under a second and allocates a bounded amount,
    # which reference counting frees as soon as it is unused. The cyclic
    # collector would walk every module, class and model object, again and
    # again while the records and the state file allocate, for nothing
    # (docs/frozen-binary.md, "No cyclic GC, no interpreter teardown").
    gc.disable()
    from cni_plugin.dispatch import run
    from cni_plugin.startup import defer_package_init

    # pyroute2's package __init__ imports all of pyroute2 (NDB, IPDB,
    # asyncio...); the plugin needs three of its message modules
    # (docs/frozen-binary.md).
    defer_package_init("pyroute2")
    # pydantic-core's __init__ imports core_schema and typing_extensions;
    # the records need only its compiled extension (netconf.records).
    defer_package_init("pydantic_core")
    # Files we create (state, lock, log) are for root only.
    os.umask(0o077)
    code = run(os.environ, sys.stdin.buffer, sys.stdout, setup_logging=configure_logging)
    # The answer is out. End here rather than through the interpreter's
    # teardown (atexit, a last full GC pass, freeing every module: a sizeable
    # share of an ADD) which does nothing a CNI exec needs: the state file
    # is fsync'd and closed, sockets are closed, log handlers flush per record.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging(block: FlockBlock | None = None) -> None:
    """Apply the config's ``logLevel`` and ``logFile`` (the dispatcher calls this once it is parsed).

    ``logging`` itself is imported only when a record is due
    (``cni_plugin.plugin_log``): a successful exec at the default level
    never pays for it.
    """
    if block is None:
        return
    from cni_plugin import plugin_log

    plugin_log.configure(block.log_level, block.log_file)
