"""Validates the conformance harness by running it as a user would, against known plugins.

Each run is ``pytest tests/conformance --cni-plugin ... --report-json ...`` in
a subprocess; the assertions read the JSON report. A harness that passes
everything is caught by the reference plugins (their known deviations must
be *detected*) and by the broken plugins (the check aimed at the fault must
fail and name it); a harness that fails everything is caught by the sample
plugin, which follows the spec and must pass every check.

The runs go in the background, a few at a time (see HarnessRuns), and each
test waits for its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.netns import TEST_PREFIX, list_lab_namespaces
from lab.plugin import FROZEN_BINARY
from tests.conformance.spec import SPEC_VERSIONS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the conformance harness needs root to create network namespaces"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"
REFERENCE_DIR = Path("/usr/lib/cni")
FLOCK_PLUGIN = REPO_ROOT / ".venv" / "bin" / "flock-anycast"
FLOCK_FROZEN = Path(FROZEN_BINARY)
RUN_TIMEOUT = 420.0
CONCURRENT_RUNS = 3
HOOKS = "tests.conformance.hooks"
ALL_VERSIONS = ",".join(SPEC_VERSIONS)
# Plenty to expose shared state without locking; flock's own run keeps the default 10.
FEW_PARALLEL = ("--parallel-adds", "4")

SAMPLE_CONFIG = json.dumps({"stateDir": "{tmpdir}/state"})
FLOCK_CONFIG = json.dumps(
    {"type": "flock-anycast", "flock": {"pools": ["2001:db8:a::/64", "192.0.2.0/24"], "stateDir": "{tmpdir}/flock"}}
)
SAMPLE_VERSIONS = "0.3.0,0.4.0,1.1.0"
SAMPLE_OPTIONS = (
    "--cni-config-extra", SAMPLE_CONFIG, "--remove-resources-hook", f"{HOOKS}:remove_sample_plugin_state",
    *FEW_PARALLEL,
)
FLOCK_OPTIONS = (
    "--chained", "--cni-config-extra", FLOCK_CONFIG, "--cni-args", "FLOCK_ANYCAST=192.0.2.53,2001:db8:a::53",
    "--remove-resources-hook", f"{HOOKS}:remove_flock_anycast_addresses",
)
# Every check but the version-independent ones that need full ADD/DEL flows
# (parallel-add, del-netns-gone, del-empty-netns, ifname-rules).
VERSION_SENSITIVE_CHECKS = (
    "version-*,env-*,container-id-rules,config-*,add-*,error-json-shape,check-*,"
    "del-idempotent,del-without-prevresult,del-never-added,gc-gated,status-gated"
)


@dataclass(frozen=True)
class HarnessRun:
    """One invocation of the harness against one plugin."""

    plugin: Path
    options: tuple[str, ...]
    deviations: Path | None = None

    def argv(self, report: Path, basetemp: Path) -> list[str]:
        # --tb=line: the JSON report carries the reasons, and long tracebacks of
        # a hundred expected deviations cost a second of CPU per run to format.
        argv = [sys.executable, "-m", "pytest", "tests/conformance", "-q", "-rN", "--tb=line",
                "-p", "no:cacheprovider", f"--basetemp={basetemp}", "--cni-plugin", str(self.plugin),
                "--report-json", str(report), *self.options]
        if self.deviations:
            argv += ["--expect-deviations", str(self.deviations)]
        return argv


def reference_run(name: str, hook: str, *options: str) -> HarnessRun:
    """A Debian reference plugin at every version, judged against expected/<name>.json."""
    return HarnessRun(
        REFERENCE_DIR / name,
        ("--versions", ALL_VERSIONS, "--remove-resources-hook", f"{HOOKS}:{hook}", *FEW_PARALLEL, *options),
        EXPECTED / f"{name}.json",
    )


PTP_CONFIG = {
    "ipMasq": False,
    "ipam": {"type": "host-local", "dataDir": "{tmpdir}/ipam",
             "ranges": [[{"subnet": "10.251.0.0/24"}], [{"subnet": "fd00:251::/64"}]]},
}
BANDWIDTH_CONFIG = {"ingressRate": 8_000_000, "ingressBurst": 100_000, "egressRate": 8_000_000, "egressBurst": 100_000}
# portmap's known CHECK bug shows on IPv4-only pods with a port mapping (CNI-CHECKLIST).
PORTMAP_CONFIG = {
    "capabilities": {"portMappings": True},
    "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
}
IPV4_ONLY_MAIN = {"ipam": {"type": "host-local", "dataDir": "{tmpdir}/host-local",
                           "ranges": [[{"subnet": "10.252.0.0/24"}]]}}
TUNING_CONFIG = {"mtu": 1400, "sysctl": {"net.core.somaxconn": "512"}, "dataDir": "{tmpdir}/tuning"}

# In start order, longest first.
RUNS: dict[str, HarnessRun] = {
    # flock-anycast pays ~1 s of CPU per ADD/CHECK/DEL exec (imports), so every check runs at
    # 1.1.0 and the older versions get the checks whose behaviour depends on the version.
    "flock-anycast": HarnessRun(FLOCK_PLUGIN, ("--versions", "1.1.0", *FLOCK_OPTIONS)),
    "flock-anycast-older-versions": HarnessRun(
        FLOCK_PLUGIN, ("--versions", "0.3.0,0.3.1,0.4.0,1.0.0", "--checks", VERSION_SENSITIVE_CHECKS, *FLOCK_OPTIONS)
    ),
    # The frozen binary starts fast enough for every check at every version.
    "flock-anycast-frozen": HarnessRun(FLOCK_FROZEN, ("--versions", ALL_VERSIONS, *FLOCK_OPTIONS)),
    # The sample plugin is a main plugin with empty ips: 0.3.0, 0.4.0 and 1.1.0 take
    # every version-dependent path of the harness (no CHECK; CHECK and prevResult on DEL; GC, STATUS).
    "sample": HarnessRun(HERE / "sample" / "state_file_plugin.py", ("--versions", SAMPLE_VERSIONS, *SAMPLE_OPTIONS)),
    "bandwidth": reference_run(
        "bandwidth", "remove_bandwidth_qdiscs", "--chained", "--cni-config-extra", json.dumps(BANDWIDTH_CONFIG)
    ),
    "tuning": reference_run(
        "tuning", "revert_tuning_mtu", "--chained", "--cni-config-extra", json.dumps(TUNING_CONFIG)
    ),
    "portmap": HarnessRun(
        REFERENCE_DIR / "portmap",
        ("--chained", "--versions", ALL_VERSIONS, *FEW_PARALLEL, "--cni-config-extra", json.dumps(PORTMAP_CONFIG),
         "--chain-main-config", json.dumps(IPV4_ONLY_MAIN)),
        EXPECTED / "portmap.json",
    ),
    "ptp": reference_run("ptp", "remove_pod_interface", "--cni-config-extra", json.dumps(PTP_CONFIG)),
    "loopback": reference_run("loopback", "set_loopback_down"),
    "error-on-stderr": HarnessRun(HERE / "broken" / "error_on_stderr", ("--versions", "1.1.0", *SAMPLE_OPTIONS)),
    "second-del-fails": HarnessRun(HERE / "broken" / "second_del_fails", ("--versions", "0.3.1", *SAMPLE_OPTIONS)),
}


@dataclass
class FinishedRun:
    returncode: int
    output: str
    report: dict[str, Any]
    leftover_namespaces: list[str]

    def cells(self) -> dict[tuple[str, str], dict[str, str]]:
        return {
            (check["id"], version): outcome
            for check in self.report["checks"]
            for version, outcome in check["results"].items()
        }

    def statuses(self, *wanted: str) -> dict[tuple[str, str], str]:
        """Cells whose status is one of ``wanted``, with their reasons."""
        return {cell: outcome["reason"] for cell, outcome in self.cells().items() if outcome["status"] in wanted}

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class HarnessRuns:
    """Runs the harness subprocesses, a few at a time, longest first; tests wait for their own.

    A few at once keeps both cores busy while the rest of the time goes to
    the kernel creating namespaces, which many concurrent runs only slow down.
    """

    def __init__(self, names: list[str], workdirs: dict[str, Path]) -> None:
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=CONCURRENT_RUNS, thread_name_prefix="harness-run")
        self._skips = {name: flock_unusable_reason() for name in names if RUNS[name].plugin == FLOCK_PLUGIN}
        self._futures: dict[str, Future[FinishedRun]] = {
            name: self._pool.submit(self._run, name, workdirs[name]) for name in names if not self._skips.get(name)
        }

    def _run(self, name: str, workdir: Path) -> FinishedRun:
        report, log = workdir / "report.json", workdir / "pytest.log"
        with self._lock:
            if self._closed:
                raise RuntimeError("session ended before the run started")
            with open(log, "wb") as stream:
                process = subprocess.Popen(
                    RUNS[name].argv(report, workdir / "basetemp"), cwd=REPO_ROOT, stdout=stream,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            self._processes[name] = process
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"harness run {name} did not finish within {RUN_TIMEOUT:.0f}s; log: {log}") from None
        output = log.read_text(errors="replace")
        if not report.exists():
            raise RuntimeError(f"harness run {name} wrote no JSON report (exit {returncode}):\n{output[-3000:]}")
        session_prefix = f"{TEST_PREFIX}-cni{process.pid}"
        return FinishedRun(
            returncode,
            output,
            json.loads(report.read_text()),
            [namespace for namespace in list_lab_namespaces() if namespace.startswith(session_prefix)],
        )

    def __getitem__(self, name: str) -> FinishedRun:
        if self._skips.get(name):
            pytest.skip(self._skips[name])
        return self._futures[name].result()

    def close(self) -> None:
        """Kill runs still going (the session was interrupted), by the PIDs we started."""
        with self._lock:
            self._closed = True
            for process in self._processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
        self._pool.shutdown(wait=True, cancel_futures=True)


def flock_unusable_reason() -> str:
    """Why the flock-anycast entry point cannot be judged yet, or "" when it answers VERSION."""
    if not os.access(FLOCK_PLUGIN, os.X_OK):
        return f"{FLOCK_PLUGIN} not installed (run `pip install -e .`)"
    probe = subprocess.run(
        [str(FLOCK_PLUGIN)], input=b'{"cniVersion": "1.1.0"}', env={"CNI_COMMAND": "VERSION", "PATH": os.defpath},
        capture_output=True, timeout=30,
    )
    try:
        answer = json.loads(probe.stdout)
        if probe.returncode == 0 and isinstance(answer.get("supportedVersions"), list):
            return ""
    except (json.JSONDecodeError, AttributeError):
        pass
    last_line = (probe.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return f"{FLOCK_PLUGIN} does not answer VERSION yet (exit {probe.returncode}): {last_line}"


@pytest.fixture(scope="session", autouse=True)
def not_inside_a_harness_run(request: pytest.FixtureRequest) -> None:
    """Autouse, session scope: decided before any run is started."""
    if request.config.getoption("cni_plugin", default=None):
        pytest.skip("the validation runs the harness itself: run it without --cni-plugin")


@pytest.fixture(scope="session")
def harness_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarnessRuns]:
    """Start every run a selected test needs; each test waits for its own."""
    selected = {
        item.callspec.params["run_name"]
        for item in request.session.items
        if hasattr(item, "callspec") and "run_name" in item.callspec.params
    }
    names = [name for name in RUNS if name in selected]
    runs = HarnessRuns(names, {name: tmp_path_factory.mktemp(f"harness-{name}") for name in names})
    try:
        yield runs
    finally:
        runs.close()


def expected_cells(run: HarnessRun, finished: FinishedRun) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Cells the deviations file says must fail, and cells it allows to fail (intermittent entries)."""
    assert run.deviations is not None
    entries = json.loads(run.deviations.read_text())["deviations"]
    required: set[tuple[str, str]] = set()
    allowed: set[tuple[str, str]] = set()
    for (check_id, version), outcome in finished.cells().items():
        for entry in entries:
            if entry["check"] not in ("*", check_id) or version not in entry.get("versions", SPEC_VERSIONS):
                continue
            if outcome["status"] == "skip" and entry["check"] == "*":
                continue
            (allowed if entry.get("intermittent") else required).add((check_id, version))
    return required, allowed | required


