"""What the reconciler pays to read the state directory, by number of allocations.

Writes N allocations (one record file each, through ``StateStore``) into a
temp directory, then times ``StateStore.read()`` twice with one store: the
first read decodes every record (a reconciler start), the second finds
every record unchanged by (inode, size, mtime) and reuses it (every later
pass). Also times one plugin-style ``get`` of a single record.

Run: ``.venv/bin/python benchmarks/state_read_bench.py [--counts 1000 10000]``.
No root needed; the temp directory is removed on exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script
    sys.path.insert(0, REPO)

from netconf.state import StateStore  # noqa: E402
from netconf.values import Allocation, PodRef, utc_now  # noqa: E402


def fill(store: StateStore, count: int) -> None:
    now = utc_now()
    with store.transaction() as transaction:
        for number in range(count):
            transaction.put(
                Allocation(
                    network="benchnet",
                    container_id=f"c{number:06d}",
                    ifname="eth0",
                    netns=f"/run/netns/pod{number}",
                    pod=PodRef(namespace="ns", name=f"pod{number}"),
                    anycast=(ipaddress.IPv6Address((0x20010DB8000A << 80) | number), ipaddress.IPv4Address(0xC6120000 + number)),
                    pod_ips=(ipaddress.IPv4Address(0x0AF40000 + number),),
                    state="committed",
                    created_at=now,
                    updated_at=now,
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args(argv)
    print(f"{'allocations':>11}  {'write all':>10}  {'cold read':>10}  {'warm read':>10}  {'one get':>8}")
    for count in args.counts:
        directory = tempfile.mkdtemp(prefix="flock-state-bench-")
        try:
            started = time.perf_counter()
            fill(StateStore(directory), count)
            written = time.perf_counter()
            store = StateStore(directory)
            assert len(store.read().allocations) == count
            cold = time.perf_counter()
            assert len(store.read().allocations) == count
            warm = time.perf_counter()
            assert store.get(("benchnet", f"c{count // 2:06d}", "eth0")) is not None
            got = time.perf_counter()
            print(
                f"{count:>11}  {written - started:>9.2f}s  {cold - written:>9.3f}s  {warm - cold:>9.3f}s  "
                f"{(got - warm) * 1000:>6.2f}ms"
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
