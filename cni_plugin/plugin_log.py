"""Logging for a plugin exec, importing ``logging`` only when a record is due.

stdout is the protocol, so records go to stderr and, when the config names
one, to ``logFile``. The stdlib ``logging`` package is costly for a plugin
exec to import (re, traceback, threading, string, weakref), and at the
default level (warning) a successful exec logs nothing. So the plugin logs
through ``PluginLogger``, which compares the level first and sets up
``logging`` — handlers, format, level — on the first record that passes.
(pyroute2's ``netlink`` package imports ``logging`` itself, so the saving is
for the execs that never reach the kernel: VERSION, STATUS, an ADD without
anycast addresses, a DEL of an unknown attachment, every refused call.)

Process-wide state: ``main()`` calls ``configure`` (through the dispatcher,
once the config is parsed); library code only calls ``get_logger``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing logging is what this module avoids
    import logging

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_FORMAT = "%(asctime)s flock-anycast[%(process)d] %(levelname)s %(message)s"
_ROOT = "flock"

_threshold = LEVELS["warning"]
_log_file: str | None = None
_installed = False
_log_files_tried: set[str] = set()  # opened or refused: each is tried once per exec


def configure(level: str = "warning", log_file: str | None = None) -> None:
    """Apply the config's ``logLevel`` and ``logFile``; logging itself is set up lazily.

    A log file makes every record that passes the level reach ``logging``
    at once, since an operator who names a file wants it written.
    """
    global _threshold, _log_file
    _threshold = LEVELS[level]
    _log_file = log_file
    if _installed:
        _install()


class PluginLogger:
    """The subset of ``logging.Logger`` the plugin uses, level-checked before any import."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, msg: str, *args: object) -> None:
        self._log(LEVELS["debug"], msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(LEVELS["info"], msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(LEVELS["warning"], msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(LEVELS["error"], msg, args)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the exception being handled (call from an ``except`` block)."""
        self._log(LEVELS["error"], msg, args, exc_info=True)

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool = False) -> None:
        if level < _threshold:
            return
        _install().getChild(self.name.removeprefix(_ROOT + ".")).log(level, msg, *args, exc_info=exc_info)


def get_logger(name: str) -> PluginLogger:
    return PluginLogger(name)


def _install() -> logging.Logger:
    """Set up ``logging`` for the plugin's records (idempotent); returns the ``flock`` logger."""
    global _installed
    import logging

    logger = logging.getLogger(_ROOT)
    if not _installed:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
        _installed = True
    logger.setLevel(_threshold)
    if _log_file and _log_file not in _log_files_tried:
        _log_files_tried.add(_log_file)
        from netconf.files import open_for_append

        try:
            stream = open_for_append(_log_file)
        except (OSError, ValueError) as exc:
            # Logging is not the protocol: a log file that cannot be used
            # must not fail the verb (a failed ADD tears the pod down).
            # Said once per exec, on stderr, which the runtime keeps.
            logger.error("cannot use log file %r, logging to stderr only: %s", _log_file, exc)
        else:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(handler)
    return logger
