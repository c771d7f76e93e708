"""One function per CNI verb that needs the config: ADD, DEL, CHECK, GC, STATUS.

Each verb gets validated inputs and every side-effect adapter it uses from
the dispatcher, in a VerbContext: the state store, the pod loopback
(``loopback.PodLoopback``), the pod annotations (``PodAnnotations``) and
the clock (``Clock``). Nothing here reaches the kernel, the API server or
the system clock directly, so tests run the verbs with in-memory fakes
(tests/unit/fakes.py); the real adapters are tested in namespaces and
against the stand-in API server.
"""

from __future__ import annotations

from cni_plugin.anycast import (
    AnycastRequest,
    annotated_anycast,
    check_families,
    check_pools,
    requested_anycast,
    usable_pod_addresses,
)
from cni_plugin.loopback import host_prefixlen
from cni_plugin.plugin_log import get_logger
from netconf.errors import (
    AnycastMissing,
    CleanupFailed,
    CniError,
    InvalidConfig,
    PluginNotAvailable,
    PodNetnsUnusable,
)
from netconf.results import parse_result, render_result
from netconf.state import record_network
from netconf.values import Allocation, PodRef, utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up; the Protocols are for type checkers
    from collections.abc import Iterable
    from datetime import datetime
    from typing import Any, Protocol

    from cni_plugin.environment import CniEnvironment
    from cni_plugin.loopback import PodLoopback
    from netconf.config import NetworkConfig
    from netconf.state import StateStore, Transaction
    from netconf.values import AllocationKey, IPAddress

log = get_logger("flock.cni")


if TYPE_CHECKING:

    class PodAnnotations(Protocol):
        """The pods' anycast annotation; the dispatcher's lazy ``kubernetes.ApiPodAnnotations``, a fake in the unit tests."""

        def anycast_annotation(self, namespace: str, name: str) -> str | None:
            """The annotation's value on pod ``namespace/name``, None when the pod has none.

            Raises KubernetesUnreachable (code 11) when the pod cannot be
            read or is not found, KubernetesRefused (107), and InvalidConfig
            for an unusable kubeconfig.
            """

    class Clock(Protocol):
        """The time the records carry; ``SystemClock`` here, a fake in the unit tests."""

        def now(self) -> datetime:
            """The current time, timezone-aware."""


class SystemClock:
    """The real ``Clock``: UTC wall time."""

    __slots__ = ()

    def now(self) -> datetime:
        return utc_now()


class VerbContext:
    """What a verb works with: validated inputs and its side-effect adapters."""

    __slots__ = ("env", "config", "store", "loopback", "annotations", "clock")

    def __init__(
        self,
        env: CniEnvironment,
        config: NetworkConfig,
        store: StateStore,
        loopback: PodLoopback,
        annotations: PodAnnotations,
        clock: Clock,
    ) -> None:
        self.env = env
        self.config = config
        self.store = store
        self.loopback = loopback
        self.annotations = annotations
        self.clock = clock

    @property
    def key(self) -> AllocationKey:
        return (self.config.name, self.env.container_id, self.env.ifname)


