"""In-memory stand-ins for the plugin's side-effect adapters (unit tests only)."""

from __future__ import annotations

from netconf.errors import NetlinkFailure, PodNetnsUnusable


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
