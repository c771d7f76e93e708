"""One function per CNI verb that needs the config: ADD, DEL, CHECK, GC, STATUS.

Each verb gets validated inputs and its side-effect adapters (the state
store and the pod loopback) from the dispatcher, so tests can run it with
fakes; the real adapters are tested in namespaces.
"""

from __future__ import annotations

from cni_plugin.anycast import AnycastRequest, check_families, check_pools, requested_anycast
from cni_plugin.loopback import host_prefixlen, netns_exists
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
from netconf.state import Allocation, PodRef, utc_now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni_plugin.environment import CniEnvironment
    from cni_plugin.loopback import PodLoopback
    from netconf.config import NetworkConfig
    from netconf.state import AllocationKey, StateStore

log = get_logger("flock.cni")


class VerbContext:
    """What a verb works with: validated inputs and its two side-effect adapters."""

    __slots__ = ("env", "config", "store", "loopback")

    def __init__(self, env: CniEnvironment, config: NetworkConfig, store: StateStore, loopback: PodLoopback) -> None:
        self.env = env
        self.config = config
        self.store = store
        self.loopback = loopback

    @property
    def key(self) -> AllocationKey:
        return (self.config.name, self.env.container_id, self.env.ifname)


def cmd_add(context: VerbContext) -> dict[str, Any]:
    """Put the anycast set on the pod's ``lo`` and record it; return the result.

    pending → addresses → committed, so a crash at any point leaves a record
    DEL and GC can clean up, and the reconciler advertises only committed
    allocations. Any failure after the pending write is undone before the
    error is raised.
    """
    env, config = context.env, context.config
    if config.prev_result is None:
        raise InvalidConfig(
            "ADD without prevResult",
            "flock-anycast is a chained plugin: list it after the main plugin in a conflist",
        )
    previous = parse_result(config.prev_result)
    output = render_result(config.prev_result, config.cni_version)
    request = resolve_anycast(config, env)
    if request is None:
        log.info("no anycast addresses requested for %s; passing prevResult through", env.container_id)
        return output
    check_pools(request.addresses, config)
    pod_ips = tuple(previous.pod_addresses(env.ifname))
    check_families(request.addresses, pod_ips, env.ifname)
    if not netns_exists(env.netns):
        raise PodNetnsUnusable(f"pod network namespace {env.netns!r} does not exist")

    now = utc_now()
    with context.store.transaction() as transaction:
        earlier = transaction.get(context.key)
        transaction.put(
            Allocation(
                network=config.name,
                container_id=env.container_id,
                ifname=env.ifname,
                netns=env.netns,
                pod=pod_identity(env),
                anycast=request.addresses,
                pod_ips=pod_ips,
                state="pending",
                created_at=earlier.created_at if earlier else now,
                updated_at=now,
            )
        )
    try:
        context.loopback.ensure_addresses(env.netns, request.addresses)
        if earlier is not None:
            # A repeated ADD with a changed set: drop what is no longer asked for.
            stale = [address for address in earlier.anycast if address not in request.addresses]
            context.loopback.delete_addresses(env.netns, stale)
        with context.store.transaction() as transaction:
            pending = transaction.get(context.key)
            assert pending is not None, "pending allocation vanished under the lock"
            transaction.put(pending.replace(state="committed", updated_at=utc_now()))
    except BaseException:
        _undo_add(context, request.addresses, earlier)
        raise
    log.info(
        "ADD %s/%s: %s from %s",
        env.container_id,
        env.ifname,
        ", ".join(map(str, request.addresses)),
        request.source,
    )
    return output


def resolve_anycast(config: NetworkConfig, env: CniEnvironment) -> AnycastRequest | None:
    """Explicit sources first; the pod annotation only when none named addresses."""
    request = requested_anycast(config, dict(env.args))
    if request is not None:
        return request
    if not config.flock.kubeconfig:
        return None
    # Imported only here: most ADDs never reach the annotation source.
    from cni_plugin.kubernetes import annotated_anycast

    return annotated_anycast(config, env)


def _undo_add(context: VerbContext, addresses, earlier: Allocation | None) -> None:
    """Put ``lo`` and the state file back as they were before this ADD.

    Best effort; a failure here is logged and the original error wins. When
    addresses may still be on ``lo``, the pending record stays so DEL or GC
    can remove them.
    """
    kept = set(earlier.anycast) if earlier is not None else set()
    try:
        context.loopback.delete_addresses(context.env.netns, [a for a in addresses if a not in kept])
    except PodNetnsUnusable:
        pass  # the namespace could not be entered, so nothing was added to it
    except Exception:
        log.exception("rollback of ADD %s failed; DEL or GC will clean up", context.key)
        return
    try:
        with context.store.transaction() as transaction:
            if earlier is None:
                transaction.remove(context.key)
            else:
                transaction.put(earlier)
    except Exception:
        log.exception("rollback of ADD %s failed; DEL or GC will clean up", context.key)


def cmd_del(context: VerbContext) -> None:
    """Remove our addresses and the allocation; succeed if already gone.

    Driven by the state file, never by prevResult (0.3.x sends none). With
    an empty CNI_NETNS the runtime says the namespace is gone, so only the
    record is dropped.
    """
    record = context.store.get(context.key)
    if record is None:
        return
    netns = context.env.netns
    if netns_exists(netns):
        context.loopback.delete_addresses(netns, record.anycast)
    with context.store.transaction() as transaction:
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
    present = context.loopback.list_addresses(env.netns)
    missing = [str(address) for address in request.addresses if (address, host_prefixlen(address)) not in present]
    if missing:
        raise AnycastMissing(f"anycast address missing from lo in {env.netns}: {', '.join(missing)}")


def cmd_gc(context: VerbContext) -> None:
    """Drop this network's allocations whose attachment the runtime no longer lists.

    Continues past individual failures and reports them together; a record
    whose cleanup failed stays, so the next GC tries again.
    """
    config = context.config
    valid = config.gc_attachments()
    if valid is None:
        raise InvalidConfig("GC without cni.dev/valid-attachments", "the runtime must list the attachments still in use")
    stale = [
        item
        for item in context.store.read().allocations
        if item.network == config.name and (item.container_id, item.ifname) not in valid
    ]
    failures: list[str] = []
    cleaned: list[AllocationKey] = []
    for record in stale:
        try:
            context.loopback.delete_addresses(record.netns, record.anycast)
            cleaned.append(record.key)
        except CniError as exc:
            failures.append(f"{record.container_id}/{record.ifname}: {exc.msg}")
    if cleaned:
        with context.store.transaction() as transaction:
            for key in cleaned:
                transaction.remove(key)
        log.info("GC removed %d stale allocations", len(cleaned))
    if failures:
        raise CleanupFailed(f"GC could not clean up {len(failures)} allocations", "; ".join(failures))


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
