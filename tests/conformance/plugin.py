"""pytest glue: options, collection, fixtures, and turning outcomes into the report.

Collection rules keep the normal ``pytest tests`` run unaffected: without
``--cni-plugin`` the check module is not collected; with it, the validation
module (which spawns this harness as a subprocess) is not, so a harness run
never recurses into itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.registry import ALL_CHECKS, CheckContext, CheckInfo, VersionProbe
from tests.conformance.report import ConformanceReport, DeviationsFileError, ExpectedDeviations
from tests.conformance.runtime import Lab, Runtime
from tests.conformance.settings import (
    HarnessSettings,
    add_options,
    harness_enabled,
    settings_from_config,
)
from tests.conformance.spec import SPEC_VERSIONS, Deviation

CHECKS_MODULE = "test_checks.py"
VALIDATION_MODULE = "test_harness_validation.py"

SETTINGS_KEY = pytest.StashKey[HarnessSettings]()
REPORT_KEY = pytest.StashKey[ConformanceReport]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.parent != Path(__file__).parent:
        return None
    if collection_path.name == CHECKS_MODULE and not harness_enabled(config):
        return True
    if collection_path.name == VALIDATION_MODULE and harness_enabled(config):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    if harness_enabled(config):
        config.stash[SETTINGS_KEY] = settings_from_config(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "spec_version" in metafunc.fixturenames:
        settings = metafunc.config.stash.get(SETTINGS_KEY, None)
        versions = settings.versions if settings else SPEC_VERSIONS
        metafunc.parametrize("spec_version", versions, ids=list(versions))


def _check_of(item: pytest.Item) -> CheckInfo | None:
    return getattr(getattr(item, "function", None), "conformance_check", None)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return
    unknown = [pattern for pattern in settings.check_patterns
               if ALL_CHECKS and not any(settings.selects_with(pattern, check_id) for check_id in ALL_CHECKS)]
    if unknown:
        raise pytest.UsageError(f"--checks: {unknown} match no check; checks are {', '.join(ALL_CHECKS)}")
    deselected = [item for item in items if (info := _check_of(item)) and not settings.selects(info.check_id)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
    checks = list({info.check_id: info for info in map(_check_of, items) if info}.values())
    deviations = ExpectedDeviations()
    if settings.expect_deviations:
        try:
            deviations = ExpectedDeviations.load(settings.expect_deviations, set(ALL_CHECKS), SPEC_VERSIONS)
        except (OSError, ValueError, DeviationsFileError) as exc:
            raise pytest.UsageError(f"--expect-deviations: {exc}") from exc
    config.stash[REPORT_KEY] = ConformanceReport(settings, checks, deviations)


@pytest.fixture(scope="session")
def harness_settings(request: pytest.FixtureRequest) -> HarnessSettings:
    settings = request.config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        pytest.skip("the conformance checks need --cni-plugin PATH (see docs/conformance.md)")
    return settings


@pytest.fixture(scope="session")
def version_probe(
    request: pytest.FixtureRequest, harness_settings: HarnessSettings, tmp_path_factory: pytest.TempPathFactory
) -> VersionProbe:
    """Ask VERSION once; the answer gates every check at versions the plugin does not list."""
    lab = Lab(str(tmp_path_factory.mktemp("version-probe")))
    runtime = Runtime(harness_settings, harness_settings.versions[-1], lab)
    try:
        call = runtime.invoke(runtime.environ("VERSION"), {"cniVersion": runtime.version})
    finally:
        lab.close()
    try:
        supported = call.expect_result().get("supportedVersions")
    except Deviation as exc:
        probe = VersionProbe(None, str(exc))
    else:
        if isinstance(supported, list) and all(isinstance(item, str) for item in supported):
            probe = VersionProbe(tuple(supported))
        else:
            probe = VersionProbe(None, f"supportedVersions is not a list of strings: {call.describe()}")
    report = request.config.stash.get(REPORT_KEY, None)
    if report is not None:
        report.probe = probe
    return probe


@pytest.fixture
def conformance(
    spec_version: str,
    harness_settings: HarnessSettings,
    version_probe: VersionProbe,
    tmp_path: Path,
) -> Iterator[CheckContext]:
    """A fresh lab and runtime; afterwards DEL what is left and delete every namespace."""
    lab = Lab(str(tmp_path))
    runtime = Runtime(harness_settings, spec_version, lab)
    try:
        yield CheckContext(spec_version, harness_settings, runtime, version_probe)
    finally:
        try:
            runtime.cleanup()
        finally:
            lab.close()


def _failure_reason(call: pytest.CallInfo[None]) -> str:
    assert call.excinfo is not None
    value = call.excinfo.value
    if isinstance(value, Deviation):
        return str(value)
    return f"harness error: {call.excinfo.typename}: {value}"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Record each check x version; expected deviations become xfail, undetected ones fail."""
    report: pytest.TestReport = yield
    info = _check_of(item)
    conformance_report = item.config.stash.get(REPORT_KEY, None)
    if info is None or conformance_report is None:
        return report
    version = item.callspec.params["spec_version"]  # type: ignore[attr-defined]
    if report.when == "setup":
        if report.skipped:
            conformance_report.record(info.check_id, version, "skip", _skip_reason(report))
        elif report.failed:
            conformance_report.record(info.check_id, version, "error", _failure_reason(call))
        return report
    if report.when == "teardown":
        if report.failed:
            previous = conformance_report.outcomes.get((info.check_id, version))
            detail = f"cleanup failed: {_failure_reason(call)}"
            conformance_report.record(
                info.check_id, version, "error", f"{previous.reason}; {detail}" if previous else detail
            )
        return report
    expected = conformance_report.deviations.covering(info.check_id, version)
    if report.passed:
        required = [entry for entry in expected if not entry.intermittent]
        if required:
            reason = "expected deviation not detected: " + "; ".join(entry.match for entry in required)
            report.outcome = "failed"
            report.longrepr = reason
            conformance_report.record(info.check_id, version, "undetected", reason)
        else:
            conformance_report.record(info.check_id, version, "pass")
    elif report.skipped:
        conformance_report.record(info.check_id, version, "skip", _skip_reason(report))
    else:
        reason = _failure_reason(call)
        is_deviation = call.excinfo is not None and isinstance(call.excinfo.value, Deviation)
        explaining = [entry for entry in expected if entry.explains(reason)]
        if is_deviation and explaining:
            report.outcome = "skipped"
            report.wasxfail = f"expected deviation: {reason}"  # type: ignore[attr-defined]
            conformance_report.record(info.check_id, version, "deviation", reason, explaining[0].why)
        elif is_deviation:
            if expected:
                reason += " (an expected deviation covers this cell, but its text does not match: " + "; ".join(
                    repr(entry.match) for entry in expected
                ) + ")"
            conformance_report.record(info.check_id, version, "fail", reason)
        else:
            conformance_report.record(info.check_id, version, "error", reason)
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    conformance_report = config.stash.get(REPORT_KEY, None)
    if conformance_report is None:
        return
    settings = conformance_report.settings
    kind = "chained" if settings.chained else "main"
    terminalreporter.write_sep("=", f"CNI conformance: {settings.plugin} ({kind}, type {settings.plugin_type})")
    probe = conformance_report.probe
    if probe is not None:
        claimed = list(probe.supported_versions) if probe.supported_versions is not None else probe.failure
        terminalreporter.write_line(f"supportedVersions: {claimed}")
    if conformance_report.deviations.source:
        terminalreporter.write_line(f"expected deviations: {conformance_report.deviations.source}")
    for line in conformance_report.render():
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    conformance_report = session.config.stash.get(REPORT_KEY, None)
    if conformance_report is not None and conformance_report.settings.report_json:
        conformance_report.write_json(os.path.abspath(conformance_report.settings.report_json))
