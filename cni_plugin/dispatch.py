"""The dispatcher: environment + stdin in, one verb, result or error JSON out.

Modelled on libcni's ``pkg/skel``: validate everything before any side
effect, call one function per verb, and be the single place that catches
broadly. A CniError keeps its code; anything else becomes code 999 with its
repr in ``details`` — never relabelled as a config error. stdout carries
only the protocol; logs go to stderr or the configured log file.

``_serve`` is the one place that builds the real side-effect adapters the
verbs get (state store, pod loopback, pod annotations, clock); tests of
the verbs pass fakes instead (tests/unit/fakes.py).
"""

from __future__ import annotations

import json

from netconf.errors import CniError, DecodeFailure, IncompatibleVersion, IOFailure
from netconf.versions import LATEST_VERSION, SUPPORTED_VERSIONS, at_least

# Minimum spec version of each verb (SPEC.md: CHECK appeared in 0.4.0,
# GC and STATUS in 1.1.0).
MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Deepest nesting of objects and arrays accepted on stdin. What runtimes send
# is four levels deep (prevResult.interfaces[].name); past Python's recursion
# limit (1000 frames) json.loads, repr() and json.dumps fail, and how far
# below it depends on the caller's stack. 64 keeps every step clear of it.
MAX_NESTING = 64

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would cost every exec
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, TextIO

    from cni_plugin.environment import CniEnvironment
    from netconf.config import FlockBlock, NetworkConfig

    # Applies the config's logging settings; None: the defaults (no config parsed).
    LoggingSetup = Callable[[FlockBlock | None], None]


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
            # environment module is even imported.
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
        # The answer first: stdout is the protocol, and logging (a log file
        # that cannot be opened, a closed stderr) must never keep it back.
        _emit(stdout, exc.to_json(reply_version))
        _log_failure(setup_logging, "%s failed: %s (%s)", environ.get("CNI_COMMAND", "?"), exc.msg, exc.details)
        return 1
    except Exception as exc:  # the one broad catch: unknown failures are code 999
        _emit(stdout, CniError("unexpected failure in flock-anycast", repr(exc)).to_json(reply_version))
        _log_failure(setup_logging, "unexpected failure", unexpected=True)
        return 1


def _serve(
    command: str, env: CniEnvironment, document: dict[str, Any], setup_logging: LoggingSetup | None
) -> dict[str, Any] | None:
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
        annotations=PodAnnotationsOnFirstUse(config.flock),
        clock=verbs.SystemClock(),
    )
    handler = {
        "ADD": verbs.cmd_add,
        "DEL": verbs.cmd_del,
        "CHECK": verbs.cmd_check,
        "GC": verbs.cmd_gc,
        "STATUS": verbs.cmd_status,
    }[command]
    return handler(context)


class PodAnnotationsOnFirstUse:
    """The real ``verbs.PodAnnotations``: ``kubernetes.ApiPodAnnotations``, imported on the first call.

    Most execs never read an annotation (DEL, CHECK, GC, STATUS, and ADDs
    with an explicit source), so they never import the API client
    (``http.client``, ``ssl``, PyYAML).
    """

    __slots__ = ("_settings",)

    def __init__(self, settings: FlockBlock) -> None:
        self._settings = settings  # the config's flock block: kubeconfig, annotation, apiTimeout

    def anycast_annotation(self, namespace: str, name: str) -> str | None:
        from cni_plugin.kubernetes import ApiPodAnnotations

        settings = self._settings
        assert settings.kubeconfig is not None  # verbs.resolve_anycast asks only when the config names one
        adapter = ApiPodAnnotations(settings.kubeconfig, settings.annotation, settings.api_timeout)
        return adapter.anycast_annotation(namespace, name)


def _log_failure(setup_logging: LoggingSetup | None, msg: str, *args: object, unexpected: bool = False) -> None:
    """Log a failure already reported on stdout; never raises.

    Only failures log here, through cni_plugin.plugin_log, which imports
    logging on the first record that is due, so VERSION never pays for it.
    Called from an ``except`` block, so ``unexpected`` logs the traceback.
    """
    try:
        from cni_plugin.plugin_log import get_logger

        if setup_logging is not None:
            setup_logging(None)
        logger = get_logger("flock.cni")
        if unexpected:
            logger.exception(msg, *args)
        else:
            logger.error(msg, *args)
    except Exception:  # the answer is out; a broken log must not change the exit code
        pass


def _merged_args(cni_args: Mapping[str, str], config: NetworkConfig) -> dict[str, str]:
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
    except (ValueError, AttributeError, RecursionError):
        return None
    return version if version in SUPPORTED_VERSIONS else None


def _decode(raw: bytes) -> dict[str, Any]:
    """The stdin document; raises DecodeFailure (code 6).

    Besides invalid JSON: nesting deeper than MAX_NESTING, and strings that
    are not Unicode text (lone UTF-16 surrogates, which json accepts from
    ``\\ud800`` escapes and from UTF-8-encoded surrogates) — they would fail
    later, when a record or the result is written, as code 999.
    """
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise DecodeFailure("network config on stdin is not valid JSON", str(exc)) from exc
    except RecursionError as exc:
        raise DecodeFailure(
            "network config on stdin is nested too deeply", f"more than {MAX_NESTING} levels of objects and arrays"
        ) from exc
    if not isinstance(document, dict):
        raise DecodeFailure("network config on stdin is not a JSON object", type(document).__name__)
    _check_decoded(document)
    return document


def _check_decoded(document: dict[str, Any]) -> None:
    """Walk the document once, without recursion; raises DecodeFailure."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > MAX_NESTING:
            raise DecodeFailure(
                "network config on stdin is nested too deeply", f"more than {MAX_NESTING} levels of objects and arrays"
            )
        if isinstance(container, dict):
            for key in container:
                _check_text(key)
            values = container.values()
        else:
            values = container
        for value in values:
            if isinstance(value, str):
                _check_text(value)
            elif isinstance(value, (dict, list)):
                pending.append((value, depth + 1))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise DecodeFailure("network config on stdin holds a string that is not Unicode text", str(exc)) from exc


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