def cmd_add(context: VerbContext) -> dict[str, Any]:
    """Put the anycast set on the pod's ``lo`` and record it; return the result.

    Everything is validated before the state lock is taken. Under the lock:
    a ``pending`` record covering every address that may be on ``lo`` (the
    earlier set of a re-ADD and the new one) is written first, then ``lo``
    is changed, then the record is ``committed`` with the new set. A crash
    at any point leaves a record that DEL and GC clean up fully and that
    the reconciler never advertises; any failure is undone before the
    error is raised. The container's lock is held to the end, so execs for
    one pod never interleave and ``lo`` and the record always agree.
    """
    env, config = context.env, context.config
    if config.prev_result is None:
        raise InvalidConfig(
            "ADD without prevResult",
            "flock-anycast is a chained plugin: list it after the main plugin in a conflist",
        )
    previous = parse_result(config.prev_result)
    output = render_result(config.prev_result, config.cni_version)
    request = resolve_anycast(context)
    if request is None:
        log.info("no anycast addresses requested for %s; passing prevResult through", env.container_id)
        return output
    check_pools(request.addresses, config)
    all_pod_ips = tuple(previous.pod_addresses(env.ifname))
    check_families(request.addresses, all_pod_ips, env.ifname)
    # Only what the reconciler may use as a next hop is recorded.
    pod_ips = usable_pod_addresses(all_pod_ips, request.addresses)
    inode = context.loopback.identify(env.netns)
    if inode is None:
        raise PodNetnsUnusable(f"pod network namespace {env.netns!r} does not exist")

    with context.store.transaction(env.container_id) as transaction:
        earlier = transaction.get(context.key)
        if earlier is not None and not _recorded_netns_alive(context, earlier):
            earlier = None  # its namespace is gone, and its addresses with it
        if earlier is not None and (earlier.netns != env.netns or earlier.netns_inode not in (None, inode)):
            raise PodNetnsUnusable(
                f"attachment {env.container_id}/{env.ifname} is recorded in network namespace {earlier.netns!r}, "
                f"not {env.netns!r}",
                "DEL the attachment first; a runtime follows a failed ADD with DEL, which cleans up the recorded one",
            )
        now = context.clock.now()
        covered = _union(earlier.anycast if earlier else (), request.addresses)
        pending = Allocation(
            network=config.name,
            container_id=env.container_id,
            ifname=env.ifname,
            netns=env.netns,
            netns_inode=inode,
            pod=pod_identity(env),
            anycast=covered,
            pod_ips=pod_ips,
            state="pending",
            created_at=earlier.created_at if earlier else now,
            updated_at=now,
        )
        transaction.put(pending)
        transaction.flush()
        try:
            context.loopback.ensure_addresses(env.netns, request.addresses, inode)
            if earlier is not None:
                # A repeated ADD with a changed set: drop what is no longer asked for.
                stale = [address for address in earlier.anycast if address not in request.addresses]
                _release_addresses(context, transaction, pending, stale)
            transaction.put(pending.replace(anycast=request.addresses, state="committed", updated_at=context.clock.now()))
        except BaseException:
            _undo_add(context, transaction, pending, request.addresses, earlier)
            raise
    log.info(
        "ADD %s/%s: %s from %s",
        env.container_id,
        env.ifname,
        ", ".join(map(str, request.addresses)),
        request.source,
    )
    return output


def resolve_anycast(context: VerbContext) -> AnycastRequest | None:
    """Explicit sources first; the pod annotation only when none named addresses.

    The annotation is read only with a kubeconfig in the config and the
    pod's K8S_POD_NAMESPACE and K8S_POD_NAME in the arguments. Raises what
    ``requested_anycast``, ``PodAnnotations.anycast_annotation`` and
    ``annotated_anycast`` raise.
    """
    config, env = context.config, context.env
    request = requested_anycast(config, dict(env.args))
    if request is not None:
        return request
    namespace = env.args.get("K8S_POD_NAMESPACE")
    name = env.args.get("K8S_POD_NAME")
    if not config.flock.kubeconfig or not namespace or not name:
        return None
    value = context.annotations.anycast_annotation(namespace, name)
    return annotated_anycast(value, f"annotation {config.flock.annotation} of pod {namespace}/{name}")


def _undo_add(
    context: VerbContext,
    transaction: Transaction,
    pending: Allocation,
    added: tuple[IPAddress, ...],
    earlier: Allocation | None,
) -> None:
    """Put ``lo`` and the record back as they were before this ADD; the caller holds the lock.

    Best effort; a failure here is logged and the original error wins. The
    pending record, which covers every address that may be on ``lo``,
    stays until the undo is complete, so DEL or GC can always finish it.
    """
    try:
        if earlier is not None and earlier.state == "committed":
            # The stale part of the earlier set may already be gone.
            context.loopback.ensure_addresses(pending.netns, earlier.anycast, pending.netns_inode)
        kept = set(earlier.anycast) if earlier is not None else set()
        try:
            _release_addresses(context, transaction, pending, [a for a in added if a not in kept])
        except PodNetnsUnusable:
            pass  # the namespace could not be entered, so nothing was added to it
        if earlier is None:
            transaction.remove(context.key)
        else:
            transaction.put(earlier)
        transaction.flush()
    except Exception:
        log.exception("rollback of ADD %s failed; DEL or GC will clean up", context.key)


