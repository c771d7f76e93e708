"""flock-reconciler benchmark on the real lab (not a pass/fail test).

Measures, with real BIRD 2 on the node and FRR as the peer (lab/):

1. readiness flip → kernel route, and → prefix at the peer, p50/p99/max
   over N flips each way (Ready and NotReady), IPv6 and IPv4. The flip
   instant is the ``rename`` of the readiness file; the kernel side is
   timed by a netlink monitor in the node netns, the peer side by polling
   FRR's bgpd vty socket (~0.5 ms per query). drainDelay is 0 here, so the
   NotReady → route-removed figure is the pipeline alone.
2. cold start with 10,000 anycast prefixes (5,000 IPv6 + 5,000 IPv4 over
   four real ptp pods; their four record files are written directly with
   ``netconf.state``'s StateStore): time until all routes are programmed and until
   the peer has received all prefixes; the reconciler's peak RSS (VmHWM).
3. an idle resync at 10k prefixes: CPU time and pass duration per resync,
   and proof that it wrote nothing (no netlink route events, no BIRD reload).

Run as root: ``.venv/bin/python -m benchmarks.reconciler_bench [--flips 50]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lab.daemons import wait_until
from lab.topology import (
    NETWORK_NAME,
    POOLS,
    ROUTE_PROTOCOL,
    Lab,
    RouteMonitor,
    host_prefix,
)
from netconf.state import StateStore
from netconf.values import Allocation, PodRef, utc_now

FLIP6 = "2001:db8:a::53"
FLIP4 = "192.0.2.53"
COLD_PODS = 4
COLD_V6 = 5000
COLD_V4 = 5000
# Where the cold-start addresses come from; the reconciler routes only addresses of its pools.
COLD_POOLS = ["2001:db8:b::/64", "198.18.0.0/16"]
DEADLINE = 30.0
# The product's defaults (reconciler.node_config), not the lab's test-speed values:
# the figures are what an operator gets.
LOOP_SETTINGS = {"debounce": 0.05, "maxWait": 0.5}


@dataclass
class Row:
    name: str
    samples: list[float]  # seconds

    def cells(self) -> list[str]:
        if not self.samples:
            return [self.name, "0", "-", "-", "-"]
        ordered = sorted(self.samples)
        return [
            self.name,
            str(len(ordered)),
            _ms(statistics.median(ordered)),
            _ms(percentile(ordered, 99)),
            _ms(ordered[-1]),
        ]


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


# --------------------------------------------------------------------------
# 1. flips


def bench_flips(flips: int) -> list[Row]:
    rows = {
        name: Row(name, [])
        for name in (
            "Ready → kernel route (v6)",
            "Ready → prefix at peer (v6)",
            "Ready → kernel route (v4)",
            "Ready → prefix at peer (v4)",
            "NotReady → withdrawn at peer (v6)",
            "NotReady → route removed (v6)",
            "NotReady → withdrawn at peer (v4)",
            "NotReady → route removed (v4)",
        )
    }
    with Lab(drain_delay=0.0) as lab:
        pod = lab.add_pod("flip", (FLIP6, FLIP4), ready=False)
        lab.start_reconciler(resyncInterval=30, **LOOP_SETTINGS)
        assert lab.frr is not None
        with RouteMonitor(lab.node) as monitor:
            for _ in range(flips):
                for ready in (True, False):
                    seen = len(monitor.events)
                    lab.set_ready(pod, ready)
                    flipped = time.monotonic()
                    pending = {FLIP6: {"peer", "kernel"}, FLIP4: {"peer", "kernel"}}
                    deadline = flipped + DEADLINE
                    while any(pending.values()):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"flip to ready={ready} did not converge: {pending}")
                        for address, left in pending.items():
                            prefix = host_prefix(address)
                            family = "v6" if ":" in address else "v4"
                            if "peer" in left and lab.frr.has_prefix(prefix) == ready:
                                left.discard("peer")
                                name = (
                                    f"Ready → prefix at peer ({family})"
                                    if ready
                                    else f"NotReady → withdrawn at peer ({family})"
                                )
                                rows[name].samples.append(time.monotonic() - flipped)
                            if "kernel" in left:
                                wanted = "RTM_NEWROUTE" if ready else "RTM_DELROUTE"
                                events = [
                                    e
                                    for e in monitor.events[seen:]
                                    if e.prefix == prefix and e.protocol == ROUTE_PROTOCOL and e.event == wanted
                                ]
                                if events:
                                    left.discard("kernel")
                                    name = (
                                        f"Ready → kernel route ({family})"
                                        if ready
                                        else f"NotReady → route removed ({family})"
                                    )
                                    rows[name].samples.append(events[0].at - flipped)
    return list(rows.values())


# --------------------------------------------------------------------------
# 2 + 3. cold start at 10k, idle resync


def write_cold_state(lab: Lab) -> dict[str, int]:
    """Four ptp pods; 10k anycast addresses spread over them, written straight to their state records."""
    pods = [lab.add_pod(f"cold{i}", chain=("ptp",)) for i in range(COLD_PODS)]
    v6_base = ipaddress.IPv6Address("2001:db8:b::")
    v4_base = ipaddress.IPv4Address("198.18.0.0")
    addresses = [str(v6_base + i + 1) for i in range(COLD_V6)] + [str(v4_base + i + 1) for i in range(COLD_V4)]
    now = utc_now()
    store = StateStore(lab.state_dir)
    with store.transaction() as transaction:
        for index, pod in enumerate(pods):
            share = addresses[index::COLD_PODS]
            transaction.put(
                Allocation(
                    network=NETWORK_NAME,
                    container_id=pod.container_id,
                    ifname=pod.ifname,
                    netns=pod.netns.path,
                    pod=PodRef(namespace="lab", name=pod.name, uid=pod.uid),
                    anycast=tuple(ipaddress.ip_address(a) for a in share),
                    pod_ips=(ipaddress.ip_address(pod.ip(4)), ipaddress.ip_address(pod.ip(6))),
                    state="committed",
                    created_at=now,
                    updated_at=now,
                )
            )
    lab.set_readiness({pod: True for pod in pods})
    return {"prefixes": len(addresses), "pods": len(pods)}


def proc_status(pid: int, field: str) -> int:
    """A kB figure from /proc/PID/status (VmHWM, VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[0] is state (stat field 3): utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / ticks


def count_our_routes(lab: Lab) -> int:
    count = 0
    with lab.node.iproute() as ipr:
        for family in (2, 10):
            count += sum(1 for r in ipr.route("dump", family=family, table=254) if r["proto"] == ROUTE_PROTOCOL)
    return count


def bench_cold_start(resync_interval: float, idle_window: float) -> tuple[list[list[str]], list[list[str]]]:
    with Lab(drain_delay=0.0) as lab:
        setup = write_cold_state(lab)
        total = setup["prefixes"]
        assert lab.frr is not None and lab.bird is not None
        with RouteMonitor(lab.node) as monitor:
            started = time.monotonic()
            process = lab.start_reconciler(
                wait_healthy=False, resyncInterval=resync_interval, pools=list(POOLS) + COLD_POOLS, **LOOP_SETTINGS
            )
            healthy = wait_until(
                lambda: lab.http_get("/healthz").status == 200 and time.monotonic(), DEADLINE, "healthz"
            )

            def all_routes() -> float | None:
                prefixes = {e.prefix for e in monitor.matching(protocol=ROUTE_PROTOCOL) if e.event == "RTM_NEWROUTE"}
                if len(prefixes) >= total:
                    return max(e.at for e in monitor.matching(protocol=ROUTE_PROTOCOL))
                return None

            kernel_done = wait_until(all_routes, 120, f"{total} kernel routes", interval=0.02)
            peer_done = wait_until(
                lambda: lab.frr.received_prefixes() >= total and time.monotonic(), 120, f"{total} at the peer",
                interval=0.02,
            )
            hwm_kb = proc_status(process.pid, "VmHWM")
            rss_kb = proc_status(process.pid, "VmRSS")
            overflows = monitor.overflows
        programmed = count_our_routes(lab)
        cold = [
            ["prefixes in the state", f"{total} ({COLD_V6} v6 + {COLD_V4} v4, {setup['pods']} pods)"],
            ["start → /healthz 200", f"{(healthy - started) * 1000:.0f} ms"],
            ["start → all kernel routes programmed", f"{(kernel_done - started) * 1000:.0f} ms ({programmed} routes)"],
            ["start → all prefixes at the peer (FRR pfxRcd)", f"{(peer_done - started) * 1000:.0f} ms"],
            ["reconciler peak RSS (VmHWM)", f"{hwm_kb / 1024:.1f} MiB (VmRSS now {rss_kb / 1024:.1f} MiB)"],
        ]
        if overflows:
            cold.append(["netlink monitor overflows", str(overflows)])

        # Idle: let a few resyncs run with nothing changing.
        metrics = lab.metrics()
        passes_before = metrics.get('flock_reconciler_passes_total{result="ok"}', 0.0)
        duration_sum = metrics.get("flock_reconciler_pass_duration_seconds_sum", 0.0)
        duration_count = metrics.get("flock_reconciler_pass_duration_seconds_count", 0.0)
        reloads = lab.bird.reconfigurations()
        cpu_before = proc_cpu_seconds(process.pid)
        with RouteMonitor(lab.node) as idle_monitor:
            window_start = time.monotonic()
            wait_until(lambda: time.monotonic() - window_start >= idle_window, idle_window + 5, "idle window", 0.1)
            events = len(idle_monitor.matching(protocol=ROUTE_PROTOCOL))
        cpu = proc_cpu_seconds(process.pid) - cpu_before
        elapsed = time.monotonic() - window_start
        metrics = lab.metrics()
        passes = metrics.get('flock_reconciler_passes_total{result="ok"}', 0.0) - passes_before
        pass_time = metrics.get("flock_reconciler_pass_duration_seconds_sum", 0.0) - duration_sum
        pass_count = metrics.get("flock_reconciler_pass_duration_seconds_count", 0.0) - duration_count
        resyncs = elapsed / resync_interval
        idle = [
            ["window", f"{elapsed:.1f} s, resyncInterval {resync_interval:g} s (~{resyncs:.0f} resyncs)"],
            ["passes in the window (metrics)", f"{passes:.0f}"],
            [
                "mean pass duration (metrics)",
                f"{pass_time / pass_count * 1000:.1f} ms" if pass_count else "n/a",
            ],
            ["reconciler CPU per resync", f"{cpu / max(resyncs, 1) * 1000:.1f} ms ({cpu * 1000:.0f} ms in window)"],
            ["netlink route events in the window", str(events)],
            ["BIRD reconfigurations in the window", str(lab.bird.reconfigurations() - reloads)],
        ]
    return cold, idle


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()
    bird = subprocess.run(["bird", "--version"], capture_output=True, text=True).stderr.strip()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}, {bird}, load avg {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flock-reconciler benchmark on the namespace lab")
    parser.add_argument("--flips", type=int, default=50, help="flips per direction (default 50)")
    parser.add_argument("--resync", type=float, default=2.0, help="resyncInterval for the idle phase (s)")
    parser.add_argument("--idle-window", type=float, default=10.0, help="idle measurement window (s)")
    parser.add_argument("--skip-cold", action="store_true", help="only the flip benchmark")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, BIRD, FRR)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    started = time.monotonic()
    rows = bench_flips(args.flips)
    print_table(
        f"Readiness flip latency ({args.flips} flips each way; drainDelay 0, debounce "
        f"{LOOP_SETTINGS['debounce'] * 1000:g} ms, maxWait {LOOP_SETTINGS['maxWait'] * 1000:g} ms; in ms)",
        ["measure", "n", "p50", "p99", "max"],
        [row.cells() for row in rows],
    )
    if not args.skip_cold:
        cold, idle = bench_cold_start(args.resync, args.idle_window)
        print_table("Cold start with 10,000 anycast prefixes", ["measure", "value"], cold)
        print_table("Idle resync at 10,000 prefixes", ["measure", "value"], idle)
    print(f"\ntotal {time.monotonic() - started:.1f} s; load avg now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
