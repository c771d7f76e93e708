"""The network configuration a runtime hands to ``flock-anycast`` on stdin.

Two layers of strictness, as the CNI conventions ask: the envelope the
runtime builds (``cniVersion``, ``name``, ``runtimeConfig``, ``prevResult``,
``args`` and whatever else it passes through) tolerates unknown keys, while
our own ``flock`` block is strict so that a typo in an operator's conflist is
reported (code 2, naming key and value) instead of silently ignored.

Pure: parsing and validation only, no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from netconf.errors import InvalidConfig, UnsupportedField

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_STATE_DIR = "/var/lib/flock"
DEFAULT_ANNOTATION = "flock.fritzlab.net/anycast"


class FlockBlock(BaseModel):
    """Our own settings, under the ``flock`` key of the plugin's entry."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    pools: list[IPNetwork] = Field(
        description="CIDRs every anycast address must fall in; empty allows none."
    )
    state_dir: str = Field(DEFAULT_STATE_DIR, alias="stateDir")
    kubeconfig: str | None = None
    annotation: str = DEFAULT_ANNOTATION
    api_timeout: float = Field(2.0, alias="apiTimeout", gt=0, le=30)
    # Generous: a burst of pod starts queues on the lock; failing fast (code 11)
    # only makes the runtime retry the whole ADD later.
    lock_timeout: float = Field(30.0, alias="lockTimeout", gt=0, le=120)
    log_file: str | None = Field(None, alias="logFile")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", alias="logLevel"
    )

    @field_validator("pools", mode="before")
    @classmethod
    def _strict_cidrs(cls, value: Any) -> Any:
        # ip_network(strict=True) rejects "10.0.0.1/24": a pool with host
        # bits set is almost always a typo for a different prefix.
        if isinstance(value, list):
            return [ipaddress.ip_network(item, strict=True) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("stateDir must be an absolute path")
        return value


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
    """The runtime's envelope around our plugin entry; unknown keys are kept."""

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

    def gc_attachments(self) -> set[tuple[str, str]] | None:
        """(containerID, ifname) pairs the runtime still uses, from either GC key."""
        listed = self.valid_attachments if self.valid_attachments is not None else self.attachments
        if listed is None:
            return None
        return {(str(item.get("containerID", "")), str(item.get("ifname", ""))) for item in listed}


def parse_network_config(document: dict[str, Any]) -> NetworkConfig:
    """Validate the decoded stdin document.

    Raises UnsupportedField (code 2) for an unknown key in our ``flock``
    block and InvalidConfig (code 7) for anything else that is wrong, with
    pydantic's field paths in ``details``.
    """
    if "flock" not in document:
        raise InvalidConfig(
            "network config has no \"flock\" block",
            "the flock-anycast entry needs at least {\"flock\": {\"pools\": [...]}}",
        )
    try:
        return NetworkConfig.model_validate(document)
    except ValidationError as exc:
        raise _translate_validation_error(exc) from exc


def _translate_validation_error(exc: ValidationError) -> InvalidConfig | UnsupportedField:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            return UnsupportedField(
                f"unsupported field {location!r} in the network config",
                f"{location}={error.get('input')!r}",
            )
        problems.append(f"{location}: {error['msg']}")
    return InvalidConfig("invalid network config", "; ".join(problems))