def cmd_del(context: VerbContext) -> None:
    """Remove our addresses and the allocation; succeed if already gone.

    Driven by the state record, never by prevResult (0.3.x sends none) nor
    by today's CNI_NETNS: the addresses are taken from the namespace
    recorded at ADD, while that path still names the same namespace. The
    record is marked ``pending`` before ``lo`` is touched, so a DEL killed
    half-way never leaves a committed record whose addresses are gone.
    Addresses another attachment of the same pod still claims stay.
    """
    if context.store.get(context.key) is None:
        return  # nothing recorded: no lock, no directory created
    with context.store.transaction(context.env.container_id) as transaction:
        record = transaction.get(context.key)
        if record is None:
            return
        _release_attachment(context, transaction, record)
        transaction.remove(context.key)
    log.info("DEL %s/%s: released %s", context.env.container_id, context.env.ifname, ", ".join(map(str, record.anycast)))


def cmd_check(context: VerbContext) -> None:
    """Error unless the committed allocation and every address on ``lo`` are in place."""
    env, config = context.env, context.config
    if config.prev_result is not None:
        parse_result(config.prev_result)
    request = requested_anycast(config, dict(env.args))
    record = context.store.get(context.key)
    if request is None and config.flock.kubeconfig and record is not None:
        # The annotation may have changed since ADD; what ADD applied is the truth.
        request = AnycastRequest("the allocation made at ADD", record.anycast)
    if request is None:
        if record is not None:
            raise AnycastMissing(
                f"allocation for {env.container_id}/{env.ifname} exists but the config requests no anycast"
            )
        return
    if record is None:
        raise AnycastMissing(f"no allocation recorded for {env.container_id}/{env.ifname} in network {config.name!r}")
    if record.state != "committed":
        raise AnycastMissing(f"allocation for {env.container_id}/{env.ifname} is {record.state}, not committed")
    if set(record.anycast) != set(request.addresses):
        raise AnycastMissing(
            f"allocation for {env.container_id}/{env.ifname} holds {', '.join(map(str, record.anycast))}, "
            f"config requests {', '.join(map(str, request.addresses))}"
        )
    if record.netns != env.netns:
        raise AnycastMissing(
            f"allocation for {env.container_id}/{env.ifname} is in network namespace {record.netns!r}, not {env.netns!r}"
        )
    present = context.loopback.list_addresses(record.netns, record.netns_inode)
    missing = [str(address) for address in request.addresses if (address, host_prefixlen(address)) not in present]
    if missing:
        raise AnycastMissing(f"anycast address missing from lo in {env.netns}: {', '.join(missing)}")


def cmd_gc(context: VerbContext) -> None:
    """Drop this network's allocations whose attachment the runtime no longer lists.

    Continues past individual failures and reports them together: a record
    whose cleanup failed stays (``pending``), and so does one that cannot
    be read, so the next GC tries again. Each stale attachment is released
    as DEL releases it, under its container's lock, one after another.
    """
    config = context.config
    valid = config.gc_attachments()
    if valid is None:
        raise InvalidConfig("GC without cni.dev/valid-attachments", "the runtime must list the attachments still in use")
    snapshot = context.store.read()
    failures = [
        f"{name}: {error.msg}"
        for name, error in sorted(snapshot.unreadable.items())
        if record_network(name) in (config.name, None)
    ]
    stale = [
        item.key
        for item in snapshot.allocations
        if item.network == config.name and (item.container_id, item.ifname) not in valid
    ]
    cleaned = 0
    for key in stale:
        try:
            with context.store.transaction(key[1]) as transaction:
                record = transaction.get(key)
                if record is None:
                    continue  # gone since the snapshot
                _release_attachment(context, transaction, record)
                transaction.remove(key)
            cleaned += 1
        except CniError as exc:
            failures.append(f"{key[1]}/{key[2]}: {exc.msg}")
    if cleaned:
        log.info("GC removed %d stale allocations", cleaned)
    if failures:
        raise CleanupFailed(f"GC could not clean up {len(failures)} allocations", "; ".join(failures))


