"""The node configuration of ``flock-reconciler`` (a YAML file).

Strict on purpose: an operator's typo must fail start-up with the field
named, not fall back to a default that advertises the wrong thing.
Pure: parsing and validation only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from netconf.config import DEFAULT_STATE_DIR
from netconf.records import describe_validation_error
from netconf.values import IPAddress, IPNetwork


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class RetrySettings(_Strict):
    initial: float = Field(default=0.5, gt=0)
    maximum: float = Field(default=30.0, gt=0)


class KubernetesSettings(_Strict):
    """The ``kubernetes`` readiness source: list + watch of this node's pods.

    ``kubeconfig``: a kubeconfig file; unset, the in-cluster service account
    is used (then ``$KUBECONFIG``, then ``~/.kube/config``). ``context``: a
    context of that file other than its current one. ``staleHold``: how
    long the last known readiness is kept while the API cannot be read;
    after that every allocation is withdrawn (and the log, the
    ``flock_reconciler_readiness_stale`` gauge and ``/readyz`` say so) until
    a list succeeds again. ``backoff``: retry delays of the list after a
    failure (doubling from ``initial`` up to ``maximum``). ``watchTimeout``:
    the server-side timeout of one watch request (jittered up to twice
    that); the watch then resumes from the last seen version.
    ``requestTimeout``: connect and list timeout.
    """

    kubeconfig: str | None = Field(default=None, min_length=1)
    context: str | None = Field(default=None, min_length=1)
    stale_hold: float = Field(default=60.0, alias="staleHold", ge=0)
    backoff: RetrySettings = Field(default_factory=RetrySettings)
    watch_timeout: int = Field(default=300, alias="watchTimeout", ge=1, le=86400)
    request_timeout: float = Field(default=10.0, alias="requestTimeout", gt=0)

    @model_validator(mode="after")
    def _backoff_order(self) -> KubernetesSettings:
        if self.backoff.maximum < self.backoff.initial:
            raise ValueError("backoff.maximum must be at least backoff.initial")
        return self


class ReadinessSettings(_Strict):
    """Where readiness comes from.

    ``always``: every committed allocation is Ready (non-Kubernetes hosts,
    the demo). ``file``: a JSON/YAML mapping of pod UID, ``namespace/name``
    or container ID to true/false, written by an external health checker
    and watched for changes. ``kubernetes``: the pods of this node
    (``nodeName``) from the API server, Ready when their ``Ready`` condition
    is True and they are not terminating (settings in ``kubernetes``).
    """

    source: Literal["always", "file", "kubernetes"] = "always"
    file: str | None = None
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _file_needs_path(self) -> ReadinessSettings:
        if self.source == "file" and not self.file:
            raise ValueError("readiness.file is required when readiness.source is 'file'")
        return self


class RouteSettings(_Strict):
    # 70 is unassigned in /etc/iproute2/rt_protos; the number marks routes
    # as ours so a restarted reconciler can find and adopt them.
    protocol: int = Field(default=70, ge=5, le=255)
    table: int = Field(default=254, ge=1, le=2**32 - 1)


class BirdSettings(_Strict):
    mode: Literal["include", "managed"] = "include"
    socket: str = "/run/bird/bird.ctl"
    include_file: str = Field(default="/etc/bird/flock-anycast.conf", alias="includeFile")
    # managed mode renders the whole bird.conf here; BIRD must be started with -c on it.
    config_file: str = Field(default="/etc/bird/bird.conf", alias="configFile")
    timeout: float = Field(default=5.0, gt=0)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    # While BIRD is unreachable, how often to try connecting to its socket,
    # independent of the retry back-off: a restarted BIRD is re-applied at
    # once instead of when the back-off timer happens to fire.
    probe_interval: float = Field(default=0.5, alias="probeInterval", gt=0, le=60)

    @field_validator("include_file", "config_file")
    @classmethod
    def _bird_path(cls, value: str) -> str:
        # Written into bird.conf as `include "..."`: BIRD resolves a relative
        # path from its own cwd and its strings cannot hold quotes or escapes.
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return _bird_string(value)


class Neighbor(_Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
    address: IPAddress
    remote_as: int = Field(alias="as", ge=1, le=2**32 - 1)
    password: str | None = None
    multihop: int | None = Field(default=None, ge=1, le=255)
    bfd: bool = False
    source_address: IPAddress | None = Field(default=None, alias="sourceAddress")
    interface: str | None = None
    families: tuple[Literal["ipv4", "ipv6"], ...] = ("ipv4", "ipv6")
    # IPv4 routes over an IPv6 session need an IPv4 next hop (LAB-NOTES 9).
    next_hop_ipv4: ipaddress.IPv4Address | None = Field(default=None, alias="nextHopIPv4")
    # The same for IPv6 routes over an IPv4 session.
    next_hop_ipv6: ipaddress.IPv6Address | None = Field(default=None, alias="nextHopIPv6")
    extended_next_hop: bool = Field(default=False, alias="extendedNextHop")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # The name becomes a BIRD protocol name, in one symbol space with the
        # static protocols and filters flock renders (flock_anycast4, ...).
        if value.lower().startswith("flock_"):
            raise ValueError("names starting with 'flock_' are reserved for flock's own BIRD symbols")
        return value

    @field_validator("password", "interface")
    @classmethod
    def _bird_quotable(cls, value: str | None) -> str | None:
        return None if value is None else _bird_string(value)


class BgpSettings(_Strict):
    router_id: ipaddress.IPv4Address = Field(alias="routerId")
    local_as: int = Field(alias="localAS", ge=1, le=2**32 - 1)
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = Field(default=(), alias="largeCommunities")
    hold_time: int = Field(default=9, alias="holdTime", ge=3, le=65535)
    keepalive_time: int = Field(default=3, alias="keepaliveTime", ge=1, le=21845)
    connect_retry_time: int = Field(default=5, alias="connectRetryTime", ge=1)
    # BIRD's defaults (connect delay 5 s, error wait 60..300 s) when unset;
    # labs and tests set 1 and (1, 2) so sessions come up and recover fast.
    connect_delay_time: int | None = Field(default=None, alias="connectDelayTime", ge=1)
    error_wait_time: tuple[int, int] | None = Field(default=None, alias="errorWaitTime")
    # Off by default: with graceful restart the peers keep this node's routes
    # for the restart time after its BIRD dies, sending anycast traffic to a
    # node that cannot serve it while other nodes could.
    graceful_restart: bool = Field(default=False, alias="gracefulRestart")
    neighbors: tuple[Neighbor, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _communities_shape(self) -> BgpSettings:
        for community in self.communities:
            _check_community(community, 2)
        for community in self.large_communities:
            _check_community(community, 3)
        if self.error_wait_time is not None:
            low, high = self.error_wait_time
            if not 1 <= low <= high:
                raise ValueError("errorWaitTime must be [min, max] with 1 <= min <= max")
        names = [neighbor.name for neighbor in self.neighbors]
        if len(set(names)) != len(names):
            raise ValueError("neighbor names must be unique (each is a BIRD protocol name)")
        return self


class HttpSettings(_Strict):
    """Where /metrics, /healthz and /readyz are served; empty disables."""

    listen: str = "127.0.0.1:9472"


class NodeConfig(_Strict):
    """The whole node config.

    ``pools``: the anycast networks this node may route and advertise — the
    same list as the plugin's ``flock.pools``. Required, with no default: a
    default of "everything" would let any record reach the fabric, and a
    default of "nothing" would withdraw every pod of a node upgraded without
    it; refusing to start (exit 2, routes and BIRD's export left in place)
    is the one choice that neither leaks nor drops traffic.
    """

    node_name: str = Field(alias="nodeName", min_length=1)
    pools: tuple[IPNetwork, ...] = Field(min_length=1)
    state_dir: str = Field(default=DEFAULT_STATE_DIR, alias="stateDir")
    readiness: ReadinessSettings = Field(default_factory=ReadinessSettings)
    routes: RouteSettings = Field(default_factory=RouteSettings)
    drain_delay: float = Field(default=2.0, alias="drainDelay", ge=0)
    resync_interval: float = Field(default=30.0, alias="resyncInterval", gt=0)
    debounce: float = Field(default=0.05, ge=0)
    max_wait: float = Field(default=0.5, alias="maxWait", gt=0)
    bird: BirdSettings = Field(default_factory=BirdSettings)
    bgp: BgpSettings | None = None
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", alias="logLevel")

    @field_validator("pools", mode="before")
    @classmethod
    def _pools_are_networks(cls, value: Any) -> Any:
        # A pool with host bits (192.0.2.1/24) is a typo for an address or a
        # network: refuse it rather than guess which, naming the entry.
        if isinstance(value, (list, tuple)):
            for entry in value:
                if not isinstance(entry, str):
                    raise ValueError(f"pool {entry!r} must be a CIDR string such as 192.0.2.0/24")
                try:
                    ipaddress.ip_network(entry, strict=True)
                except ValueError as exc:
                    raise ValueError(f"pool {entry!r} is not a network: {exc}") from None
        return value

    @model_validator(mode="after")
    def _managed_needs_bgp(self) -> NodeConfig:
        if self.bird.mode == "managed" and self.bgp is None:
            raise ValueError("bgp is required when bird.mode is 'managed'")
        if self.max_wait < self.debounce:
            raise ValueError("maxWait must be at least debounce")
        return self


class NodeConfigError(Exception):
    """The node config file cannot be read or is invalid; str() names the fields."""


def parse_node_config(data: Any) -> NodeConfig:
    """Validate decoded YAML; raises NodeConfigError naming every bad field."""
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise NodeConfigError("invalid node config: " + describe_validation_error(exc)) from exc


def load_node_config(path: str) -> NodeConfig:
    """Read and validate a YAML node config file; raises NodeConfigError."""
    import os

    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(expand_environment(handle.read(), os.environ))
    except OSError as exc:
        raise NodeConfigError(f"cannot read node config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise NodeConfigError(f"node config {path} is not valid YAML: {exc}") from exc
    return parse_node_config(data)


def _check_community(text: str, parts: int) -> None:
    pieces = text.split(":")
    if len(pieces) != parts or not all(piece.isdigit() for piece in pieces):
        raise ValueError(f"community {text!r} must be {parts} numbers joined by ':'")
    limit = 65535 if parts == 2 else 2**32 - 1
    if any(int(piece) > limit for piece in pieces):
        raise ValueError(f"community {text!r} has a part above {limit}")


def _bird_string(text: str) -> str:
    """BIRD 2.0 strings end at the next double quote and know no escapes."""
    if any(char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError("must not contain a double quote, a backslash or a control character")
    return text


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_environment(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` with the variable's value, so one ConfigMap serves every node.

    Raises NodeConfigError naming a variable that is not set: an empty node
    name or router id would be worse than not starting.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise NodeConfigError(f"node config refers to ${{{name}}}, which is not set in the environment")
        return environ[name]

    return _VARIABLE.sub(substitute, text)
