"""Start-up cost control for the plugin process (see docs/frozen-binary.md).

The runtime execs the plugin for every pod start and stop, so whatever a
module does at import time is paid on every CNI call. This module holds the
one import-system adjustment the plugin makes; ``main()`` applies it, never
an import: process-wide state is changed in ``main()`` only.
"""

from __future__ import annotations

import importlib
import sys
import types


def defer_package_init(name: str) -> None:
    """Let ``import name.sub.module`` run without first running ``name/__init__.py``.

    For packages whose ``__init__`` eagerly imports every subsystem although
    callers want one submodule: pyroute2's imports NDB, IPDB, conntrack,
    asyncio and ~300 modules before ``pyroute2.netlink.rtnl`` can
    load. The package is registered with its real spec and search path but
    without executing its body; submodules then import normally.

    Nothing breaks for code that does want the package itself: the first
    attribute that is not a submodule (``from pyroute2 import IPRoute``,
    ``pyroute2.__version__``) runs the real ``__init__`` at that moment.
    A no-op if the package is already imported or not installed.
    """
    if name in sys.modules:
        return
    # What importlib.util.find_spec and module_from_spec do for a top-level
    # name; importlib.util itself imports contextlib and more.
    spec = None
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(name, None) if find_spec is not None else None
        if spec is not None:
            break
    if spec is None or spec.submodule_search_locations is None:
        return
    module = importlib._bootstrap.module_from_spec(spec)
    module.__class__ = _PackageWithDeferredInit
    sys.modules[name] = module


class _PackageWithDeferredInit(types.ModuleType):
    """A package module whose ``__init__`` runs on the first non-submodule attribute."""

    def __getattr__(self, attribute: str) -> object:
        # Only called for attributes not set yet. The import system sets each
        # submodule on its parent once imported, so this sees names that are
        # either a submodule not imported yet (``from pyroute2 import config``)
        # or something the package body would have defined.
        if not attribute.startswith("__"):
            submodule = f"{self.__name__}.{attribute}"
            try:
                return importlib.import_module(submodule)
            except ModuleNotFoundError as exc:
                if exc.name != submodule:
                    raise
        # Become an ordinary module, then run the package body in place.
        module: types.ModuleType = self
        module.__class__ = types.ModuleType
        spec = self.__spec__
        assert spec is not None and spec.loader is not None  # registered from the spec a finder returned
        spec.loader.exec_module(self)
        return getattr(self, attribute)