def _release_attachment(context: VerbContext, transaction: Transaction, record: Allocation) -> None:
    """Take a departing attachment's addresses off its ``lo``; the caller then removes the record.

    The record is marked ``pending`` (durably) before ``lo`` is touched, so
    a crash half-way never leaves a committed record whose addresses are
    gone (advertised, but answered by nobody). With the namespace gone
    there is nothing to touch and nothing to mark.
    """
    if not _recorded_netns_alive(context, record):
        return
    if record.state != "pending":
        record = record.replace(state="pending", updated_at=context.clock.now())
        transaction.put(record)
        transaction.flush()
    _release_addresses(context, transaction, record, record.anycast)


def _recorded_netns_alive(context: VerbContext, record: Allocation) -> bool:
    """Whether the namespace recorded at ADD is still at its path (and is a pod's).

    A path that now names something else — nothing, another namespace, a
    file, the host's namespace — means the recorded namespace is gone for
    us: its addresses went with it, and nothing else may be touched.
    """
    try:
        inode = context.loopback.identify(record.netns)
    except PodNetnsUnusable as exc:
        log.warning("recorded namespace of %s is unusable (%s); leaving it alone", record.key, exc.msg)
        return False
    return inode is not None and (record.netns_inode is None or inode == record.netns_inode)


def _release_addresses(
    context: VerbContext, transaction: Transaction, record: Allocation, addresses: Iterable[IPAddress]
) -> None:
    """Remove ``addresses`` from ``record``'s ``lo``, except those another attachment there still claims.

    A pod with two attachments (two networks, each passing the pod's
    anycast list) holds the addresses once on its one ``lo``; while any
    other record of that namespace — pending or committed — claims an
    address, it stays. When another attachment's record cannot be read its
    claims are unknown, so nothing is removed: an unclaimed address left on
    a pod's ``lo`` is harmless, a claimed one removed black-holes traffic.
    The caller holds the lock, so no other exec changes claims meanwhile.
    """
    addresses = list(addresses)
    if not addresses:
        return
    siblings, unreadable = transaction.container_siblings(record.key)
    if unreadable:
        log.warning(
            "not removing %s from lo of %s: records %s of the same container cannot be read",
            ", ".join(map(str, addresses)),
            record.key,
            ", ".join(unreadable),
        )
        return
    claimed: set[IPAddress] = set()
    for sibling in siblings:
        if _same_netns(sibling, record):
            claimed.update(sibling.anycast)
    remove = [address for address in addresses if address not in claimed]
    context.loopback.delete_addresses(record.netns, remove, record.netns_inode)


def _same_netns(one: Allocation, other: Allocation) -> bool:
    if one.netns_inode is not None and other.netns_inode is not None:
        return one.netns_inode == other.netns_inode
    return one.netns == other.netns  # a record written before inodes were


def _union(first: Iterable[IPAddress], second: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys((*first, *second)))


def cmd_status(context: VerbContext) -> None:
    """Succeed when an ADD could be served: state directory, lock and document usable."""
    try:
        context.store.probe()
    except CniError as exc:
        raise PluginNotAvailable(f"flock-anycast cannot serve ADD: {exc.msg}", exc.details) from exc


def pod_identity(env: CniEnvironment) -> PodRef:
    return PodRef(
        namespace=env.args.get("K8S_POD_NAMESPACE") or None,
        name=env.args.get("K8S_POD_NAME") or None,
        uid=env.args.get("K8S_POD_UID") or None,
    )
