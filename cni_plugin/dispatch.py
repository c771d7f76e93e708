"""The dispatcher: environment + stdin in, one verb, result or error JSON out.

Modelled on libcni's ``pkg/skel``: validate everything before any side
effect, call one function per verb, and be the single place that catches
broadly. A CniError keeps its code; anything else becomes code 999 with its
repr in ``details`` — never relabelled as a config error. stdout carries
only the protocol; logs go to stderr or the configured log file.
"""

from __future__ import annotations

import json

from netconf.errors import CniError, DecodeFailure, IncompatibleVersion, InvalidConfig, IOFailure
from netconf.versions import LATEST_VERSION, SUPPORTED_VERSIONS, at_least

# Minimum spec version of each verb (SPEC.md: CHECK appeared in 0.4.0,
# GC and STATUS in 1.1.0).
MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~8 ms of an exec; annotations only
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, TextIO

    LoggingSetup = Callable[[Any], None]


def run(
    environ: Mapping[str, str],
    stdin: BinaryIO,
    stdout: TextIO,
    setup_logging: LoggingSetup | None = None,
) -> int:
    """Serve one CNI exec; returns the process exit code."""
    reply_version = LATEST_VERSION
    try:
        raw, read_error = _read_stdin(stdin)
        reply_version = _peek_version(raw) or LATEST_VERSION
        # Environment first, then stdin, as libcni's skel does: a runtime
        # that forgot a variable hears about that, not about its config.
        if environ.get("CNI_COMMAND") == "VERSION":
            # Needs no other variable, so it is answered before the
            # environment module (and dataclasses, ~5 ms) is even imported.
            document = _decode(raw) if raw.strip() else None
            requested = _requested_version(document) if document else LATEST_VERSION
            _emit(stdout, {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0
        from cni_plugin.environment import parse_environment, read_command

        command = read_command(environ)
        env = parse_environment(environ)
        if read_error is not None:
            raise read_error
        if not raw.strip():
            raise DecodeFailure("no network config on stdin")
        document = _decode(raw)
        requested = _requested_version(document)
        _check_version(command, requested)
        result = _serve(command, env, document, setup_logging)
        if result is not None:
            _emit(stdout, result)
        return 0
    except CniError as exc:
        _logger(setup_logging).error("%s failed: %s (%s)", environ.get("CNI_COMMAND", "?"), exc.msg, exc.details)
        _emit(stdout, exc.to_json(reply_version))
        return 1
    except Exception as exc:  # the one broad catch: unknown failures are code 999
        _logger(setup_logging).exception("unexpected failure")
        _emit(stdout, CniError("unexpected failure in flock-anycast", repr(exc)).to_json(reply_version))
        return 1


def _serve(command: str, env, document: dict[str, Any], setup_logging: LoggingSetup | None):
    # Imported here so VERSION (and every error before this point) never
    # pays for pydantic or pyroute2.
    from cni_plugin import verbs
    from cni_plugin.loopback import NetlinkPodLoopback
    from netconf.config import parse_network_config
    from netconf.state import StateStore

    config = parse_network_config(document)
    if setup_logging is not None:
        setup_logging(config.flock)
    env = env.replace(args=_merged_args(env.args, config))
    context = verbs.VerbContext(
        env=env,
        config=config,
        store=StateStore(config.flock.state_dir, lock_timeout=config.flock.lock_timeout),
        loopback=NetlinkPodLoopback(),
    )
    handler = {
        "ADD": verbs.cmd_add,
        "DEL": verbs.cmd_del,
        "CHECK": verbs.cmd_check,
        "GC": verbs.cmd_gc,
        "STATUS": verbs.cmd_status,
    }[command]
    return handler(context)


def _logger(setup_logging: LoggingSetup | None):
    """The dispatcher's logger, with the process's handlers set up first.

    Only failures log here, through cni_plugin.plugin_log, which imports
    logging on the first record that is due, so VERSION never pays for it.
    """
    from cni_plugin.plugin_log import get_logger

    if setup_logging is not None:
        setup_logging(None)
    return get_logger("flock.cni")


def _merged_args(cni_args: Mapping[str, str], config) -> dict[str, str]:
    """CNI_ARGS overlaid by ``args.cni`` string values (CONVENTIONS: args wins)."""
    merged = dict(cni_args)
    if config.args is not None and config.args.cni is not None:
        for key, value in config.args.cni.extra.items():
            if isinstance(value, str):
                merged[key] = value
    return merged


def _read_stdin(stdin: BinaryIO) -> tuple[bytes, IOFailure | None]:
    """The config bytes, or the error to report once the environment is judged."""
    try:
        return stdin.read(), None
    except (OSError, ValueError) as exc:
        return b"", IOFailure("cannot read the network config from stdin", repr(exc))


def _peek_version(raw: bytes) -> str | None:
    """The config's cniVersion if it is one we speak, for the error envelope."""
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError):
        return None
    return version if version in SUPPORTED_VERSIONS else None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise DecodeFailure("network config on stdin is not valid JSON", str(exc)) from exc
    if not isinstance(document, dict):
        raise DecodeFailure("network config on stdin is not a JSON object", type(document).__name__)
    return document


def _requested_version(document: dict[str, Any]) -> str:
    # A config without cniVersion is a 0.1.0 config (SPEC.md), which we do not speak.
    version = document.get("cniVersion", "0.1.0")
    return version if isinstance(version, str) else str(version)


def _check_version(command: str, requested: str) -> None:
    if requested not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(
            f"incompatible CNI version {requested!r}",
            f"flock-anycast supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    minimum = MINIMUM_VERSION.get(command)
    if minimum and not at_least(requested, minimum):
        raise IncompatibleVersion(
            f"{command} needs cniVersion {minimum} or later, config has {requested}",
            f"{command} is not defined before spec {minimum}",
        )


def _emit(stdout: TextIO, payload: dict[str, Any]) -> None:
    stdout.write(json.dumps(payload))
    stdout.write("\n")
    stdout.flush()
