"""``make demo``: watch an anycast pair follow pod readiness into BGP.

Builds the lab of ``lab.topology`` — a router netns running FRR
(zebra + bgpd), a node netns running BIRD 2 and flock-reconciler, two pod
netns attached through the real CNI chain (Debian ptp + host-local, then
flock-anycast) with the same anycast pair — and prints, step by step, the
router's BGP table and the node's host route while the pods' readiness
flips. Ends with a ping from the router answered by a pod. Everything runs
in throwaway namespaces and is torn down at the end, on failure and on
Ctrl-C.

Run as root: ``.venv/bin/python -m lab.demo``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from lab.daemons import WaitTimeout, wait_until
from lab.topology import Lab, Pod, host_prefix

ANYCAST6 = "2001:db8:a::53"
ANYCAST4 = "192.0.2.53"
ANYCAST = (ANYCAST6, ANYCAST4)
DEADLINE = 20.0


class _Terminated(Exception):
    """SIGTERM, turned into an exception so the lab unwinds like on Ctrl-C."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: object) -> None:
    # pyroute2 forks short-lived helpers (one per netns socket) and stops
    # them with SIGTERM; they inherit this handler and must simply die.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise _Terminated()


class Demo:
    def __init__(self, lab: Lab, out=sys.stdout) -> None:
        self.lab = lab
        self.out = out
        self.started = time.monotonic()
        self.step_number = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.step_number += 1
        elapsed = time.monotonic() - self.started
        self.say()
        self.say(f"=== Step {self.step_number}: {title}  [t+{elapsed:.1f}s]")

    def pod_of_hop(self, gateway: str, oif: int) -> str:
        for pod in self.lab.pods.values():
            if pod.host_ifindex == oif:
                return pod.name
        return "?"

    def show(self) -> None:
        """The router's BGP table and kernel route, and the node's host route, per prefix."""
        lab = self.lab
        assert lab.frr is not None
        self.say("  router (FRR, AS 65000) — BGP table:")
        for address in ANYCAST:
            prefix = host_prefix(address)
            entry = lab.frr.bgp_prefix(prefix)
            if entry is None:
                self.say(f"    {prefix:<22} not in table (withdrawn)")
                continue
            for path in entry.get("paths", []):
                hops = [h.get("ip", "?") for h in path.get("nexthops", [])]
                as_path = path.get("aspath", {}).get("string", "")
                best = " best" if path.get("bestpath", {}).get("overall") else ""
                self.say(f"    {prefix:<22} next hop {', '.join(hops)}  AS path {as_path or '-'}{best}")
        self.say("  router — kernel route (installed by zebra):")
        for address in ANYCAST:
            hops = lab.router_route(address)
            text = "none" if hops is None else ", ".join(f"via {gw}" for gw, _ in hops)
            self.say(f"    {host_prefix(address):<22} {text}")
        self.say("  node — host route (proto 70, programmed by flock-reconciler):")
        for address in ANYCAST:
            hops = lab.node_route(address)
            if hops is None:
                self.say(f"    {host_prefix(address):<22} none")
                continue
            kind = f"ECMP, {len(hops)} next hops" if len(hops) > 1 else "1 next hop"
            self.say(f"    {host_prefix(address):<22} {kind}:")
            for gateway, oif in hops:
                self.say(f"      via {gateway:<14} dev {self._ifname(oif):<14} (pod {self.pod_of_hop(gateway, oif)})")

    def _ifname(self, oif: int) -> str:
        for pod in self.lab.pods.values():
            if pod.host_ifindex == oif:
                return pod.host_ifname
        return f"if{oif}"

    def wait_state(self, routed_via: Sequence[Pod], advertised: bool) -> None:
        lab = self.lab
        for address in ANYCAST:
            if routed_via:
                expected = lab.expected_next_hops(address, routed_via)
                wait_until(lambda a=address, e=expected: lab.node_route(a) == e, DEADLINE, f"node route {address}")
            else:
                wait_until(lambda a=address: lab.node_route(a) is None, DEADLINE, f"node route {address} removed")
            wait_until(
                lambda a=address: lab.peer_has(a) == advertised,
                DEADLINE,
                f"{address} {'advertised to' if advertised else 'withdrawn from'} the router",
            )
            if advertised:
                wait_until(lambda a=address: lab.router_route(a), DEADLINE, f"router route {address}")


