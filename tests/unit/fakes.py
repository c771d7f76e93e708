"""In-memory stand-ins for the plugin's side-effect adapters (unit tests only).

One fake per Protocol the verbs use (cni_plugin.verbs.VerbContext), as
containernetworking/plugins keeps a fake Store beside its Store interface:

* FakePodLoopback   — cni_plugin.loopback.PodLoopback (real: NetlinkPodLoopback)
* FakePodAnnotations — cni_plugin.verbs.PodAnnotations (real: kubernetes.ApiPodAnnotations)
* FakeClock         — cni_plugin.verbs.Clock (real: verbs.SystemClock)

tests/unit/test_fakes_conform.py checks that each fake (and each real
adapter) has every method of its Protocol with the same parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from netconf.errors import KubernetesUnreachable, NetlinkFailure, PodNetnsUnusable


class FakePodLoopback:
    """Addresses on ``lo`` per netns path; ``fail_on`` makes one address fail to add.

    Each path stands for one namespace with a fixed inode (its position in
    ``netns_paths`` plus 1000); ``refused`` paths are ones ``identify``
    refuses, like the host's own namespace.
    """

    def __init__(self, netns_paths=("/run/netns/pod",), fail_on=None, refused=()) -> None:
        self.addresses: dict[str, set] = {path: set() for path in netns_paths}
        self.inodes = {path: 1000 + index for index, path in enumerate(netns_paths)}
        self.fail_on = fail_on
        self.refused = set(refused)

    def identify(self, netns):
        if netns in self.refused:
            raise PodNetnsUnusable(f"refusing CNI_NETNS: {netns!r} is not a pod's network namespace")
        return self.inodes.get(netns)

    def _check(self, netns, inode):
        if netns not in self.addresses or (inode is not None and self.inodes[netns] != inode):
            raise PodNetnsUnusable(f"pod network namespace {netns!r} does not exist")

    def ensure_addresses(self, netns, addresses, inode=None):
        self._check(netns, inode)
        for address in addresses:
            if address == self.fail_on:
                raise NetlinkFailure(f"cannot add {address}")
            self.addresses[netns].add((address, 32 if address.version == 4 else 128))

    def delete_addresses(self, netns, addresses, inode=None):
        if netns not in self.addresses:
            return
        self._check(netns, inode)
        for address in addresses:
            self.addresses[netns].discard((address, 32 if address.version == 4 else 128))

    def list_addresses(self, netns, inode=None):
        self._check(netns, inode)
        return set(self.addresses[netns])


class FakePodAnnotations:
    """Pods and their anycast annotation, by (namespace, name); None for a pod without one.

    A pod that is not listed is not found, as the API server answers 404
    (KubernetesUnreachable, code 11); ``error``, when set, is raised by
    every read instead. ``reads`` lists the pods asked for, in order.
    """

    def __init__(self, pods=None, error=None) -> None:
        self.pods: dict[tuple[str, str], str | None] = dict(pods or {})
        self.error = error
        self.reads: list[tuple[str, str]] = []

    def anycast_annotation(self, namespace, name):
        self.reads.append((namespace, name))
        if self.error is not None:
            raise self.error
        if (namespace, name) not in self.pods:
            raise KubernetesUnreachable(f"cannot read pod {namespace}/{name} from the API server (HTTP 404)")
        return self.pods[(namespace, name)]


class FakeClock:
    """A UTC clock that moves only by ``step`` per reading, or when a test calls ``advance``."""

    START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __init__(self, start=START, step=timedelta(0)) -> None:
        self.current = start
        self.step = step
        self.readings: list[datetime] = []

    def now(self):
        moment = self.current
        self.readings.append(moment)
        self.current = moment + self.step
        return moment

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)