def assert_clean(finished: FinishedRun) -> None:
    assert finished.leftover_namespaces == [], f"namespaces left behind: {finished.leftover_namespaces}"
    errors = finished.statuses("error")
    assert not errors, f"harness errors: {errors}\n{finished.tail()}"


def assert_complete(finished: FinishedRun, versions: tuple[str, ...]) -> None:
    """Every check has an outcome at every version asked for: nothing silently missing."""
    missing = [
        (check["id"], version)
        for check in finished.report["checks"]
        for version in versions
        if version not in check["results"]
    ]
    assert finished.report["checks"], "the report lists no checks"
    assert not missing, f"no outcome for {missing}"


@pytest.mark.parametrize("run_name", ["loopback", "ptp", "bandwidth", "tuning", "portmap"])
def test_reference_plugin_deviations_detected_and_nothing_else(harness_runs: HarnessRuns, run_name: str) -> None:
    run = RUNS[run_name]
    finished = harness_runs[run_name]
    assert_clean(finished)
    assert_complete(finished, SPEC_VERSIONS)
    required, allowed = expected_cells(run, finished)
    assert required, "the deviations file covers no cell"
    cells = finished.cells()
    undetected = {cell: cells[cell] for cell in required if cells[cell]["status"] != "deviation"}
    assert not undetected, f"known deviations not detected: {undetected}\n{finished.tail()}"
    unexpected = {
        cell: outcome for cell, outcome in cells.items()
        if outcome["status"] not in ("pass", "skip") and not (cell in allowed and outcome["status"] == "deviation")
    }
    assert not unexpected, f"checks failing beyond the known deviations: {unexpected}\n{finished.tail()}"
    passed = finished.statuses("pass")
    assert len(passed) >= 40, f"only {len(passed)} cells passed: {finished.tail()}"
    assert finished.returncode == 0, finished.tail()