def run_demo(out=sys.stdout) -> None:
    demo_started = time.monotonic()
    with Lab(drain_delay=0.5) as lab:
        try:
            _steps(lab, out, demo_started)
        except Exception:
            # Show why before the lab (and its logs) are torn down.
            for title, path in (("flock-reconciler", lab.reconciler_log_path), ("BIRD", lab.bird and lab.bird.log_path)):
                if path and os.path.exists(path):
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        tail = handle.readlines()[-25:]
                    print(f"--- last lines of the {title} log ---\n{''.join(tail)}", file=sys.stderr)
            raise
    print("Lab torn down: namespaces deleted, BIRD, FRR and the reconciler stopped.", file=out, flush=True)


def _steps(lab: Lab, out, demo_started: float) -> None:
    demo = Demo(lab, out)
    demo.started = demo_started
    demo.say(f"Lab up in {time.monotonic() - demo_started:.1f}s (work dir {lab.workdir})")
    demo.say(f"  router netns {lab.router.name}: FRR zebra+bgpd, AS 65000, 2001:db8:ffff::1 / 198.51.100.1")
    demo.say(f"  node   netns {lab.node.name}: BIRD 2 (AS 65001, one session per family) + flock-reconciler")

    demo.step("attach two pods through the CNI chain (ptp + host-local, then flock-anycast)")
    pod_a = lab.add_pod("a", ANYCAST, ready=True)
    pod_b = lab.add_pod("b", ANYCAST, ready=True)
    for pod in (pod_a, pod_b):
        demo.say(
            f"  pod {pod.name}: netns {pod.netns.name}, eth0 {pod.ip(4)} / {pod.ip(6)}, "
            f"host veth {pod.host_ifname}, lo + {', '.join(pod.anycast)}"
        )
    demo.say(f"  readiness file ({lab.readiness_path}): both Ready")
    lab.start_reconciler()
    demo.say(f"  flock-reconciler started (pid {lab.reconciler.pid}, readiness source: file)")

    demo.step("both pods Ready → one ECMP route with 2 next hops, prefixes advertised")
    demo.wait_state([pod_a, pod_b], advertised=True)
    demo.show()

    demo.step("pod a NotReady → the ECMP route shrinks, the prefixes stay advertised")
    lab.set_ready(pod_a, False)
    demo.wait_state([pod_b], advertised=True)
    demo.show()

    demo.step("pod b NotReady too → withdrawn from BGP first, the route drains away after")
    lab.set_ready(pod_b, False)
    flipped = time.monotonic()
    withdrawn = wait_until(
        lambda: not lab.peer_has(ANYCAST6) and time.monotonic(), DEADLINE, "withdrawal at the router", 0.002
    )
    removed = wait_until(
        lambda: lab.node_route(ANYCAST6) is None and time.monotonic(), DEADLINE, "node route removed", 0.002
    )
    demo.wait_state([], advertised=False)
    demo.say(
        f"  {ANYCAST6}: gone from the router's BGP table after {(withdrawn - flipped) * 1000:.0f} ms, "
        f"node route removed after {(removed - flipped) * 1000:.0f} ms (drainDelay {lab.drain_delay:g} s)"
    )
    demo.show()

    demo.step("pod a Ready again → routed and advertised again")
    lab.set_ready(pod_a, True)
    demo.wait_state([pod_a], advertised=True)
    demo.show()

    demo.step("ping from the router to the anycast addresses")
    for address in ANYCAST:
        answered = lab.answering_pod(address)
        if answered is None:
            raise RuntimeError(f"ping {address} from the router was not answered")
        family = 6 if ":" in address else 4
        demo.say(
            f"  ping {address:<16} from the router: echo reply sent by pod {answered.name} "
            f"({answered.ip(family)}; its netns's ICMP OutEchoReps counter moved)"
        )
    demo.say()
    demo.say(f"Demo done in {time.monotonic() - demo_started:.1f}s; tearing the lab down.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, BIRD, FRR)", file=sys.stderr)
        return 2
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_demo()
    except KeyboardInterrupt:
        print("\nInterrupted; the lab has been torn down.", file=sys.stderr)
        return 130
    except _Terminated:
        print("\nTerminated; the lab has been torn down.", file=sys.stderr)
        return 143
    except (WaitTimeout, RuntimeError, OSError) as exc:
        print(f"\nDemo failed: {exc}\nThe lab has been torn down.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
