"""In-memory stand-ins for the plugin's side-effect adapters (unit tests only)."""

from __future__ import annotations

from netconf.errors import NetlinkFailure, PodNetnsUnusable


class FakePodLoopback:
    """Addresses on ``lo`` per netns path; ``fail_on`` makes one address fail to add."""

    def __init__(self, netns_paths=("/run/netns/pod",), fail_on=None) -> None:
        self.addresses: dict[str, set] = {path: set() for path in netns_paths}
        self.fail_on = fail_on

    def ensure_addresses(self, netns, addresses):
        if netns not in self.addresses:
            raise PodNetnsUnusable(f"pod network namespace {netns!r} does not exist")
        for address in addresses:
            if address == self.fail_on:
                raise NetlinkFailure(f"cannot add {address}")
            self.addresses[netns].add((address, 32 if address.version == 4 else 128))

    def delete_addresses(self, netns, addresses):
        if netns not in self.addresses:
            return
        for address in addresses:
            self.addresses[netns].discard((address, 32 if address.version == 4 else 128))

    def list_addresses(self, netns):
        if netns not in self.addresses:
            raise PodNetnsUnusable(f"pod network namespace {netns!r} does not exist")
        return set(self.addresses[netns])