@pytest.mark.parametrize("run_name", ["sample"])
def test_sample_plugin_passes_every_check_at_every_version(harness_runs: HarnessRuns, run_name: str) -> None:
    finished = harness_runs[run_name]
    assert_clean(finished)
    assert_complete(finished, tuple(SAMPLE_VERSIONS.split(",")))
    problems = finished.statuses("fail", "deviation", "undetected")
    assert not problems, f"a spec-following plugin fails: {problems}\n{finished.tail()}"
    not_applicable = {cell: reason for cell, reason in finished.statuses("skip").items()
                      if not reason.startswith("not applicable")}
    assert not not_applicable, f"checks skipped for another reason than applicability: {not_applicable}"
    for cell in [("gc-valid-attachments", "1.1.0"), ("gc-legacy-attachments-key", "1.1.0"),
                 ("status-ready", "1.1.0"), ("check-detects-removed-resources", "0.4.0"),
                 ("check-gated", "0.3.0"), ("parallel-add", "1.1.0")]:
        assert cell in finished.statuses("pass"), f"{cell} did not pass"
    assert finished.returncode == 0, finished.tail()


@pytest.mark.parametrize("run_name", ["error-on-stderr"])
def test_error_on_stderr_is_caught_by_the_error_checks(harness_runs: HarnessRuns, run_name: str) -> None:
    finished = harness_runs[run_name]
    assert_clean(finished)
    failures = finished.statuses("fail")
    reason = failures.get(("error-json-shape", "1.1.0"), "")
    assert "stderr" in reason, f"error-json-shape does not name the fault: {reason!r}"
    blamed_elsewhere = {cell: reason for cell, reason in failures.items() if "stderr" not in reason}
    assert not blamed_elsewhere, f"failures not caused by the stderr fault: {blamed_elsewhere}"
    for check_id in ("add-result-shape", "del-idempotent", "check-after-add", "parallel-add", "version-output",
                     "gc-valid-attachments", "status-ready"):
        assert (check_id, "1.1.0") in finished.statuses("pass"), f"{check_id} should pass: no error involved"
    assert finished.returncode != 0


