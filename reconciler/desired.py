"""Pure core of the reconciler: what the kernel and BIRD should hold, and how to get there.

Nothing here does I/O, reads a clock or logs: every input is an argument
(the allocations snapshot, a readiness predicate, a device lookup the loop
filled from the kernel beforehand, the observed routes, the time ``now``)
and every output is a frozen value the loop applies through its adapters.

Three steps, each a function:

- :func:`desired_routes` — committed x Ready allocations -> ``{prefix: next hops}``
  plus the next hops that had to be skipped and the addresses the
  :class:`AddressPolicy` refused, as data.
- :func:`diff` — desired vs. observed kernel routes (and the set BIRD last
  confirmed) -> a :class:`RoutePlan`: route actions and the export set.
- :func:`plan_drain` — after BIRD answered: which stale kernel routes start
  their drain delay and which have waited long enough to be deleted.

Between passes the BIRD side is one value, :class:`BirdState` (what BIRD
confirmed, the last failure, when to retry and when to probe), moved on by
pure transitions: :func:`plan_bird_call` (call BIRD this pass?),
:func:`after_bird_success`, :func:`after_bird_failure` and
:func:`after_bird_probe`.

A record is input from a file, not a fact: :class:`AddressPolicy` keeps
every anycast address outside the configured pools, equal to one of the
node's own addresses, to a BGP peer's address or to any allocation's pod IP
out of the routes, whatever the record says.

The safety rule that ties them together: a kernel route is deleted only once
BIRD has confirmed an export set without its prefix *and* the drain delay
has passed since then, so peers stop sending before the node stops routing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_network
from typing import Final, Literal

from netconf.addresses import pool_edge_name, special_address_reason, usable_in_pool, usable_next_hop
from netconf.values import Allocation, AllocationKey, IPAddress, IPNetwork

Routes = Mapping[IPNetwork, frozenset["NextHop"]]

SkipReason = Literal["no-pod-ip-of-family", "no-device"]
SKIP_NO_POD_IP: Final = "no-pod-ip-of-family"
SKIP_NO_DEVICE: Final = "no-device"

REFUSE_SPECIAL: Final = "special-address"
REFUSE_OUTSIDE_POOLS: Final = "outside-pools"
REFUSE_NODE_ADDRESS: Final = "node-address"
REFUSE_PEER_ADDRESS: Final = "peer-address"
REFUSE_POD_IP: Final = "pod-ip"
REFUSE_REASONS = (REFUSE_SPECIAL, REFUSE_OUTSIDE_POOLS, REFUSE_NODE_ADDRESS, REFUSE_PEER_ADDRESS, REFUSE_POD_IP)
RefuseReason = Literal["special-address", "outside-pools", "node-address", "peer-address", "pod-ip"]


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
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class RefusedAddress:
    """An anycast address of a committed record that the policy will not route (an error as data)."""

    allocation: AllocationKey
    pod: str
    anycast: IPAddress
    reason: RefuseReason
    detail: str


@dataclass(frozen=True)
class AddressPolicy:
    """What this node may route, whatever a record says.

    ``pools``: the node config's pools. ``node_addresses``: every address on
    an interface of the node's netns (routing one as a /32 or /128 would
    take it from the node). ``peer_addresses``: the BGP neighbors' addresses
    (a /32 of the peer's own address would reach the peer and hijack it).
    Pod IPs of the allocations are refused too (:func:`desired_routes` knows
    them). ``None`` as a policy means "trust every record" (tests of other
    parts only).
    """

    pools: tuple[IPNetwork, ...]
    node_addresses: frozenset[IPAddress] = frozenset()
    peer_addresses: frozenset[IPAddress] = frozenset()
    # Derived from ``pools`` in __post_init__; not a constructor argument.
    _ranges: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (version, network as int, mask as int): integer masking avoids the
        # object work of `address in network` on ipaddress objects, which
        # dominates when 10,000s of addresses are checked per pass.
        ranges = tuple(
            (pool.version, int(pool.network_address), int(pool.netmask)) for pool in self.pools
        )
        object.__setattr__(self, "_ranges", ranges)

    def in_pools(self, address: IPAddress) -> bool:
        value, version = int(address), address.version
        return any(v == version and value & mask == network for v, network, mask in self._ranges)

    def refusal(self, address: IPAddress, pod_ips: Collection[IPAddress]) -> tuple[RefuseReason, str] | None:
        """Why ``address`` must not be routed, or None; ``pod_ips``: every allocation's pod IPs."""
        special = special_address_reason(address)
        if special is not None:
            return REFUSE_SPECIAL, f"{address}: {special}"
        if not self.in_pools(address):
            pools = ", ".join(str(pool) for pool in self.pools)
            return REFUSE_OUTSIDE_POOLS, f"{address} is outside the configured pools ({pools})"
        containing = [pool for pool in self.pools if pool.version == address.version and address in pool]
        if not any(usable_in_pool(address, pool) for pool in containing):
            pool = containing[0]
            return REFUSE_OUTSIDE_POOLS, f"{address} is the {pool_edge_name(address, pool)} address of pool {pool}"
        if address in self.node_addresses:
            return REFUSE_NODE_ADDRESS, f"{address} is an address of this node"
        if address in self.peer_addresses:
            return REFUSE_PEER_ADDRESS, f"{address} is a BGP peer's address"
        if address in pod_ips:
            return REFUSE_POD_IP, f"{address} is a pod IP of an allocation on this node"
        return None


@dataclass(frozen=True)
class DesiredRoutes:
    """The routes the kernel should hold, and what was skipped or refused on the way."""

    routes: Mapping[IPNetwork, frozenset[NextHop]]
    skipped: tuple[SkippedNextHop, ...] = ()
    refused: tuple[RefusedAddress, ...] = ()


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


def refused_addresses(allocations: Iterable[Allocation], policy: AddressPolicy) -> tuple[RefusedAddress, ...]:
    """Every anycast address of a committed allocation that ``policy`` refuses, Ready or not.

    Not only Ready ones: a bad record is reported as soon as it is
    committed, not when its pod happens to become Ready. Pending records
    are left alone (the plugin is still writing them, and checks pools itself).
    """
    allocations = list(allocations)
    pod_ips = frozenset(address for allocation in allocations for address in allocation.pod_ips)
    refused: list[RefusedAddress] = []
    for allocation in allocations:
        if allocation.state != "committed":
            continue
        for anycast in dict.fromkeys(allocation.anycast):
            verdict = policy.refusal(anycast, pod_ips)
            if verdict is not None:
                refused.append(RefusedAddress(allocation.key, pod_label(allocation), anycast, *verdict))
    return tuple(refused)


def desired_routes(
    allocations: Iterable[Allocation],
    is_ready: Callable[[Allocation], bool],
    device_for: Callable[[IPAddress], str | None],
    policy: AddressPolicy | None = None,
) -> DesiredRoutes:
    """Committed allocations of Ready pods -> one host route per anycast address.

    The next hop of an address is the pod's first unicast IP of the same
    family (in the order the main plugin reported them) and the host device
    that reaches it. Several Ready pods with the same address give one
    prefix with several next hops (ECMP). Pending allocations are never
    asked about readiness: their addresses may not be on the pod yet.
    An address ``policy`` refuses gets no route (see :func:`refused_addresses`).
    """
    allocations = list(allocations)
    refused = refused_addresses(allocations, policy) if policy is not None else ()
    barred = {(item.allocation, item.anycast) for item in refused}
    routes: dict[IPNetwork, set[NextHop]] = {}
    skipped: list[SkippedNextHop] = []
    for allocation in allocations:
        if allocation.state != "committed" or not is_ready(allocation):
            continue
        for anycast in dict.fromkeys(allocation.anycast):
            if barred and (allocation.key, anycast) in barred:
                continue
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
        refused,
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


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Exponential back-off: initial, 2x, 4x... capped at maximum (failures >= 1)."""
    # int ** int is typed Any (a negative exponent gives a float); here it is never negative.
    factor: int = 2 ** max(0, failures - 1)
    return min(maximum, initial * factor)


@dataclass(frozen=True)
class BirdState:
    """The BIRD side of the loop between passes; replaced by the transitions below, never mutated.

    ``exported``: the set BIRD last confirmed (None: never). ``error`` and
    ``failures``: the last failed apply and how many failed in a row.
    ``attempted``: the set last handed to BIRD. ``retry_at``: when a failed
    set may be tried again (monotonic). ``probe_at``: when to probe BIRD's
    socket, set only while nothing listens on it (a BIRD that answers but
    refuses the config waits out the back-off). ``staged``: prefixes written
    to the include on disk while BIRD was unreachable and not confirmed
    since — a BIRD starting meanwhile may advertise them.
    """

    exported: frozenset[IPNetwork] | None = None
    error: str | None = None
    failures: int = 0
    attempted: frozenset[IPNetwork] | None = None
    retry_at: float | None = None
    probe_at: float | None = None
    staged: frozenset[IPNetwork] = frozenset()

    @property
    def may_advertise(self) -> frozenset[IPNetwork] | None:
        """What BIRD may be advertising now (None: unknown), the ``exported`` of :func:`plan_drain`.

        An unreachable socket does not prove that BIRD stopped advertising,
        and a BIRD (re)started meanwhile loads the staged include: a withdrawal
        counts only once BIRD itself confirmed it.
        """
        return None if self.exported is None else self.exported | self.staged


def plan_bird_call(state: BirdState, export: frozenset[IPNetwork], full: bool, now: float) -> bool:
    """Should this pass hand ``export`` to BIRD?

    Yes when it differs from what BIRD confirmed, on a ``full`` resync, and
    while failing — except for the very set that failed, until its
    ``retry_at`` (a changed set is tried at once, even while backing off).
    """
    failing = state.error is not None
    if export == state.exported and not failing and not full:
        return False
    if failing and export == state.attempted and state.retry_at is not None and now < state.retry_at:
        return False  # same request failed recently; the retry is scheduled
    return True


def after_bird_success(state: BirdState, export: frozenset[IPNetwork]) -> BirdState:
    """BIRD confirmed ``export``: no error, no retry, no probe, nothing staged."""
    return BirdState(exported=export, attempted=export)


def after_bird_failure(
    state: BirdState,
    export: frozenset[IPNetwork],
    error: str,
    *,
    unreachable: bool,
    staged: bool,
    now: float,
    retry_initial: float,
    retry_maximum: float,
    probe_interval: float,
) -> BirdState:
    """BIRD did not confirm ``export``: retry after the back-off, probe while ``unreachable``.

    ``staged``: the include on disk holds ``export`` anyway (see
    :attr:`BirdState.may_advertise`). ``exported`` stays what BIRD confirmed last.
    """
    failures = state.failures + 1
    return replace(
        state,
        error=error,
        failures=failures,
        attempted=export,
        retry_at=now + backoff_delay(failures, retry_initial, retry_maximum),
        probe_at=now + probe_interval if unreachable else None,
        staged=state.staged | export if staged else state.staged,
    )


def after_bird_probe(state: BirdState, back: bool, now: float, probe_interval: float) -> BirdState:
    """A probe of BIRD's socket: ``back`` drops the back-off wait (the next pass re-applies); else probe again later."""
    if back:
        return replace(state, probe_at=None, retry_at=None)
    return replace(state, probe_at=now + probe_interval)


def count_next_hops(routes: Routes) -> int:
    return sum(len(hops) for hops in routes.values())


def _first_of_version(addresses: Iterable[IPAddress], version: int) -> IPAddress | None:
    """The first pod IP of ``version`` usable as a next hop (a record may name loopback or worse)."""
    for address in addresses:
        if address.version == version and usable_next_hop(address):
            return address
    return None


def _sorted(prefixes: Iterable[IPNetwork]) -> list[IPNetwork]:
    # Deterministic order (IPv4 first, then by address) for logs and tests.
    return sorted(prefixes, key=lambda prefix: (prefix.version, prefix))
