"""The value types every part of flock shares: addresses, the allocation record and its file form.

Pure: no I/O. The pure cores (``reconciler.desired``, ``cni_plugin.anycast``)
import their types from here, not from the file-I/O store
(``netconf.state``). The record classes are declared here once; their
validators and encoder are compiled from these declarations (``make
schemas``, see ``netconf.records``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from netconf.records import Record, encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Annotated, Literal

    from pydantic import Field, PlainSerializer, PlainValidator

    from netconf.fields import format_ip_address, parse_ip_address

# The state record schema this flock writes and reads.
SCHEMA_VERSION = 2

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
AllocationKey = tuple[str, str, str]


def utc_now() -> datetime:
    return datetime.now(UTC)


if TYPE_CHECKING:
    # An address field: IPv4Address | IPv6Address in Python, its text in JSON.
    StoredIPAddress = Annotated[
        IPAddress,
        PlainValidator(parse_ip_address),
        PlainSerializer(format_ip_address, return_type=str, when_used="json"),
    ]


class PodRef(Record, frozen=True):
    """Who the attachment belongs to, when the runtime told us (K8S_* args)."""

    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Allocation(Record, frozen=True, populate_by_name=True):
    """Anycast addresses put on ``lo`` of one attachment.

    ``pending`` means "these addresses may be on ``lo``, do not advertise":
    written before addresses are added (covering the old and the new set of
    a re-ADD) and before DEL removes them; ``committed`` once ``lo`` holds
    exactly ``anycast``. A plugin killed at any point leaves a record that
    DEL and GC know to clean up, and that the reconciler never advertises.
    """

    network: str
    container_id: Annotated[str, Field(alias="containerID")]
    ifname: str
    netns: str
    # The namespace's inode at ADD: DEL and GC act on the recorded path only
    # while it still names the same namespace (paths are reused, inodes
    # within one boot are not). None in records written before it existed.
    netns_inode: Annotated[int | None, Field(alias="netnsInode")] = None
    pod: Annotated[PodRef, Field(default_factory=PodRef)]
    anycast: tuple[StoredIPAddress, ...]
    pod_ips: Annotated[tuple[StoredIPAddress, ...], Field(alias="podIPs")]
    state: Literal["pending", "committed"]
    created_at: Annotated[datetime, Field(alias="createdAt")]
    updated_at: Annotated[datetime, Field(alias="updatedAt")]

    @property
    def key(self) -> AllocationKey:
        return (self.network, self.container_id, self.ifname)


class AllocationFile(Record, frozen=True, encoder=True):
    """One file of the state directory: the schema version and one allocation."""

    version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    allocation: Allocation


class LegacyStateDocument(Record):
    """``state.json`` of flock 0.1 (schema version 1): every allocation in one document.

    Read once, to move its allocations into one file each (see the module docstring).
    """

    version: Literal[1]
    allocations: list[Allocation]


def encode_record(allocation: Allocation) -> bytes:
    """The bytes of one record file: the JSON form of an ``AllocationFile``, by alias.

    What pydantic-core's serializer writes, built by the encoder the
    compiler generated from the declarations (``netconf.records.encode_json``).
    """
    document = encode_json(AllocationFile, {"version": SCHEMA_VERSION, "allocation": allocation})
    return json.dumps(document, indent=1).encode() + b"\n"