@pytest.mark.parametrize("run_name", ["second-del-fails"])
def test_second_del_failing_is_caught_by_the_del_checks(harness_runs: HarnessRuns, run_name: str) -> None:
    finished = harness_runs[run_name]
    assert_clean(finished)
    failures = finished.statuses("fail")
    reason = failures.get(("del-idempotent", "0.3.1"), "")
    assert "second DEL" in reason, f"del-idempotent does not name the fault: {reason!r}"
    other_checks = {check_id for check_id, _ in failures} - {"del-idempotent", "del-never-added"}
    assert not other_checks, f"checks failing for no reason of this fault: {other_checks}"
    assert finished.returncode != 0


@pytest.mark.parametrize("run_name", ["flock-anycast", "flock-anycast-older-versions", "flock-anycast-frozen"])
def test_flock_anycast_passes_every_check(harness_runs: HarnessRuns, run_name: str) -> None:
    if run_name.endswith("frozen") and not os.access(FLOCK_FROZEN, os.X_OK):
        if os.environ.get("FLOCK_REQUIRE_FROZEN") == "1":
            pytest.fail(f"frozen binary {FLOCK_FROZEN} missing")
        pytest.skip(f"frozen binary not built at {FLOCK_FROZEN} (run make build)")
    finished = harness_runs[run_name]
    assert_clean(finished)
    assert_complete(finished, tuple(finished.report["versions"]))
    problems = finished.statuses("fail", "deviation", "undetected")
    assert not problems, f"flock-anycast deviates from the spec: {problems}\n{finished.tail()}"
    not_applicable = {cell: reason for cell, reason in finished.statuses("skip").items()
                      if not reason.startswith("not applicable")}
    assert not not_applicable, f"checks not run: {not_applicable}"
    assert finished.returncode == 0, finished.tail()


