"""The harness's command-line options, registered with pytest and validated once.

Everything about *which* plugin is judged and *how it is configured* lives
here; the checks only read the frozen :class:`HarnessSettings`.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.cni import REFERENCE_PLUGIN_DIR
from tests.conformance.spec import SPEC_VERSIONS, parse_versions

TMPDIR_PLACEHOLDER = "{tmpdir}"
DEFAULT_NETWORK_NAME = "cni-conformance"
DEFAULT_PARALLEL_ADDS = 10


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("cni-conformance", "CNI conformance harness (tests/conformance)")
    group.addoption("--cni-plugin", metavar="PATH", default=None,
                    help="plugin binary to judge; without it the conformance checks are not collected")
    group.addoption("--chained", action="store_true", default=False,
                    help="the plugin is chained: run ptp + host-local first and pass its result as prevResult")
    group.addoption("--cni-config-extra", metavar="JSON", default="{}",
                    help='keys merged into the plugin\'s config; "{tmpdir}" in strings becomes a per-test directory')
    group.addoption("--cni-args", metavar="K=V;...", default="",
                    help="appended to the containerd-style CNI_ARGS every attachment gets")
    group.addoption("--cni-path", metavar="DIRS", default=None,
                    help=f"CNI_PATH for the plugin (default: its own directory, then {REFERENCE_PLUGIN_DIR})")
    group.addoption("--versions", metavar="LIST", default=",".join(SPEC_VERSIONS),
                    help="comma-separated spec versions to check (default: all)")
    group.addoption("--checks", metavar="IDS", default="*",
                    help="comma-separated check ids or globs (e.g. 'del-*,add-result-shape'); default: all")
    group.addoption("--report-json", metavar="FILE", default=None,
                    help="write the check x version report as JSON")
    group.addoption("--expect-deviations", metavar="FILE", default=None,
                    help="JSON list of known deviations: they must be detected, and count as expected failures")
    group.addoption("--remove-resources-hook", metavar="MODULE:FUNCTION", default=None,
                    help="callable(attachment) deleting what the plugin created, so CHECK must fail afterwards")
    group.addoption("--chain-main-config", metavar="JSON", default="{}",
                    help="keys merged into the main ptp config of a chain (e.g. IPv4-only ipam)")
    group.addoption("--parallel-adds", metavar="N", type=int, default=DEFAULT_PARALLEL_ADDS,
                    help="attachments added at the same time by the parallel check")
    group.addoption("--network-name", metavar="NAME", default=DEFAULT_NETWORK_NAME,
                    help="the network name in every config")


RemoveResourcesHook = Callable[[Any], None]


@dataclass(frozen=True)
class HarnessSettings:
    plugin: str
    chained: bool
    config_extra: dict[str, Any]
    cni_args: str
    cni_path: str
    versions: tuple[str, ...]
    check_patterns: tuple[str, ...]
    report_json: str | None
    expect_deviations: str | None
    remove_resources_hook_name: str | None
    chain_main_config: dict[str, Any]
    parallel_adds: int
    network_name: str
    remove_resources_hook: RemoveResourcesHook | None = field(default=None, compare=False)

    def selects(self, check_id: str) -> bool:
        return any(self.selects_with(pattern, check_id) for pattern in self.check_patterns)

    @staticmethod
    def selects_with(pattern: str, check_id: str) -> bool:
        return fnmatch.fnmatchcase(check_id, pattern)

    @property
    def plugin_type(self) -> str:
        """The config's ``type``: an explicit one from the extra config, else the binary's name."""
        return str(self.config_extra.get("type") or os.path.basename(self.plugin))


def harness_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("cni_plugin", default=None))


def _json_option(config: pytest.Config, name: str, flag: str) -> dict[str, Any]:
    text = config.getoption(name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise pytest.UsageError(f"{flag} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise pytest.UsageError(f"{flag} must be a JSON object")
    return value


def load_hook(spec: str) -> RemoveResourcesHook:
    """``package.module:function`` or ``path/to/file.py:function``; UsageError if it does not resolve."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise pytest.UsageError(f"--remove-resources-hook {spec!r}: expected MODULE:FUNCTION")
    try:
        if module_name.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location("cni_conformance_hook", module_name)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        hook = getattr(module, function_name)
    except (ImportError, AttributeError, OSError) as exc:
        raise pytest.UsageError(f"--remove-resources-hook {spec!r}: {exc}") from exc
    if not callable(hook):
        raise pytest.UsageError(f"--remove-resources-hook {spec!r} is not callable")
    return hook


def settings_from_config(config: pytest.Config) -> HarnessSettings:
    """Validate every option up front so a typo fails the session, not 150 checks."""
    plugin = os.path.abspath(config.getoption("cni_plugin"))
    if not (os.path.isfile(plugin) and os.access(plugin, os.X_OK)):
        raise pytest.UsageError(f"--cni-plugin {plugin}: not an executable file")
    try:
        versions = parse_versions(config.getoption("versions"))
    except ValueError as exc:
        raise pytest.UsageError(f"--versions: {exc}") from exc
    parallel_adds = config.getoption("parallel_adds")
    if parallel_adds < 2:
        raise pytest.UsageError("--parallel-adds must be at least 2")
    hook_name = config.getoption("remove_resources_hook")
    deviations = config.getoption("expect_deviations")
    if deviations and not os.path.isfile(deviations):
        raise pytest.UsageError(f"--expect-deviations {deviations}: no such file")
    cni_path = config.getoption("cni_path") or os.pathsep.join(
        dict.fromkeys([os.path.dirname(plugin), REFERENCE_PLUGIN_DIR])
    )
    return HarnessSettings(
        plugin=plugin,
        chained=config.getoption("chained"),
        config_extra=_json_option(config, "cni_config_extra", "--cni-config-extra"),
        cni_args=config.getoption("cni_args"),
        cni_path=cni_path,
        versions=versions,
        check_patterns=tuple(part.strip() for part in config.getoption("checks").split(",") if part.strip()),
        report_json=config.getoption("report_json"),
        expect_deviations=deviations,
        remove_resources_hook_name=hook_name,
        chain_main_config=_json_option(config, "chain_main_config", "--chain-main-config"),
        parallel_adds=parallel_adds,
        network_name=config.getoption("network_name"),
        remove_resources_hook=load_hook(hook_name) if hook_name else None,
    )


def substitute_tmpdir(value: Any, tmpdir: str) -> Any:
    """Replace ``{tmpdir}`` in every string of a JSON value."""
    if isinstance(value, str):
        return value.replace(TMPDIR_PLACEHOLDER, tmpdir)
    if isinstance(value, list):
        return [substitute_tmpdir(item, tmpdir) for item in value]
    if isinstance(value, dict):
        return {key: substitute_tmpdir(item, tmpdir) for key, item in value.items()}
    return value
