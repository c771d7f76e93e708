"""Start-up cost of ``flock-anycast`` per CNI call, next to Debian's Go ``loopback`` plugin.

Side by side in one run, on one throwaway setup (a host netns the plugins
run in, a pod netns they configure, a state directory pre-filled with
1,000 other allocations, one record file each, written through
``netconf.state``):

* Go ``loopback`` ADD and DEL (``/usr/lib/cni/loopback``): the floor a
  compiled plugin sets;
* ``python3 -I -S -c pass`` with the interpreter the builds embed: the floor
  for any Python plugin;
* the frozen binary (``build/dist/flock-anycast``): ADD, CHECK, DEL and
  VERSION with one anycast IPv6 and one IPv4 address and a synthetic
  ``prevResult``;
* the source entry point (the venv's console script): the same verbs;
* optionally ``--baseline PATH``, another build (e.g. an earlier frozen
  binary) with the same verbs, for a before/after in one run.

Every case runs ``--runs`` times (default 30), round-robin, so a burst of
load on the shared machine hits all of them alike. Each exec goes through
``lab.cni.exec_plugin`` and must succeed. Columns: median and p90
wall milliseconds from spawn to exit, the same as a multiple of the Go
``loopback`` median (DEL rows against loopback DEL, all others against
loopback ADD), and the minimum CPU milliseconds (user+sys of the child,
the least disturbed run: closest to the code's own cost on a busy machine).

Then 100 ADDs for distinct pods start at once (frozen build unless
``--concurrent-build source``): 100 container IDs spread over 10 pod
netns, each pod with its own anycast pair from the pools, so no two share
an address on one ``lo``. Reported: total wall time from the common start
to the last exit, failures (must be 0), and every allocation committed and
on ``lo``; then the 100 DELs, also at once, must leave the 1,000 others.
All 200 transactions of the ADDs still serialise on the state lock, but
each exec reads and writes only its own attachment's record file, so a
critical section is O(1) whatever the number of pods on the node (the
1,000 others are never read); on a small node the default ``lockTimeout``
(30 s) can still run out under this burst (code 11, which the kubelet
retries); ``--lock-timeout`` sets it for this phase (the stress test uses
60).

``--instructions`` also runs each flock case once under callgrind and
prints the instructions it executed (user space, following the frozen
bootloader's re-exec): a figure that does not depend on what else the
shared machine runs.

Targets (issue 4): frozen ADD and DEL median <= 20 ms; first step <= 60 ms.

Run as root from the repository: ``.venv/bin/python benchmarks/plugin_startup.py
[--runs 30] [--baseline PATH] [--lock-timeout S] [--concurrent-build frozen|source|none]
[--json] [--instructions]``. Exit status 1 only for wrong results, never for slow ones.
The plugin processes run inside the lab's host netns (this process enters it
for the measurement, so no ``nsenter`` sits between spawn and plugin); nothing
touches the root namespace. Namespaces and the temp state directory are
removed on exit, also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: benchmarks/plugin_startup.py
    sys.path.insert(0, REPO)

from pyroute2 import netns as pyroute2_netns  # noqa: E402

from lab.cni import Invocation, PluginRun, exec_plugin, reference_plugin  # noqa: E402
from lab.netns import Netns, create_netns, delete_netns  # noqa: E402
from lab.plugin import FROZEN_BINARY, SOURCE_BINARY  # noqa: E402
from netconf.state import StateStore  # noqa: E402
from netconf.values import Allocation, PodRef, utc_now  # noqa: E402

NETWORK = "benchnet"
POOLS = ["2001:db8:a::/48", "198.18.0.0/15"]
ANYCAST = "2001:db8:a::53,198.18.0.53"
OTHER_ALLOCATIONS = 1000
CONCURRENT_PODS = 100
CONCURRENT_NETNS = 10
TARGET_MS = 20.0
FIRST_STEP_MS = 60.0
TRY_AGAIN = 11  # CNI error code: the runtime retries


@dataclass
class Case:
    """One row: the same exec every round, through ``exec_plugin`` (or ``execute``)."""

    name: str
    binary: str
    invocation: Invocation
    config: dict[str, Any] | bytes
    reference: str  # the Go loopback row this one is compared with
    expect_stdout: bool = True
    # For a command that is not a CNI plugin (python -c pass): same plumbing, no CNI checks.
    execute: Callable[[], PluginRun] | None = None
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def run_once(self) -> PluginRun:
        # Children are waited for one at a time, so the RUSAGE_CHILDREN
        # delta is this child's CPU time.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        run = self.execute() if self.execute else exec_plugin(self.binary, self.invocation, self.config)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run.returncode != 0:
            raise SystemExit(f"{self.name}: exit {run.returncode}: {run.stdout} {run.stderr}")
        if self.expect_stdout != bool(run.stdout.strip()):
            raise SystemExit(f"{self.name}: unexpected stdout {run.stdout!r}")
        self.wall_ms.append(elapsed * 1000)
        self.cpu_ms.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        return run

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.wall_ms)
        return {
            "median_ms": statistics.median(ordered),
            "p90_ms": ordered[max(0, -(-len(ordered) * 9 // 10) - 1)],  # nearest rank
            "min_cpu_ms": min(self.cpu_ms),
            "runs": len(ordered),
        }


def prev_result(pod: Netns) -> dict[str, Any]:
    """What ptp + host-local would hand on; the plugin does not check the IPs exist."""
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": pod.path}],
        "ips": [
            {"address": "10.244.0.5/24", "interface": 0},
            {"address": "fd00:244::5/64", "interface": 0},
        ],
    }


def flock_config(state_dir: str, pod: Netns, lock_timeout: float | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"pools": POOLS, "stateDir": state_dir}
    if lock_timeout is not None:
        block["lockTimeout"] = lock_timeout
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "flock-anycast",
        "flock": block,
        "prevResult": prev_result(pod),
    }


def fill_state(state_dir: str, count: int) -> None:
    """``count`` committed allocations of pods that are not in this lab."""
    now = utc_now()
    v6_base = int(ipaddress.ip_address("2001:db8:a:1::"))
    v4_base = int(ipaddress.ip_address("198.19.0.0"))
    with StateStore(state_dir).transaction() as transaction:
        for number in range(count):
            transaction.put(
                Allocation(
                    network=NETWORK,
                    container_id=f"other-{number:05d}",
                    ifname="eth0",
                    netns=f"/run/netns/gone-{number:05d}",
                    pod=PodRef(namespace="bench", name=f"other-{number}", uid=f"uid-{number}"),
                    anycast=(ipaddress.ip_address(v6_base + number), ipaddress.ip_address(v4_base + number)),
                    pod_ips=(
                        ipaddress.ip_address(f"10.245.{number // 250}.{number % 250 + 1}"),
                        ipaddress.ip_address(f"fd00:245::{number + 1:x}"),
                    ),
                    state="committed",
                    created_at=now,
                    updated_at=now,
                )
            )


def plugin_cases(label: str, binary: str, state_dir: str, pod: Netns) -> list[Case]:
    config = flock_config(state_dir, pod)
    container = f"bench-{label}"

    def invocation(command: str) -> Invocation:
        args = f"IgnoreUnknown=1;FLOCK_ANYCAST={ANYCAST}"
        return Invocation(command=command, container_id=container, netns=pod.path, args=args)

    return [
        Case(f"{label} ADD", binary, invocation("ADD"), config, "loopback ADD"),
        Case(f"{label} CHECK", binary, invocation("CHECK"), config, "loopback ADD", expect_stdout=False),
        Case(f"{label} DEL", binary, invocation("DEL"), config, "loopback DEL", expect_stdout=False),
        Case(f"{label} VERSION", binary, Invocation(command="VERSION"), b'{"cniVersion": "1.0.0"}', "loopback ADD"),
    ]


def base_interpreter() -> str:
    """The real interpreter behind the venv (``python3`` on PATH may be a pyenv shim script)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def measure(cases: list[Case], runs: int) -> None:
    for number in range(runs):
        for case in cases:
            case.run_once()
        if number == 0:
            print(f"  first round ok ({len(cases)} cases)", file=sys.stderr)


