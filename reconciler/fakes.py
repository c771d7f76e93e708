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

from netconf.errors import StateCorrupt
from netconf.state import Allocation, StateDocument
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
    """A state reader returning ``allocations``, or raising ``error`` when set."""

    def __init__(self, allocations: list[Allocation] | None = None) -> None:
        self.allocations = list(allocations or [])
        self.error: Exception | None = None

    def read(self) -> StateDocument:
        if self.error is not None:
            raise self.error
        return StateDocument(allocations=list(self.allocations))

    def corrupt(self) -> None:
        self.error = StateCorrupt("state file /fake/state.json is not valid JSON; refusing to touch it")


class FakeKernel:
    """Routes in a dict; devices reach pod IPs through ``reachable``."""

    def __init__(self, journal: list[tuple[Any, ...]] | None = None) -> None:
        self.routes: dict[IPNetwork, frozenset[NextHop]] = {}
        self.reachable: dict[IPAddress, str] = {}
        self.devices: set[str] = set()
        self.journal = journal if journal is not None else []
        self.fail_writes: dict[IPNetwork, KernelError] = {}
        self.unreachable: KernelError | None = None

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

    def ensure_route(self, prefix: IPNetwork, next_hops: frozenset[NextHop]) -> None:
        self.journal.append(("kernel.ensure", prefix, next_hops))
        if prefix in self.fail_writes:
            raise self.fail_writes[prefix]
        for hop in next_hops:
            if hop.device not in self.devices:
                raise DeviceMissing(f"device {hop.device} does not exist")
        self.routes[prefix] = frozenset(next_hops)

    def delete_route(self, prefix: IPNetwork) -> bool:
        self.journal.append(("kernel.delete", prefix))
        return self.routes.pop(prefix, None) is not None


@dataclass(frozen=True)
class FakeOutcome:
    ok: bool
    reloaded: bool
    error: str | None = None


@dataclass
class FakeBird:
    """Records export sets; ``down`` makes every call fail like an unreachable socket."""

    journal: list[tuple[Any, ...]] = field(default_factory=list)
    exported: frozenset[IPNetwork] = frozenset()
    down: bool = False
    calls: int = 0
    reloads: int = 0

    def ensure_exported(self, prefixes: Collection[IPNetwork]) -> FakeOutcome:
        wanted = frozenset(prefixes)
        self.calls += 1
        self.journal.append(("bird.export", wanted))
        if self.down:
            return FakeOutcome(False, False, "cannot connect to /run/bird/bird.ctl: Connection refused")
        reloaded = wanted != self.exported
        if reloaded:
            self.reloads += 1
        self.exported = wanted
        return FakeOutcome(True, reloaded)

    def status(self) -> dict:
        return {"reachable": not self.down, "exported": sorted(str(p) for p in self.exported)}
