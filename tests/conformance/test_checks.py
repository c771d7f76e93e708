"""The conformance checks, one test function per check, each run at every spec version.

Collected only with ``--cni-plugin`` (see plugin.py). Each check names the
SPEC.md 1.1.0 section (or CONVENTIONS / CNI-CHECKLIST rule) it comes from,
and fails with :class:`Deviation` saying what the plugin did instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from lab.netns import Netns, delete_netns
from tests.conformance.execution import PluginCall
from tests.conformance.registry import CheckContext, check, unsupported_version_reason
from tests.conformance.results import add_result_problems, prev_result_problems
from tests.conformance.runtime import Attachment, synthetic_prev_result
from tests.conformance.spec import (
    CHECK_SINCE,
    DECODE_FAILURE,
    GC_SINCE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    LEGACY_ATTACHMENTS_KEY,
    REQUIRED_ENV,
    STATUS_SINCE,
    VALID_ATTACHMENTS_KEY,
    Deviation,
    at_least,
)

UNSUPPORTED_VERSION = "9.9.9"

# SPEC §2 "Parameters": must start alphanumeric, then alphanumerics, "_", "." or "-".
INVALID_CONTAINER_IDS = ("-leading-dash", "_leading-underscore", "has/slash", "caf\u00e9")
# spec-v0.4.0 ADD parameters: not empty, not "." or "..", under 16 bytes, no "/", ":" or whitespace.
INVALID_IFNAMES = ("abcdefghijklmnop", "\u00e9" * 8, "..", "eth/0", "eth:0", "eth 0")
LONGEST_IFNAME = "abcdefghijklmno"
NEW_CONTAINER = "<new container ID>"


def collect(failures: list[str], label: str, action: Callable[[], object]) -> None:
    """Run one probe of a multi-probe check, keeping its deviation instead of stopping."""
    try:
        action()
    except Deviation as exc:
        failures.append(f"{label}: {exc}")


def raise_collected(failures: list[str], total: int, what: str) -> None:
    if failures:
        shown = " | ".join(failures[:3]) + (f" | (+{len(failures) - 3} more)" if len(failures) > 3 else "")
        raise Deviation(f"{len(failures)} of {total} {what}: {shown}")


def rejection(conformance: CheckContext, command: str | None, container_id: str = NEW_CONTAINER,
              ifname: str = "eth0", config_version: str | None = None) -> tuple[dict, dict]:
    """Environment and config for a request the plugin must refuse before touching any netns."""
    runtime = conformance.runtime
    netns, config = runtime.rejection_request(ifname)
    if command == "CHECK" and "prevResult" not in config:
        config["prevResult"] = synthetic_prev_result(conformance.version, netns, ifname)
    if config_version:
        config["cniVersion"] = config_version
    if container_id == NEW_CONTAINER:
        container_id = runtime.new_container_id("reject")
    environ = runtime.environ(command, container_id=container_id, netns=netns, ifname=ifname,
                              args=runtime.cni_args(container_id))
    return environ, config


# --- VERSION -------------------------------------------------------------------------------


@check("version-output", "§2 VERSION; §5 Version",
       "VERSION exits 0 and prints cniVersion (the input's) and supportedVersions")
def test_version_output(conformance: CheckContext) -> None:
    runtime, version = conformance.runtime, conformance.version
    stdin = json.dumps({"cniVersion": version}).encode()
    variants = {
        "only CNI_COMMAND set": runtime.environ("VERSION", path=None),
        # libcni fills the other variables with "" and "dummy" for VERSION.
        "libcni's dummy variables": runtime.environ("VERSION", container_id="", netns="dummy", ifname="dummy",
                                                    args="", path="dummy"),
    }
    failures: list[str] = []
    for label, environ in variants.items():
        def probe(environ: dict = environ) -> None:
            call = runtime.invoke(environ, stdin)
            result = call.expect_result()
            if result.get("cniVersion") != version:
                raise Deviation(f"cniVersion is {result.get('cniVersion')!r}, the input's was {version!r}")
            supported = result.get("supportedVersions")
            if not (isinstance(supported, list) and supported and all(isinstance(v, str) for v in supported)):
                raise Deviation(f"supportedVersions is not a list of version strings: {call.describe()}")
        collect(failures, label, probe)
    raise_collected(failures, len(variants), "VERSION calls deviate")


@check("version-supported", "§2 VERSION", "supportedVersions lists the spec version")
def test_version_supported(conformance: CheckContext) -> None:
    probe = conformance.probe
    if probe.supported_versions is None:
        raise Deviation(f"VERSION gave no usable supportedVersions: {probe.failure}")
    if conformance.version not in probe.supported_versions:
        raise Deviation(unsupported_version_reason(conformance.version, probe))


# --- environment ---------------------------------------------------------------------------


@check("env-missing-command", "§2 Parameters; §5 Error 4", "no CNI_COMMAND: code 4 naming CNI_COMMAND")
def test_env_missing_command(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, None)
    conformance.runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT, ("CNI_COMMAND",))


@check("env-unknown-command", "§2 Parameters; §5 Error 4", "unknown CNI_COMMAND: code 4 naming CNI_COMMAND")
def test_env_unknown_command(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, "FROBNICATE")
    conformance.runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT, ("CNI_COMMAND",))


def expect_missing_env_named(conformance: CheckContext, command: str) -> None:
    """All of the verb's required variables but CNI_COMMAND unset: code 4 naming every one."""
    runtime = conformance.runtime
    _, config = rejection(conformance, command)
    if command == "GC":
        config[VALID_ATTACHMENTS_KEY] = []
    missing = tuple(name for name in REQUIRED_ENV[command] if name != "CNI_COMMAND")
    if "CNI_PATH" in missing:
        environ = runtime.environ(command, args="", path=None)
    else:
        environ = runtime.environ(command, args="")
    runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT, missing)