def concurrent_adds(binary: str, state_dir: str, pods: list[Netns], lock_timeout: float | None) -> dict[str, Any]:
    """CONCURRENT_PODS ADDs released together, then as many DELs; checks state and ``lo``."""
    jobs = []
    for number in range(CONCURRENT_PODS):
        pod = pods[number % len(pods)]
        anycast = f"2001:db8:a:2::{number + 1:x},198.18.2.{number + 1}"
        jobs.append((f"par-{number:03d}", pod, anycast))

    def launch(command: str) -> tuple[float, list[tuple[str, PluginRun]]]:
        barrier = threading.Barrier(len(jobs) + 1)

        def one(job) -> tuple[str, PluginRun]:
            container, pod, anycast = job
            invocation = Invocation(command=command, container_id=container, netns=pod.path, args=f"FLOCK_ANYCAST={anycast}")
            barrier.wait()
            return container, exec_plugin(binary, invocation, flock_config(state_dir, pod, lock_timeout), timeout=300)

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            barrier.wait()
            start = time.perf_counter()
            results = [future.result() for future in futures]
            return time.perf_counter() - start, results

    add_seconds, added = launch("ADD")
    add_failures = [(container, run.stdout.strip() or run.stderr.strip()) for container, run in added if run.returncode != 0]
    add_busy = sum(1 for _, run in added if run.returncode != 0 and _error_code(run) == TRY_AGAIN)
    allocations = StateStore(state_dir).read().allocations
    ours = {item.container_id: item for item in allocations if item.container_id.startswith("par-")}
    committed = sum(1 for item in ours.values() if item.state == "committed")
    on_lo = 0
    for pod in pods:
        with pod.iproute() as ipr:
            present = {message.get("IFA_ADDRESS") for message in ipr.get_addr(index=ipr.link_lookup(ifname="lo")[0])}
        for _container, job_pod, anycast in jobs:
            if job_pod == pod and set(anycast.split(",")) <= present:
                on_lo += 1
    del_seconds, deleted = launch("DEL")
    del_failures = [(container, run.stdout.strip() or run.stderr.strip()) for container, run in deleted if run.returncode != 0]
    del_busy = sum(1 for _, run in deleted if run.returncode != 0 and _error_code(run) == TRY_AGAIN)
    left = StateStore(state_dir).read().allocations
    return {
        "pods": len(jobs),
        "netns": len(pods),
        "add_wall_s": add_seconds,
        "add_failures": len(add_failures),
        "add_failures_try_again": add_busy,
        "add_failure_samples": add_failures[:5],
        "committed": committed,
        "on_lo": on_lo,
        "del_wall_s": del_seconds,
        "del_failures": len(del_failures),
        "del_failures_try_again": del_busy,
        "del_failure_samples": del_failures[:5],
        "allocations_after_del": len(left),
    }