def test_flock_anycast_runs_cover_every_version() -> None:
    covered = set()
    for name in ("flock-anycast", "flock-anycast-older-versions"):
        options = RUNS[name].options
        covered.update(options[options.index("--versions") + 1].split(","))
    assert covered == set(SPEC_VERSIONS)


def run_synchronously(run: HarnessRun, workdir: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    report = workdir / "report.json"
    completed = subprocess.run(run.argv(report, workdir / "basetemp"), cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=RUN_TIMEOUT)
    return completed, json.loads(report.read_text()) if report.exists() else None


def test_expected_deviation_that_does_not_occur_fails_the_run(tmp_path: Path) -> None:
    """A deviations file is a claim the harness must confirm: one the plugin does not show is an error."""
    deviations = tmp_path / "deviations.json"
    deviations.write_text(json.dumps({"deviations": [{"check": "del-idempotent", "match": "second DEL"}]}))
    run = HarnessRun(HERE / "sample" / "state_file_plugin.py",
                     ("--versions", "1.0.0", "--checks", "del-idempotent,version-output", *SAMPLE_OPTIONS), deviations)
    completed, report = run_synchronously(run, tmp_path)
    assert report is not None, completed.stdout[-3000:]
    results = {check["id"]: check["results"]["1.0.0"] for check in report["checks"]}
    assert results["del-idempotent"]["status"] == "undetected", results
    assert results["version-output"]["status"] == "pass", results
    assert completed.returncode != 0


def test_deviations_file_naming_an_unknown_check_is_refused(tmp_path: Path) -> None:
    deviations = tmp_path / "deviations.json"
    deviations.write_text(json.dumps({"deviations": [{"check": "del-idempotnet", "match": "x"}]}))
    run = HarnessRun(HERE / "sample" / "state_file_plugin.py", SAMPLE_OPTIONS, deviations)
    completed, report = run_synchronously(run, tmp_path)
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown check 'del-idempotnet'" in completed.stderr
    assert report is None
