"""In-memory fakes of the reconciler's adapters, for tests without root.

They keep a shared journal of calls so tests can assert ordering (kernel
route before BIRD advertise; BIRD withdraw before kernel delete). Each
follows the real adapter's contract: FakeKernel raises KernelError
subclasses, FakeBird never raises and reports failures as outcomes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from netconf.errors import CniError, IOFailure, StateCorrupt
from netconf.state import StateDocument, record_file_name
from netconf.values import Allocation
from reconciler.desired import IPAddress, IPNetwork, NextHop
from reconciler.kernel import DeviceMissing, KernelError


@dataclass
class ManualClock:
    """A clock that only moves when told to."""

    now: float = 1000.0
    wall: float = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    """A state reader returning ``allocations`` and ``unreadable``, or raising ``error`` when set.

    Like the real store, a record listed in ``unreadable`` (by file name) is
    not among the allocations: :meth:`corrupt_record` moves it there.
    """

    def __init__(self, allocations: list[Allocation] | None = None) -> None:
        self.allocations = list(allocations or [])
        self.unreadable: dict[str, CniError] = {}
        self.error: Exception | None = None

    def read(self) -> StateDocument:
        if self.error is not None:
            raise self.error
        return StateDocument(list(self.allocations), dict(self.unreadable))

    def corrupt(self) -> None:
        """The whole directory unusable (what the real store raises IOFailure for)."""
        self.error = IOFailure("cannot list state directory /fake/allocations", "Permission denied")

    def corrupt_record(self, key: tuple[str, str, str]) -> str:
        """The record of ``key`` turns unparseable; returns its file name."""
        name = record_file_name(key)
        self.allocations = [item for item in self.allocations if item.key != key]
        self.unreadable[name] = StateCorrupt(f"state record /fake/allocations/{name} is not valid JSON; refusing to touch it")
        return name


class FakeKernel:
    """Routes in a dict; devices reach pod IPs through ``reachable``."""

    def __init__(self, journal: list[tuple[Any, ...]] | None = None) -> None:
        self.routes: dict[IPNetwork, frozenset[NextHop]] = {}
        self.reachable: dict[IPAddress, str] = {}
        self.devices: set[str] = set()
        self.journal = journal if journal is not None else []
        self.fail_writes: dict[IPNetwork, KernelError] = {}
        self.unreachable: KernelError | None = None
        self.local_addresses: set[IPAddress] = set()

    def attach(self, pod_ip: IPAddress, device: str) -> None:
        self.reachable[pod_ip] = device
        self.devices.add(device)

    def writes(self) -> list[tuple[Any, ...]]:
        return [entry for entry in self.journal if entry[0] in ("kernel.ensure", "kernel.delete")]

    def list_routes(self) -> dict[IPNetwork, frozenset[NextHop]]:
        if self.unreachable is not None:
            raise self.unreachable
        return dict(self.routes)

    def device_for(self, address: IPAddress) -> str | None:
        if self.unreachable is not None:
            raise self.unreachable
        return self.reachable.get(address)

    def list_local_addresses(self) -> frozenset[IPAddress]:
        if self.unreachable is not None:
            raise self.unreachable
        return frozenset(self.local_addresses)

    def ensure_route(self, prefix: IPNetwork, next_hops: frozenset[NextHop]) -> None:
        self.journal.append(("kernel.ensure", prefix, next_hops))
        if prefix in self.fail_writes:
            raise self.fail_writes[prefix]
        for hop in next_hops:
            if hop.device not in self.devices:
                raise DeviceMissing(f"device {hop.device} does not exist")
        self.routes[prefix] = frozenset(next_hops)

    def close(self) -> None:
        pass

    def delete_route(self, prefix: IPNetwork) -> bool:
        self.journal.append(("kernel.delete", prefix))
        return self.routes.pop(prefix, None) is not None


@dataclass(frozen=True)
class FakeOutcome:
    ok: bool
    reloaded: bool
    error: str | None = None
    unreachable: bool = False
    staged: bool = False


@dataclass
class FakeBird:
    """Records export sets; ``down`` makes every call fail like an unreachable socket.

    Like the real adapter, a call while BIRD is down still writes the
    include (``on_disk``), and :meth:`restart` makes BIRD load what is on
    disk. ``rejecting`` answers like a config BIRD refuses (BIRD reachable).
    """

    journal: list[tuple[Any, ...]] = field(default_factory=list)
    exported: frozenset[IPNetwork] = frozenset()
    on_disk: frozenset[IPNetwork] = frozenset()
    down: bool = False
    rejecting: bool = False
    calls: int = 0
    reloads: int = 0
    probes: int = 0
    peers: frozenset[IPAddress] = frozenset()

    def ensure_exported(self, prefixes: Collection[IPNetwork]) -> FakeOutcome:
        wanted = frozenset(prefixes)
        self.calls += 1
        self.journal.append(("bird.export", wanted))
        if self.down:
            self.on_disk = wanted
            return FakeOutcome(
                False, False, "cannot connect to /run/bird/bird.ctl: Connection refused", unreachable=True, staged=True
            )
        if self.rejecting:
            return FakeOutcome(False, False, "BIRD rejected the new configuration: 8002 bird.conf:3:1 syntax error")
        reloaded = wanted != self.exported
        if reloaded:
            self.reloads += 1
        self.exported = self.on_disk = wanted
        return FakeOutcome(True, reloaded)

    def probe(self) -> bool:
        self.probes += 1
        self.journal.append(("bird.probe", not self.down))
        return not self.down

    def kill(self) -> None:
        self.down = True
        self.exported = frozenset()

    def restart(self) -> None:
        """BIRD starts again and loads the include file on disk."""
        self.down = False
        self.exported = self.on_disk

    def peer_addresses(self) -> frozenset[IPAddress]:
        return self.peers

    def ensure_bootstrap_files(self) -> list[str]:
        return []

    def status(self) -> dict:
        return {"reachable": not self.down, "exported": sorted(str(p) for p in self.exported)}