def print_table(cases: list[Case], reference: dict[str, float]) -> None:
    print(f"{'case':<34} {'median ms':>10} {'p90 ms':>9} {'x loopback':>11} {'min cpu ms':>11}")
    for case in cases:
        row = case.summary()
        ratio = row["median_ms"] / reference[case.reference]
        print(f"{case.name:<34} {row['median_ms']:>10.1f} {row['p90_ms']:>9.1f} {ratio:>10.1f}x {row['min_cpu_ms']:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="execs per case (default 30)")
    parser.add_argument("--frozen", default=FROZEN_BINARY, help="frozen binary (default build/dist/flock-anycast)")
    parser.add_argument("--source", default=SOURCE_BINARY, help="source entry point (default the venv's console script)")
    parser.add_argument(
        "--baseline", default=None,
        help="another build to measure in the same run (rows 'baseline ...'), e.g. an earlier frozen binary",
    )
    parser.add_argument("--concurrent-build", choices=("frozen", "source", "none"), default="frozen")
    parser.add_argument(
        "--lock-timeout", type=float, default=None,
        help="flock.lockTimeout for the concurrent phase (default: the plugin's own, 30 s)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON document")
    parser.add_argument(
        "--instructions", action="store_true",
        help="also count the instructions of one exec of each flock case under callgrind (needs valgrind)",
    )
    args = parser.parse_args(argv)
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    builds = {"frozen": args.frozen, "source": args.source}
    if args.baseline:
        builds["baseline"] = args.baseline
    for label, binary in builds.items():
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{label} binary {binary} not found (make build / make venv)")

    # SIGTERM (e.g. a CI timeout) unwinds through the finally below. Only in
    # this process: pyroute2 forks helpers for its netns work and stops them
    # with SIGTERM, and a forked copy must not run our clean-up.
    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    namespaces: list[Netns] = []
    state_dir = tempfile.mkdtemp(prefix="flock-bench-")
    entered = False
    try:
        host = create_netns("bhost", forwarding=True)
        namespaces.append(host)
        pod = create_netns("bpod")
        namespaces.append(pod)
        concurrent_pods = []
        if args.concurrent_build != "none":
            for _ in range(CONCURRENT_NETNS):
                concurrent_pods.append(create_netns("bpar"))
                namespaces.append(concurrent_pods[-1])
        fill_state(state_dir, OTHER_ALLOCATIONS)

        go_config = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}
        loopback = reference_plugin("loopback")
        # DEL first: loopback DEL takes lo down, its ADD (and the runtime's,
        # before ours in real life) brings it up again for the rows after.
        python = base_interpreter()
        python_pass = Invocation(command="VERSION")
        cases = [
            Case("loopback DEL (Go)", loopback, Invocation(command="DEL", container_id="bench-go", netns=pod.path),
                 go_config, "loopback DEL", expect_stdout=False),
            Case("loopback ADD (Go)", loopback, Invocation(command="ADD", container_id="bench-go", netns=pod.path),
                 go_config, "loopback ADD"),
            Case(
                "python3 -I -S -c pass", python, python_pass, b"", "loopback ADD", expect_stdout=False,
                execute=lambda: _exec_argv([python, "-I", "-S", "-c", "pass"], python_pass),
            ),
        ]
        for label, binary in builds.items():
            cases += plugin_cases(label, binary, state_dir, pod)

        # The plugins live in the node's namespace, as under a runtime: enter
        # the lab's host netns (this single-threaded script, briefly) so the
        # children inherit it without an nsenter in between.
        pyroute2_netns.pushns(host.path)
        entered = True
        print(f"measuring {len(cases)} cases x {args.runs} runs, state with {OTHER_ALLOCATIONS} allocations", file=sys.stderr)
        measure(cases, args.runs)
        instructions = None
        if args.instructions:
            instructions = count_instructions([case for case in cases if case.name.split()[0] in builds])
        concurrent = None
        if args.concurrent_build != "none":
            print(f"{CONCURRENT_PODS} concurrent ADDs then DELs ({args.concurrent_build})", file=sys.stderr)
            concurrent = concurrent_adds(builds[args.concurrent_build], state_dir, concurrent_pods, args.lock_timeout)
        pyroute2_netns.popns()
        entered = False
    finally:
        if entered:
            pyroute2_netns.popns()
        for namespace in reversed(namespaces):
            delete_netns(namespace)
        shutil.rmtree(state_dir, ignore_errors=True)

    reference = {
        name: next(c for c in cases if c.name.startswith(name)).summary()["median_ms"]
        for name in ("loopback ADD", "loopback DEL")
    }
    print()
    print(f"flock-anycast start-up, {args.runs} runs per case, state with {OTHER_ALLOCATIONS} other allocations")
    print(f"frozen: {os.path.realpath(args.frozen)}   source: {args.source}   python: {base_interpreter()}")
    print_table(cases, reference)
    frozen = {case.name: case.summary()["median_ms"] for case in cases if case.name.startswith("frozen")}
    for verb in ("ADD", "DEL"):
        value = frozen[f"frozen {verb}"]
        verdict = "meets" if value <= TARGET_MS else ("meets the first step" if value <= FIRST_STEP_MS else "misses")
        print(f"frozen {verb} median {value:.1f} ms: {verdict} (target {TARGET_MS:g} ms, first step {FIRST_STEP_MS:g} ms)")
    if instructions is not None:
        print()
        print("instructions per exec (callgrind, user space, one run each; independent of load):")
        for name, mebi in instructions.items():
            print(f"  {name:30s} {mebi:8.1f} Mi")
    if concurrent is not None:
        print()
        lock = f"lockTimeout {args.lock_timeout:g} s" if args.lock_timeout is not None else "default lockTimeout (30 s)"
        print(
            f"{concurrent['pods']} ADDs at once over {concurrent['netns']} pod netns ({args.concurrent_build}, {lock}): "
            f"{concurrent['add_wall_s']:.2f} s wall, {concurrent['add_failures']} failures "
            f"({concurrent['add_failures_try_again']} of them code 11, lock busy), "
            f"{concurrent['committed']} committed, {concurrent['on_lo']} with both addresses on lo"
        )
        print(
            f"{concurrent['pods']} DELs at once: {concurrent['del_wall_s']:.2f} s wall, "
            f"{concurrent['del_failures']} failures ({concurrent['del_failures_try_again']} code 11), "
            f"{concurrent['allocations_after_del']} allocations left "
            f"(expected {OTHER_ALLOCATIONS})"
        )
        for container, error in concurrent["add_failure_samples"] + concurrent["del_failure_samples"]:
            print(f"  {container}: {error[:200]}")
    if args.json:
        print(json.dumps({
            "runs": args.runs,
            "other_allocations": OTHER_ALLOCATIONS,
            "cases": {case.name: case.summary() for case in cases},
            "reference_ms": reference,
            "concurrent": concurrent,
            "lock_timeout": args.lock_timeout,
            "instructions_mi": instructions,
        }, indent=1))
    # Slow is not a failure here (this is a benchmark); wrong is. Lock
    # timeouts (code 11) are the runtime's to retry; anything else, an ADD
    # that succeeded without its state or addresses, or a DEL that left
    # something behind is a bug.
    broken = concurrent is not None and (
        concurrent["add_failures"] != concurrent["add_failures_try_again"]
        or concurrent["committed"] != concurrent["pods"] - concurrent["add_failures"]
        or concurrent["on_lo"] != concurrent["committed"]
        or concurrent["del_failures"] != concurrent["del_failures_try_again"]
        or (not concurrent["del_failures"] and concurrent["allocations_after_del"] != OTHER_ALLOCATIONS)
    )
    return 1 if broken else 0