@check("env-required-add", "§2 ADD; §5 Error 4", "ADD without CONTAINERID, NETNS, IFNAME: code 4 naming all")
def test_env_required_add(conformance: CheckContext) -> None:
    expect_missing_env_named(conformance, "ADD")


@check("env-required-del", "§2 DEL; §5 Error 4", "DEL without CONTAINERID, IFNAME: code 4 naming both")
def test_env_required_del(conformance: CheckContext) -> None:
    expect_missing_env_named(conformance, "DEL")


@check("env-required-check", "§2 CHECK; §5 Error 4", "CHECK without CONTAINERID, NETNS, IFNAME: code 4 naming all",
       since=CHECK_SINCE)
def test_env_required_check(conformance: CheckContext) -> None:
    expect_missing_env_named(conformance, "CHECK")


@check("env-required-gc", "§2 GC; §5 Error 4",
       "GC without CNI_PATH (required for GC, unlike ADD/DEL/CHECK): code 4 naming CNI_PATH", since=GC_SINCE)
def test_env_required_gc(conformance: CheckContext) -> None:
    expect_missing_env_named(conformance, "GC")


@check("container-id-rules", "§2 Parameters (CNI_CONTAINERID); §5 Error 4",
       "container IDs outside ^[A-Za-z0-9][A-Za-z0-9_.-]*$ are refused with code 4")
def test_container_id_rules(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    probes = [("ADD", container_id) for container_id in INVALID_CONTAINER_IDS] + [("DEL", "has space")]
    failures: list[str] = []
    for command, container_id in probes:
        environ, config = rejection(conformance, command, container_id=container_id)
        collect(failures, f"{command} {container_id!r}",
                lambda environ=environ, config=config: runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT))
    raise_collected(failures, len(probes), "invalid container IDs not refused with code 4")


@check("ifname-rules", "§2 Parameters (CNI_IFNAME); §5 Error 4",
       "bad interface names are refused with code 4; a 15-byte name works")
def test_ifname_rules(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    failures: list[str] = []
    for ifname in INVALID_IFNAMES:
        environ, config = rejection(conformance, "ADD", ifname=ifname)
        collect(failures, f"ADD {ifname!r}",
                lambda environ=environ, config=config: runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT))
    collect(failures, f"ADD with the longest valid name {LONGEST_IFNAME!r}", lambda: runtime.add(LONGEST_IFNAME))
    raise_collected(failures, len(INVALID_IFNAMES) + 1, "interface-name probes deviate")


