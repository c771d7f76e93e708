"""What a huge anycast list costs an ADD (issue 11, defect 9).

Two measurements per count:

* an ADD through ``cni_plugin.dispatch.run`` with N addresses in CNI_ARGS
  ``FLOCK_ANYCAST``, in and out of the pool: refused with code 108 after a
  split, before any address is parsed (N > 64);
* ``parse_anycast_addresses`` alone with the limit lifted, which shows the
  de-duplication is linear (it was ``not in list``: quadratic).

Run: ``.venv/bin/python benchmarks/anycast_limit_bench.py [--counts 16000 100000]``.
No root needed. Before the fix (flock at deefee6, same VM): ADD with 16,000
addresses 20.4 s, with 100,000 892 s; the parser alone 21.0 s for 16,000.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script
    sys.path.insert(0, REPO)

from cni_plugin import anycast  # noqa: E402
from cni_plugin.dispatch import run  # noqa: E402

POOL = ipaddress.ip_network("2001:db8:a::/64")
OUTSIDE = ipaddress.ip_network("2001:db8:ff::/64")


def addresses(count: int, network) -> list[str]:
    return [str(network[index + 1]) for index in range(count)]


def time_add(count: int, network, state_dir: str) -> tuple[float, int]:
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "bench",
        "CNI_NETNS": "/nonexistent",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "FLOCK_ANYCAST=" + ",".join(addresses(count, network)),
    }
    document = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "flock-anycast",
        "flock": {"pools": [str(POOL)], "stateDir": state_dir},
        "prevResult": {"ips": [{"address": "fd00::5/64"}]},
    }
    stdin = io.BytesIO(json.dumps(document).encode())
    out = io.StringIO()
    started = time.perf_counter()
    run(environ, stdin, out)
    return time.perf_counter() - started, json.loads(out.getvalue())["code"]


def time_parser(count: int) -> float:
    items = addresses(count, POOL)
    limit, anycast.MAX_ADDRESSES = anycast.MAX_ADDRESSES, 10**9
    try:
        started = time.perf_counter()
        anycast.parse_anycast_addresses(items, "bench")
        return time.perf_counter() - started
    finally:
        anycast.MAX_ADDRESSES = limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[64, 16_000, 100_000])
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as state_dir:
        for count in arguments.counts:
            for label, network in (("in pool", POOL), ("out of pool", OUTSIDE)):
                elapsed, code = time_add(count, network, state_dir)
                print(f"ADD, {count:>7} addresses {label:<11}: {elapsed * 1000:9.1f} ms, code {code}")
            print(f"parser alone, {count:>7} addresses, no limit: {time_parser(count) * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