def count_instructions(cases: list[Case]) -> dict[str, float]:
    """Mi instructions of one exec of each case, in list order (ADD before CHECK and DEL).

    ``--trace-children=yes`` follows the frozen bootloader's re-exec; the
    "Collected" counts of every image are summed.
    """
    import re
    import subprocess

    counts = {}
    for case in cases:
        config = case.config if isinstance(case.config, bytes) else json.dumps(case.config).encode()
        completed = subprocess.run(
            ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null", case.binary],
            input=config, env=case.invocation.environ(), capture_output=True, timeout=300,
        )
        if completed.returncode != 0:
            raise SystemExit(f"{case.name} under callgrind: exit {completed.returncode}: {completed.stdout!r}")
        collected = [int(number) for number in re.findall(rb"Collected : (\d+)", completed.stderr)]
        counts[case.name] = sum(collected) / (1 << 20)
    return counts


def _error_code(run: PluginRun) -> int | None:
    try:
        return int(json.loads(run.stdout)["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _exec_argv(argv: list[str], invocation: Invocation) -> PluginRun:
    """What ``exec_plugin`` does, for an argv that is not a plugin binary."""
    import subprocess

    completed = subprocess.run(argv, input=b"", env=invocation.environ(), capture_output=True, timeout=30)
    return PluginRun(completed.returncode, completed.stdout.decode(), completed.stderr.decode())


if __name__ == "__main__":
    raise SystemExit(main())