@check("env-invalid-value-named", "§5 Error 4",
       "a code-4 error for an invalid value names the variable (CNI_CONTAINERID, CNI_IFNAME)")
def test_env_invalid_value_named(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    probes = {"CNI_CONTAINERID": {"container_id": "-leading-dash"}, "CNI_IFNAME": {"ifname": "eth/0"}}
    failures: list[str] = []
    for variable, bad_value in probes.items():
        environ, config = rejection(conformance, "ADD", **bad_value)
        collect(failures, f"invalid {variable}",
                lambda environ=environ, config=config, variable=variable:
                    runtime.invoke(environ, config).expect_error_code(INVALID_ENVIRONMENT, (variable,)))
    raise_collected(failures, len(probes), "errors for invalid variables do not name them")


# --- configuration on stdin ----------------------------------------------------------------


@check("config-unreadable", "§5 Error 5", "stdin that cannot be read: code 5")
def test_config_unreadable(conformance: CheckContext) -> None:
    environ, _ = rejection(conformance, "ADD")
    call = conformance.runtime.invoke(environ, None, unreadable_stdin=True)
    call.expect_error_code(IO_FAILURE)


@check("config-not-json", "§5 Error 6", "stdin that is not JSON: code 6")
def test_config_not_json(conformance: CheckContext) -> None:
    environ, _ = rejection(conformance, "ADD")
    truncated = b'{"cniVersion": "%s", "name": "x", "type": ' % conformance.version.encode()
    conformance.runtime.invoke(environ, truncated).expect_error_code(DECODE_FAILURE)


@check("config-invalid", "§1 Configuration format; §5 Error 7", "config without the required 'name': code 7")
def test_config_invalid(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, "ADD")
    del config["name"]
    conformance.runtime.invoke(environ, config).expect_error_code(INVALID_CONFIG)


@check("config-unsupported-version", "§2 Parameters; §5 Error 1", f"cniVersion {UNSUPPORTED_VERSION}: code 1")
def test_config_unsupported_version(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, "ADD", config_version=UNSUPPORTED_VERSION)
    conformance.runtime.invoke(environ, config).expect_error_code(INCOMPATIBLE_VERSION)


@check("add-without-prevresult", "§3 Adding an attachment; §5 Error 7",
       "a chained ADD without prevResult: code 7", chained_only=True)
def test_add_without_prev_result(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, "ADD")
    config.pop("prevResult", None)
    conformance.runtime.invoke(environ, config).expect_error_code(INVALID_CONFIG)


# --- errors --------------------------------------------------------------------------------


@check("error-json-shape", "§2 Errors; §5 Error",
       "a failure exits non-zero with only {cniVersion (the config's), code, msg, details?} on stdout")
def test_error_json_shape(conformance: CheckContext) -> None:
    environ, config = rejection(conformance, "ADD", container_id="-invalid")
    call = conformance.runtime.invoke(environ, config)
    error = call.expect_error()
    problems = []
    if "cniVersion" not in error:
        problems.append("no cniVersion")
    elif error["cniVersion"] != conformance.version:
        problems.append(f"cniVersion is {error['cniVersion']!r}, the config's is {conformance.version!r}")
    if not isinstance(error.get("msg"), str) or not error.get("msg"):
        problems.append("msg missing or empty")
    if "details" in error and not isinstance(error["details"], str):
        problems.append("details is not a string")
    if problems:
        raise Deviation(f"error JSON: {'; '.join(problems)}: {call.describe()}")


# --- ADD -----------------------------------------------------------------------------------


@check("add-result-shape", "§5 ADD Success",
       "ADD prints a result in the config's version (ips[].version before 1.0.0, none from 1.0.0)")
def test_add_result_shape(conformance: CheckContext) -> None:
    attachment = conformance.runtime.add()
    problems = add_result_problems(attachment.result or {}, conformance.version, attachment.netns)
    if problems:
        raise Deviation(f"ADD result: {'; '.join(problems)}")


@check("add-result-matches-prevresult", "§2 ADD; §5 ADD Success",
       "a chained ADD outputs prevResult with its own changes only, ips in the same order", chained_only=True)
def test_add_result_matches_prev_result(conformance: CheckContext) -> None:
    attachment = conformance.runtime.add()
    problems = prev_result_problems(attachment.result or {}, attachment.prev_result or {})
    if problems:
        raise Deviation(f"ADD result vs prevResult: {'; '.join(problems)}")


# --- CHECK ---------------------------------------------------------------------------------


@check("check-gated", "§2 CHECK; §5 Error 1", "CHECK before spec 0.4.0: code 1", below=CHECK_SINCE)
def test_check_gated(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    runtime.check(attachment).expect_error_code(INCOMPATIBLE_VERSION)


@check("check-after-add", "§2 CHECK", "CHECK right after ADD exits 0 and prints nothing", since=CHECK_SINCE)
def test_check_after_add(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    runtime.check(attachment).expect_silent_success()


@check("check-detects-removed-resources", "§2 CHECK",
       "CHECK fails once the plugin's resources are removed (--remove-resources-hook)",
       since=CHECK_SINCE, needs_hook=True)
def test_check_detects_removed_resources(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    before = runtime.check(attachment)
    if before.returncode != 0:
        raise Deviation(f"inconclusive: CHECK already fails before the resources are removed: {before.describe()}")
    hook = conformance.settings.remove_resources_hook
    assert hook is not None
    hook(attachment)
    after = runtime.check(attachment)
    if after.returncode == 0:
        raise Deviation(f"CHECK still succeeds after the plugin's resources were removed: {after.describe()}")
    after.expect_error()


# --- DEL -----------------------------------------------------------------------------------


def expect_del_succeeds(call: PluginCall, which: str) -> None:
    try:
        call.expect_silent_success()
    except Deviation as exc:
        raise Deviation(f"{which}: {exc}") from None


@check("del-idempotent", "§2 DEL", "DEL twice: both exit 0 and print nothing")
def test_del_idempotent(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    expect_del_succeeds(runtime.delete(attachment), "first DEL")
    expect_del_succeeds(runtime.delete(attachment), "second DEL of the same attachment failed")


@check("del-netns-gone", "§2 DEL", "DEL after the pod's netns was deleted succeeds")
def test_del_netns_gone(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    delete_netns(Netns(os.path.basename(attachment.netns)))
    expect_del_succeeds(runtime.delete(attachment), "DEL with CNI_NETNS pointing at a deleted netns")


@check("del-empty-netns", "§2 DEL", 'DEL with CNI_NETNS="" succeeds')
def test_del_empty_netns(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    expect_del_succeeds(runtime.delete(attachment, netns=""), "DEL with empty CNI_NETNS")


@check("del-without-prevresult", "§2 DEL", "DEL without prevResult succeeds (0.3.x never sends one)")
def test_del_without_prev_result(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.add()
    expect_del_succeeds(runtime.delete(attachment, with_prev_result=False), "DEL without prevResult")


@check("del-never-added", "§3 Lifecycle & Ordering; §2 DEL",
       "DEL of an attachment whose ADD never ran succeeds (runtimes DEL after a failed ADD)")
def test_del_never_added(conformance: CheckContext) -> None:
    runtime = conformance.runtime
    attachment = runtime.prepare()
    expect_del_succeeds(runtime.delete(attachment, with_prev_result=False), "DEL of a never-added attachment")


# --- GC and STATUS -------------------------------------------------------------------------


@check("gc-gated", "§2 GC; §5 Error 1", "GC before spec 1.1.0: code 1", below=GC_SINCE)
def test_gc_gated(conformance: CheckContext) -> None:
    conformance.runtime.gc([]).expect_error_code(INCOMPATIBLE_VERSION)


def expect_gc_keeps_valid_and_collects_stale(conformance: CheckContext, key: str) -> None:
    """GC listing one of two attachments under ``key``: the listed one survives, the other goes.

    If the plugin ignored ``key`` it would see an empty list and collect both.
    """
    runtime = conformance.runtime
    kept, stale = runtime.add(role="kept"), runtime.add(role="stale")
    for attachment in (kept, stale):
        before = runtime.check(attachment)
        if before.returncode != 0:
            raise Deviation(f"inconclusive: CHECK fails before GC: {before.describe()}")
    gc = runtime.gc([kept], keys=(key,))
    expect_del_succeeds(gc, f"GC with {key}")
    after_kept: PluginCall = runtime.check(kept)
    if after_kept.returncode != 0:
        raise Deviation(
            f"GC removed an attachment listed in {key!r} (is the key read?): CHECK after GC: {after_kept.describe()}"
        )
    after_stale = runtime.check(stale)
    if after_stale.returncode == 0:
        raise Deviation(f"GC left the resources of an attachment missing from {key!r}: CHECK still succeeds")


@check("gc-valid-attachments", "§2 GC", f"GC keeps attachments listed in {VALID_ATTACHMENTS_KEY} and collects others",
       since=GC_SINCE)
def test_gc_valid_attachments(conformance: CheckContext) -> None:
    expect_gc_keeps_valid_and_collects_stale(conformance, VALID_ATTACHMENTS_KEY)


@check("gc-legacy-attachments-key", "§2 GC; libcni 1.2",
       f"GC also reads {LEGACY_ATTACHMENTS_KEY} (libcni sends both keys)", since=GC_SINCE)
def test_gc_legacy_attachments_key(conformance: CheckContext) -> None:
    expect_gc_keeps_valid_and_collects_stale(conformance, LEGACY_ATTACHMENTS_KEY)


@check("status-gated", "§2 STATUS; §5 Error 1", "STATUS before spec 1.1.0: code 1", below=STATUS_SINCE)
def test_status_gated(conformance: CheckContext) -> None:
    conformance.runtime.status().expect_error_code(INCOMPATIBLE_VERSION)


@check("status-ready", "§2 STATUS", "STATUS of a usable plugin exits 0 and prints nothing", since=STATUS_SINCE)
def test_status_ready(conformance: CheckContext) -> None:
    expect_del_succeeds(conformance.runtime.status(), "STATUS")


# --- concurrency ---------------------------------------------------------------------------


def own_addresses(result: dict) -> set[str]:
    return {ip.get("address") for ip in result.get("ips", []) if isinstance(ip, dict)}


@check("parallel-add", "§3 Lifecycle & Ordering",
       "ADDs for distinct containers at the same time all succeed with their own result; then CHECK, DEL")
def test_parallel_add(conformance: CheckContext) -> None:
    runtime, version = conformance.runtime, conformance.version
    count = conformance.settings.parallel_adds
    attachments: list[Attachment] = runtime.run_concurrently(count, lambda index: runtime.prepare(role="par"))
    calls = runtime.run_concurrently(count, lambda index: runtime.add_call(attachments[index]))
    failures: list[str] = []
    for index, (attachment, call) in enumerate(zip(attachments, calls, strict=True)):
        def judge(attachment: Attachment = attachment, call: PluginCall = call) -> None:
            result = call.expect_result()
            if attachment.prev_result is not None and own_addresses(result) != own_addresses(attachment.prev_result):
                raise Deviation(
                    f"result carries addresses {sorted(own_addresses(result))}, its own prevResult "
                    f"{sorted(own_addresses(attachment.prev_result))}: results crossed between containers"
                )
        collect(failures, f"ADD #{index}", judge)
    raise_collected(failures, count, "parallel ADDs deviate")
    if at_least(version, CHECK_SINCE):
        checks = runtime.run_concurrently(count, lambda index: runtime.check(attachments[index]))
        for index, call in enumerate(checks):
            collect(failures, f"CHECK #{index}", call.expect_silent_success)
        raise_collected(failures, count, "CHECKs after parallel ADDs fail")
    deletes = runtime.run_concurrently(count, lambda index: runtime.delete(attachments[index]))
    for index, call in enumerate(deletes):
        collect(failures, f"DEL #{index}", call.expect_silent_success)
    raise_collected(failures, count, "parallel DELs fail")
