"""Kernel route adapter benchmark: hand-packed baseline vs pyroute2 messages vs IPRoute.

Side by side in one run, in a throwaway node netns with a veth to each of
two dummy pod netns (two pods give the 2-way ECMP next hops):

* ``raw``: the adapter as it was before it used pyroute2's message classes
  (``struct``-packed rtnetlink), loaded from git history
  (``--baseline-rev``), so the comparison needs no copy of that code here;
* ``pyroute2-msg``: ``reconciler.kernel.KernelRoutes`` as it is now —
  pyroute2 ``rtmsg``/``ifinfmsg``/``MarshalRtnl`` over the adapter's own
  socket loop;
* ``IPRoute``: plain ``IPRoute(netns=path, flags=0)`` calls
  (``route('replace'|'del'|'dump'|'get')``) doing the same work.

Per size (2,000 and 10,000 by default) it times route writes — /128 and
/32, one next hop and 2-way multipath — and deletes; then ``list_routes()``
of one table of 10,000 prefixes (5,000 IPv6 + 5,000 IPv4, half of them
ECMP) and ``device_for`` lookups. Each implementation writes its own prefix
range, and they take turns every 100 operations (the first one rotating),
so the table grows alike for all and a burst of load on the machine hits
them alike. Cells give the median wall microseconds per operation over
those chunks and the minimum CPU microseconds (user+sys of this process,
which includes the kernel's work in our syscalls): on a busy machine the
least disturbed chunk is the closest to the code's own cost. Every write phase is checked by listing
the table with the baseline, and every implementation's listing must equal
the baseline's.

Run as root: ``.venv/bin/python -m benchmarks.kernel_routes_bench [--sizes 2000,10000]``.
No namespace other than the ones created here is touched; they are deleted
on exit, also on failure.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from types import ModuleType

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from lab.netns import Netns, create_netns, delete_netns, wire_pod
from reconciler.desired import IPAddress, IPNetwork, NextHop
from reconciler.kernel import KernelRoutes

PROTOCOL = 70
TABLE = 254
BASELINE_REV = "fd55a94"  # the last commit with the struct-packed adapter
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RFC 2544 / RFC 5180 benchmarking ranges.
V4_BASE = int(IPv4Address("198.18.0.0"))
V6_BASE = int(IPv6Address("2001:2::"))
RANGE_STRIDE = 40000  # each implementation writes its own prefixes: 3 x 40,000 fit 198.18.0.0/15
CHUNK = 100  # operations per timed chunk; implementations take turns chunk by chunk
LOOKUPS = 2000
DUMP_PREFIXES = 10000
DUMP_ROUNDS = 5
PODS = {
    # host veth: (ifindex, IPv4, IPv6)
    "veth-a": (50, "10.1.0.2", "fd00::2"),
    "veth-b": (51, "10.1.0.3", "fd00::3"),
}


# -- the implementations ---------------------------------------------------------


def load_baseline(rev: str) -> ModuleType:
    """``reconciler/kernel.py`` at ``rev`` as a module of its own."""
    source = subprocess.run(
        ["git", "-C", REPO, "show", f"{rev}:reconciler/kernel.py"], check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader("flock_kernel_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/annotation lookups need it registered
    exec(compile(source, f"{rev}:reconciler/kernel.py", "exec"), module.__dict__)
    return module


class IPRouteRoutes:
    """The same four operations through plain ``IPRoute`` calls."""

    def __init__(self, netns: str) -> None:
        self.ipr = IPRoute(netns=netns, flags=0)
        self.indexes = {link.get("ifname"): link["index"] for link in self.ipr.get_links()}
        self.names = {index: name for name, index in self.indexes.items()}

    def close(self) -> None:
        self.ipr.close()

    def ensure_route(self, prefix: IPNetwork, next_hops: frozenset[NextHop]) -> None:
        hops = sorted(next_hops)
        request = {"dst": str(prefix), "proto": PROTOCOL, "table": TABLE}
        if len(hops) == 1:
            request.update(gateway=str(hops[0].gateway), oif=self.indexes[hops[0].device])
        else:
            request["multipath"] = [{"gateway": str(hop.gateway), "oif": self.indexes[hop.device]} for hop in hops]
        self.ipr.route("replace", **request)

    def delete_route(self, prefix: IPNetwork) -> bool:
        try:
            self.ipr.route("del", dst=str(prefix), proto=PROTOCOL, table=TABLE)
        except NetlinkError as exc:
            if exc.code == errno.ESRCH:
                return False
            raise
        return True

    def list_routes(self) -> dict[IPNetwork, frozenset[NextHop]]:
        routes = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for message in self.ipr.route("dump", family=family, table=TABLE, proto=PROTOCOL):
                if message["dst_len"] != (32 if family == socket.AF_INET else 128):
                    continue
                paths = message.get("multipath") or [
                    {"oif": message.get("oif"), "attrs": [("RTA_GATEWAY", message.get("gateway"))]}
                ]
                routes[_network(message.get("dst"))] = frozenset(
                    NextHop(ip_address(dict(path["attrs"]).get("RTA_GATEWAY")), self.names[path["oif"]])
                    for path in paths
                )
        return routes

    def device_for(self, address: IPAddress) -> str | None:
        try:
            (answer,) = self.ipr.route("get", dst=str(address))
        except NetlinkError:
            return None
        if answer["type"] != 1 or answer.get("gateway") or answer.get("multipath"):
            return None
        return self.names.get(answer.get("oif"))


def _network(text: str) -> IPNetwork:
    return IPv6Network(f"{text}/128") if ":" in text else IPv4Network(f"{text}/32")


# -- the lab -------------------------------------------------------------------------


def build_lab() -> tuple[Netns, list[Netns]]:
    node = create_netns("bench-node", forwarding=True)
    pods: list[Netns] = []
    try:
        for device, (index, ip4, ip6) in PODS.items():
            pod = create_netns("bench-pod")
            pods.append(pod)
            wire_pod(node, pod, device, index, ip4, ip6)
    except BaseException:
        for namespace in (*pods, node):
            delete_netns(namespace)
        raise
    return node, pods


def prefixes(version: int, count: int, offset: int = 0) -> list[IPNetwork]:
    if version == 4:
        return [IPv4Network((V4_BASE + offset + i, 32)) for i in range(count)]
    return [IPv6Network((V6_BASE + offset + i, 128)) for i in range(count)]


def next_hops(version: int, ways: int) -> frozenset[NextHop]:
    return frozenset(
        NextHop(ip_address(ip4 if version == 4 else ip6), device) for device, (_i, ip4, ip6) in list(PODS.items())[:ways]
    )


# -- measuring -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    wall: dict[str, list[float]] = field(default_factory=dict)  # implementation -> µs per op, per chunk
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, ops: int, wall: float, cpu: float) -> None:
        self.wall.setdefault(name, []).append(wall / ops * 1e6)
        self.cpu.setdefault(name, []).append(cpu / ops * 1e6)


def timed(function: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def interleaved(impls: dict[str, object], rounds: int) -> Iterator[tuple[int, str, object]]:
    """(round, name, implementation), every implementation once per round, the first one rotating."""
    names = list(impls)
    for number in range(rounds):
        for offset in range(len(names)):
            name = names[(number + offset) % len(names)]
            yield number, name, impls[name]


def benchmark(impls: dict[str, object], checker: object, sizes: Iterable[int]) -> list[Row]:
    """Each implementation writes its own prefix range, chunk by chunk in turns, so
    the table grows alike for all and a burst of load on the machine hits them alike."""
    rows: list[Row] = []
    ranges = {name: number * RANGE_STRIDE for number, name in enumerate(impls)}

    def expect(wanted: dict[IPNetwork, frozenset[NextHop]], what: str) -> None:
        found = checker.list_routes()
        if found != wanted:
            missing = len(set(wanted.items()) - set(found.items()))
            raise SystemExit(f"{what}: {missing} of {len(wanted)} routes missing or different, {len(found)} present")

    for size in sizes:
        delete_row = Row(f"delete_route ({size})")
        for version, ways in ((6, 1), (4, 1), (6, 2), (4, 2)):
            hops = next_hops(version, ways)
            targets = {name: prefixes(version, size, ranges[name]) for name in impls}
            label = f"ensure_route /{'128' if version == 6 else '32'} {'1 hop' if ways == 1 else '2-way ECMP'} ({size})"
            row = Row(label)
            batches = {name: chunks(targets[name], CHUNK) for name in impls}
            for number, name, impl in interleaved(impls, len(batches[next(iter(impls))])):
                batch = batches[name][number]
                row.add(name, len(batch), *timed(
                    lambda impl=impl, batch=batch, hops=hops: [impl.ensure_route(p, hops) for p in batch]))
            expect({prefix: hops for name in impls for prefix in targets[name]}, label)
            for number, name, impl in interleaved(impls, len(batches[next(iter(impls))])):
                batch = batches[name][number]
                delete_row.add(name, len(batch), *timed(lambda impl=impl, batch=batch: [impl.delete_route(p) for p in batch]))
            expect({}, f"delete after {label}")
            rows.append(row)
            print(f"  done: {label}", file=sys.stderr, flush=True)
        rows.append(delete_row)

    # One table of 10,000 prefixes, half IPv6, half ECMP; each implementation lists it.
    half = DUMP_PREFIXES // 2
    for version in (6, 4):
        for i, prefix in enumerate(prefixes(version, half)):
            checker.ensure_route(prefix, next_hops(version, 1 + i % 2))
    reference = checker.list_routes()
    if len(reference) != DUMP_PREFIXES:
        raise SystemExit(f"dump setup: {len(reference)} routes instead of {DUMP_PREFIXES}")
    row = Row(f"list_routes of {DUMP_PREFIXES} prefixes (per route; x{DUMP_ROUNDS})")
    for _number, name, impl in interleaved(impls, DUMP_ROUNDS):
        listed: dict = {}
        row.add(name, DUMP_PREFIXES, *timed(lambda listed=listed, impl=impl: listed.update(impl.list_routes())))
        if listed != reference:
            raise SystemExit(f"{name}: list_routes differs from the baseline's")
    rows.append(row)
    print("  done: list_routes", file=sys.stderr, flush=True)

    lookups = [ip_address(ip) for _index, ip4, ip6 in PODS.values() for ip in (ip4, ip6)]
    row = Row(f"device_for ({LOOKUPS} on-link pod IPs)")

    def lookup(name: str, impl: object) -> None:
        for i in range(CHUNK):
            address = lookups[i % len(lookups)]
            if impl.device_for(address) not in PODS:
                raise SystemExit(f"{name}: device_for({address}) is not a pod veth")

    for _number, name, impl in interleaved(impls, LOOKUPS // CHUNK):
        row.add(name, CHUNK, *timed(lambda name=name, impl=impl: lookup(name, impl)))
    rows.append(row)
    for prefix in reference:
        checker.delete_route(prefix)
    return rows


def print_table(rows: list[Row], names: list[str]) -> None:
    """Median wall time (what this machine gave) and minimum CPU time (the least
    disturbed chunk: the closest to the code's own cost on a busy machine)."""
    base = names[0]
    header = ["operation", *(f"{name} µs/op" for name in names), *(f"{name}/{base}" for name in names[1:])]
    lines = [header]
    for row in rows:
        wall = {name: statistics.median(row.wall[name]) for name in names}
        cpu = {name: min(row.cpu[name]) for name in names}
        cells = [row.name]
        cells += [f"{wall[name]:.0f} / {cpu[name]:.0f}" for name in names]
        cells += [f"{wall[name] / wall[base]:.1f}x / {cpu[name] / cpu[base]:.1f}x" for name in names[1:]]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for number, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    print(
        f"\nCells: wall µs per operation, median over chunks of {CHUNK} operations (list_routes: over"
        f" {DUMP_ROUNDS} whole listings) / CPU µs per operation of this process (user+sys, including the"
        "\nkernel's work in our syscalls), minimum over the same chunks."
    )
    largest = max(int(row.name.rsplit("(", 1)[1].rstrip(")")) for row in rows if row.name.startswith("ensure_route"))
    writes = [row for row in rows if row.name.startswith("ensure_route") and row.name.endswith(f"({largest})")]
    listing = next(row for row in rows if row.name.startswith("list_routes"))
    print(
        f"\nAt {DUMP_PREFIXES:,} prefixes, seconds wall / CPU (a write: mean of the four ensure_route rows"
        f" at {largest:,}):"
    )
    for name in names:
        write = [statistics.mean(statistics.median(row.wall[name]) for row in writes) * DUMP_PREFIXES / 1e6]
        write.append(statistics.mean(min(row.cpu[name]) for row in writes) * DUMP_PREFIXES / 1e6)
        dump = [statistics.median(listing.wall[name]) * DUMP_PREFIXES / 1e6, min(listing.cpu[name]) * DUMP_PREFIXES / 1e6]
        print(
            f"  {name:>13}: {DUMP_PREFIXES:,} writes {write[0]:5.1f} / {write[1]:4.1f},"
            f" one list_routes {dump[0]:4.2f} / {dump[1]:4.2f},"
            f" cold start (both) {write[0] + dump[0]:5.1f} / {write[1] + dump[1]:4.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,10000", help="route counts per write test (comma-separated)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the struct-packed adapter")
    parser.add_argument("--skip-iproute", action="store_true", help="leave plain IPRoute out (it is slow)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.sizes.split(",")]
    baseline = load_baseline(args.baseline_rev)
    print(
        f"kernel route adapter benchmark — {platform.node()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at start"
    )
    node, pods = build_lab()
    opened: list[object] = []
    try:
        impls: dict[str, object] = {
            "raw": baseline.KernelRoutes(protocol=PROTOCOL, table=TABLE, netns=node.path),
            "pyroute2-msg": KernelRoutes(protocol=PROTOCOL, table=TABLE, netns=node.path),
        }
        if not args.skip_iproute:
            impls["IPRoute"] = IPRouteRoutes(node.path)
        opened.extend(impls.values())
        checker = baseline.KernelRoutes(protocol=PROTOCOL, table=TABLE, netns=node.path)
        opened.append(checker)
        for impl in opened:
            if hasattr(impl, "open"):
                impl.open()
        rows = benchmark(impls, checker, sizes)
    finally:
        for impl in opened:
            impl.close()
        for namespace in (*pods, node):
            delete_netns(namespace)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end\n")
    print_table(rows, list(impls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
