"""Prometheus metrics of the reconciler, on a registry of their own (no global state).

May: hold metric objects and update them. May not: do I/O (the HTTP
endpoint in ``endpoints.py`` serves them).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "flock_reconciler_"


class Metrics:
    """All metrics; one instance per daemon, each with its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.advertised_prefixes = Gauge(
            PREFIX + "advertised_prefixes",
            "Prefixes BIRD has confirmed exporting, by address family",
            ["family"],
            registry=r,
        )
        self.routes = Gauge(
            PREFIX + "routes",
            "Kernel host routes of our protocol after the last pass, by address family",
            ["family"],
            registry=r,
        )
        self.next_hops = Gauge(
            PREFIX + "next_hops",
            "Next hops over all kernel routes of our protocol after the last pass",
            registry=r,
        )
        self.draining_prefixes = Gauge(
            PREFIX + "draining_prefixes",
            "Withdrawn prefixes whose kernel route waits out the drain delay",
            registry=r,
        )
        self.skipped_next_hops = Gauge(
            PREFIX + "skipped_next_hops",
            "Anycast addresses of Ready allocations skipped in the last pass, by reason",
            ["reason"],
            registry=r,
        )
        self.passes = Counter(
            PREFIX + "passes",
            "Reconcile passes by result (ok, error, skipped)",
            ["result"],
            registry=r,
        )
        self.pass_duration = Histogram(
            PREFIX + "pass_duration_seconds",
            "Duration of reconcile passes",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.wakeups = Counter(
            PREFIX + "wakeups",
            "Wake-ups of the loop by reason",
            ["reason"],
            registry=r,
        )
        self.route_writes = Counter(
            PREFIX + "route_writes",
            "Netlink route writes by operation (add, replace, delete) and result",
            ["op", "result"],
            registry=r,
        )
        self.bird_calls = Counter(
            PREFIX + "bird_calls",
            "Calls of the BIRD adapter by result (ok, error)",
            ["result"],
            registry=r,
        )
        self.bird_reloads = Counter(
            PREFIX + "bird_reloads",
            "BIRD reconfigurations the adapter reported",
            registry=r,
        )
        self.bird_apply_failures = Counter(
            PREFIX + "bird_apply_failures",
            "Failed BIRD applies (BIRD down, config rejected)",
            registry=r,
        )
        self.bird_last_success = Gauge(
            PREFIX + "bird_last_success_timestamp_seconds",
            "Unix time of the last successful BIRD apply",
            registry=r,
        )
        self.state_read_errors = Counter(
            PREFIX + "state_read_errors",
            "Passes whose read of the state directory failed as a whole (the last good view was kept)",
            registry=r,
        )
        self.state_unreadable_records = Gauge(
            PREFIX + "state_unreadable_records",
            "State records that cannot be read (corrupt, unknown version, not a regular file) in the last pass",
            registry=r,
        )
        self.state_records_kept = Gauge(
            PREFIX + "state_records_kept_last_good",
            "Unreadable state records for which the last good allocation is still used",
            registry=r,
        )
        self.refused_addresses = Gauge(
            PREFIX + "refused_addresses",
            "Anycast addresses of committed records refused (never routed), by reason",
            ["reason"],
            registry=r,
        )
        self.last_pass = Gauge(
            PREFIX + "last_pass_timestamp_seconds",
            "Unix time of the last completed pass",
            registry=r,
        )
        for family in ("ipv4", "ipv6"):
            self.advertised_prefixes.labels(family).set(0)
            self.routes.labels(family).set(0)
        for reason in ("no-pod-ip-of-family", "no-device"):
            self.skipped_next_hops.labels(reason).set(0)
        for reason in ("special-address", "outside-pools", "node-address", "peer-address", "pod-ip"):
            self.refused_addresses.labels(reason).set(0)
        self.state_unreadable_records.set(0)
        self.state_records_kept.set(0)
        for result in ("ok", "error", "skipped"):
            self.passes.labels(result)
        self.bird_last_success.set(0)
