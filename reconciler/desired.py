"""Pure core of the reconciler: what the kernel and BIRD should hold, and how to get there.

Nothing here does I/O, reads a clock or logs: every input is an argument
(the allocations snapshot, a readiness predicate, a device lookup the loop
filled from the kernel beforehand, the observed routes, the time ``now``)
and every output is a frozen value the loop applies through its adapters.

Three steps, each a function:

- :func:`desired_routes` — committed x Ready allocations -> ``{prefix: next hops}``
  plus the next hops that had to be skipped, as data.
- :func:`diff` — desired vs. observed kernel routes (and the set BIRD last
  confirmed) -> a :class:`RoutePlan`: route actions and the export set.
- :func:`plan_drain` — after BIRD answered: which stale kernel routes start
  their drain delay and which have waited long enough to be deleted.

The safety rule that ties them together: a kernel route is deleted only once
BIRD has confirmed an export set without its prefix *and* the drain delay
has passed since then, so peers stop sending before the node stops routing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal

from netconf.state import Allocation, AllocationKey

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Routes = Mapping[IPNetwork, frozenset["NextHop"]]

SKIP_NO_POD_IP = "no-pod-ip-of-family"
SKIP_NO_DEVICE = "no-device"


@dataclass(frozen=True, order=True)
class NextHop:
    """``via <gateway> dev <device>``: a local pod's unicast IP and the host device reaching it."""

    gateway: IPAddress
    device: str

    def __str__(self) -> str:
        return f"via {self.gateway} dev {self.device}"


@dataclass(frozen=True)
class SkippedNextHop:
    """A Ready allocation's anycast address that could not get a next hop (a warning as data)."""

    allocation: AllocationKey
    pod: str
    anycast: IPAddress
    reason: Literal["no-pod-ip-of-family", "no-device"]
    detail: str


@dataclass(frozen=True)
class DesiredRoutes:
    """The routes the kernel should hold, and what was skipped on the way."""

    routes: Mapping[IPNetwork, frozenset[NextHop]]
    skipped: tuple[SkippedNextHop, ...] = ()


def host_prefix(address: IPAddress) -> IPNetwork:
    """``/32`` for IPv4, ``/128`` for IPv6."""
    return ip_network(address)  # a bare address is a full-length network


def pod_label(allocation: Allocation) -> str:
    """``namespace/name`` when known, else the pod UID, else the container ID."""
    pod = allocation.pod
    if pod.namespace and pod.name:
        return f"{pod.namespace}/{pod.name}"
    return pod.uid or allocation.container_id


def desired_pod_ips(
    allocations: Iterable[Allocation], is_ready: Callable[[Allocation], bool]
) -> frozenset[IPAddress]:
    """The pod IPs whose host device :func:`desired_routes` will ask for."""
    wanted: set[IPAddress] = set()
    for allocation in allocations:
        if allocation.state != "committed" or not is_ready(allocation):
            continue
        for version in {address.version for address in allocation.anycast}:
            gateway = _first_of_version(allocation.pod_ips, version)
            if gateway is not None:
                wanted.add(gateway)
    return frozenset(wanted)


def desired_routes(
    allocations: Iterable[Allocation],
    is_ready: Callable[[Allocation], bool],
    device_for: Callable[[IPAddress], str | None],
) -> DesiredRoutes:
    """Committed allocations of Ready pods -> one host route per anycast address.

    The next hop of an address is the pod's first unicast IP of the same
    family (in the order the main plugin reported them) and the host device
    that reaches it. Several Ready pods with the same address give one
    prefix with several next hops (ECMP). Pending allocations are never
    asked about readiness: their addresses may not be on the pod yet.
    """
    routes: dict[IPNetwork, set[NextHop]] = {}
    skipped: list[SkippedNextHop] = []
    for allocation in allocations:
        if allocation.state != "committed" or not is_ready(allocation):
            continue
        for anycast in dict.fromkeys(allocation.anycast):
            gateway = _first_of_version(allocation.pod_ips, anycast.version)
            if gateway is None:
                skipped.append(
                    SkippedNextHop(
                        allocation.key,
                        pod_label(allocation),
                        anycast,
                        SKIP_NO_POD_IP,
                        f"pod has no IPv{anycast.version} address for {anycast}",
                    )
                )
                continue
            device = device_for(gateway)
            if not device:
                skipped.append(
                    SkippedNextHop(
                        allocation.key,
                        pod_label(allocation),
                        anycast,
                        SKIP_NO_DEVICE,
                        f"no host device reaches pod IP {gateway}",
                    )
                )
                continue
            routes.setdefault(host_prefix(anycast), set()).add(NextHop(gateway, device))
    return DesiredRoutes(
        {prefix: frozenset(hops) for prefix, hops in routes.items()},
        tuple(skipped),
    )


