"""The documents of flock's shared contract, declared as pydantic models.

This is where a field is added, constrained or documented. The models are
not used at run time: ``netconf.compile_schemas`` (``make schemas``) turns
each into pydantic's core schema and writes ``netconf.compiled_schemas``,
which pydantic-core validates the runtime records with (``netconf.records``;
the records live in ``netconf.config``, ``netconf.results`` and
``netconf.state``). A unit test fails while the compiled file is stale.

Rules that keep a declaration compilable: validators and serializers are
module-level functions of the pydantic-free record modules (the compiled
schema imports them by name), and every nested model is itself declared
here and named in ``RECORD_MODULES``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

from netconf.config import (
    DEFAULT_ANNOTATION,
    DEFAULT_STATE_DIR,
    IPNetwork,
    absolute_path,
    file_path,
    format_network,
    parse_pool,
)
from netconf.results import check_interface_address
from netconf.state import SCHEMA_VERSION, IPAddress, format_ip_address, parse_ip_address

# --- network config (netconf.config) ----------------------------------------

# A pool: IPv4Network | IPv6Network in Python, its CIDR text in JSON.
Pool = Annotated[
    IPNetwork,
    PlainValidator(parse_pool),
    PlainSerializer(format_network, return_type=str, when_used="json"),
]


class FlockBlock(BaseModel):
    """Our own settings, under the ``flock`` key of the plugin's entry: strict."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    pools: list[Pool] = Field(description="CIDRs every anycast address must fall in; empty allows none.")
    state_dir: Annotated[str, AfterValidator(absolute_path)] = Field(DEFAULT_STATE_DIR, alias="stateDir")
    kubeconfig: Annotated[str, AfterValidator(file_path)] | None = None
    annotation: str = DEFAULT_ANNOTATION
    api_timeout: float = Field(2.0, alias="apiTimeout", gt=0, le=30)
    # Generous: a burst of pod starts queues on the lock; failing fast (code 11)
    # only makes the runtime retry the whole ADD later.
    lock_timeout: float = Field(30.0, alias="lockTimeout", gt=0, le=120)
    log_file: Annotated[str, AfterValidator(file_path)] | None = Field(None, alias="logFile")
    log_level: Literal["debug", "info", "warning", "error"] = Field("warning", alias="logLevel")


class CniArgs(BaseModel):
    """``args.cni`` of the network config (CONVENTIONS "args in network config")."""

    model_config = ConfigDict(extra="allow")

    anycast: list[str] | str | None = None


class ConfigArgs(BaseModel):
    model_config = ConfigDict(extra="allow")

    cni: CniArgs | None = None


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    anycast: list[str] | None = None


class NetworkConfig(BaseModel):
    """The runtime's envelope around our plugin entry: tolerant, unknown keys kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    cni_version: str = Field(alias="cniVersion")
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    flock: FlockBlock
    runtime_config: RuntimeConfig = Field(default_factory=RuntimeConfig, alias="runtimeConfig")
    args: ConfigArgs | None = None
    prev_result: dict[str, Any] | None = Field(None, alias="prevResult")
    valid_attachments: list[dict[str, Any]] | None = Field(None, alias="cni.dev/valid-attachments")
    attachments: list[dict[str, Any]] | None = Field(None, alias="cni.dev/attachments")


# --- CNI results (netconf.results) -------------------------------------------


class _Open(BaseModel):
    # Results keep every key they do not know: a chained plugin hands them on.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Interface(_Open):
    name: str
    mac: str | None = None
    sandbox: str | None = None


class IPConfig(_Open):
    address: Annotated[str, AfterValidator(check_interface_address)]
    gateway: str | None = None
    interface: int | None = None
    version: str | None = None


class Route(_Open):
    dst: str
    gw: str | None = None


class Result(_Open):
    cni_version: str | None = Field(None, alias="cniVersion")
    interfaces: list[Interface] | None = None
    ips: list[IPConfig] | None = None
    routes: list[Route] | None = None
    dns: dict[str, Any] | None = None


# --- state records (netconf.state) --------------------------------------------

# An address field: IPv4Address | IPv6Address in Python, its text in JSON.
StoredIPAddress = Annotated[
    IPAddress,
    PlainValidator(parse_ip_address),
    PlainSerializer(format_ip_address, return_type=str, when_used="json"),
]


class PodRef(BaseModel):
    """Who the attachment belongs to, when the runtime told us (K8S_* args)."""

    model_config = ConfigDict(frozen=True)

    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Allocation(BaseModel):
    """Anycast addresses put on ``lo`` of one attachment.

    ``pending`` means "these addresses may be on ``lo``, do not advertise":
    written before addresses are added (covering the old and the new set of
    a re-ADD) and before DEL removes them; ``committed`` once ``lo`` holds
    exactly ``anycast``. A plugin killed at any point leaves a record that
    DEL and GC know to clean up, and that the reconciler never advertises.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    network: str
    container_id: str = Field(alias="containerID")
    ifname: str
    netns: str
    # The namespace's inode at ADD: DEL and GC act on the recorded path only
    # while it still names the same namespace (paths are reused, inodes
    # within one boot are not). None in records written before it existed.
    netns_inode: int | None = Field(None, alias="netnsInode")
    pod: PodRef = Field(default_factory=PodRef)
    anycast: tuple[StoredIPAddress, ...]
    pod_ips: tuple[StoredIPAddress, ...] = Field(alias="podIPs")
    state: Literal["pending", "committed"]
    created_at: datetime = Field(alias="createdAt")
    updated_at: datetime = Field(alias="updatedAt")


class AllocationFile(BaseModel):
    """One file of the state directory: the schema version and one allocation."""

    model_config = ConfigDict(frozen=True)

    version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    allocation: Allocation


class LegacyStateDocument(BaseModel):
    """``state.json`` of flock 0.1 (schema version 1): every allocation in one document.

    Read once, to move its allocations into one file each (netconf.state).
    """

    version: Literal[1]
    allocations: list[Allocation]


# Where each declaration's runtime record lives (the compiled schema names
# the record class in place of the declaration).
RECORD_MODULES: dict[type[BaseModel], str] = {
    FlockBlock: "netconf.config",
    CniArgs: "netconf.config",
    ConfigArgs: "netconf.config",
    RuntimeConfig: "netconf.config",
    NetworkConfig: "netconf.config",
    Interface: "netconf.results",
    IPConfig: "netconf.results",
    Route: "netconf.results",
    Result: "netconf.results",
    PodRef: "netconf.state",
    Allocation: "netconf.state",
    AllocationFile: "netconf.state",
    LegacyStateDocument: "netconf.state",
}