@dataclass(frozen=True)
class RouteAction:
    """One kernel write. ``add``/``replace`` are both a netlink replace; ``delete`` drops the prefix."""

    op: Literal["add", "replace", "delete"]
    prefix: IPNetwork
    next_hops: frozenset[NextHop] = frozenset()
    previous: frozenset[NextHop] = frozenset()


@dataclass(frozen=True)
class RoutePlan:
    """What one pass should change.

    ``ensure`` (add/replace) is applied before BIRD, ``stale`` (delete
    candidates) only through :func:`plan_drain` after BIRD confirmed.
    ``export`` is the whole set BIRD should advertise; ``advertise`` and
    ``withdraw`` are its difference to what BIRD last confirmed. A next hop
    joining or leaving an existing prefix is a ``replace`` and changes
    neither ``advertise`` nor ``withdraw``.
    """

    ensure: tuple[RouteAction, ...]
    stale: tuple[RouteAction, ...]
    export: frozenset[IPNetwork]
    advertise: frozenset[IPNetwork]
    withdraw: frozenset[IPNetwork]

    @property
    def actions(self) -> tuple[RouteAction, ...]:
        return self.ensure + self.stale

    @property
    def export_changed(self) -> bool:
        return bool(self.advertise or self.withdraw)


def diff(
    desired: Routes,
    observed: Routes,
    exported: frozenset[IPNetwork] | None = None,
) -> RoutePlan:
    """Compare desired routes with the kernel's routes of our protocol.

    ``exported`` is the set BIRD last confirmed, or None when unknown (at
    start-up): then every observed route is assumed to be advertised, so a
    stale one is withdrawn before it is deleted.
    """
    ensure = []
    for prefix in _sorted(desired):
        hops = desired[prefix]
        present = observed.get(prefix)
        if present is None:
            ensure.append(RouteAction("add", prefix, hops))
        elif present != hops:
            ensure.append(RouteAction("replace", prefix, hops, present))
    stale = tuple(
        RouteAction("delete", prefix, previous=observed[prefix])
        for prefix in _sorted(observed)
        if prefix not in desired
    )
    export = frozenset(desired)
    known = frozenset(observed) if exported is None else exported
    return RoutePlan(
        ensure=tuple(ensure),
        stale=stale,
        export=export,
        advertise=export - known if exported is not None else export,
        withdraw=known - export,
    )


@dataclass(frozen=True)
class DrainPlan:
    """Deadlines of stale routes waiting out the drain delay, and those due for deletion now."""

    draining: Mapping[IPNetwork, float] = field(default_factory=dict)
    delete: frozenset[IPNetwork] = frozenset()


def plan_drain(
    stale: Iterable[IPNetwork],
    exported: frozenset[IPNetwork] | None,
    draining: Mapping[IPNetwork, float],
    now: float,
    drain_delay: float,
) -> DrainPlan:
    """Decide, after the BIRD step of a pass, which stale kernel routes may go.

    ``stale`` are observed routes of our protocol that are not desired.
    ``exported`` is what BIRD has confirmed (None: never confirmed). A stale
    prefix still exported, or with BIRD never confirmed, keeps its route and
    no deadline. Otherwise its deadline is set once (now + drain delay) and
    it is deleted when the deadline has passed. Prefixes no longer stale
    (desired again, or gone from the kernel) lose their deadline.
    """
    deadlines: dict[IPNetwork, float] = {}
    delete: set[IPNetwork] = set()
    for prefix in stale:
        if exported is None or prefix in exported:
            continue
        deadline = draining.get(prefix, now + drain_delay)
        if now >= deadline:
            delete.add(prefix)
        else:
            deadlines[prefix] = deadline
    return DrainPlan(deadlines, frozenset(delete))


def count_next_hops(routes: Routes) -> int:
    return sum(len(hops) for hops in routes.values())


def _first_of_version(addresses: Iterable[IPAddress], version: int) -> IPAddress | None:
    for address in addresses:
        if address.version == version:
            return address
    return None


def _sorted(prefixes: Iterable[IPNetwork]) -> list[IPNetwork]:
    # Deterministic order (IPv4 first, then by address) for logs and tests.
    return sorted(prefixes, key=lambda prefix: (prefix.version, prefix))
