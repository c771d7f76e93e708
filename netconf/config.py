"""The network configuration a runtime hands to ``flock-anycast`` on stdin.

Two layers of strictness, as the CNI conventions ask: the envelope the
runtime builds (``cniVersion``, ``name``, ``runtimeConfig``, ``prevResult``,
``args`` and whatever else it passes through) tolerates unknown keys, while
our own ``flock`` block is strict so that a typo in an operator's conflist is
reported (code 2, naming key and value) instead of silently ignored.

Each record's fields are declared here, once, as annotations that
``netconf.compile_schemas`` compiles into the schemas pydantic-core
validates with (``netconf.records``).

Pure: parsing and validation only, no I/O.
"""

from __future__ import annotations

from netconf.errors import InvalidConfig, UnsupportedField
from netconf.records import Record, describe_validation_error, error_location, validation_error_class
from netconf.values import IPNetwork

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Annotated, Any, Literal

    from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator

    from netconf.fields import absolute_path, file_path, format_network, parse_pool


DEFAULT_STATE_DIR = "/var/lib/flock"
DEFAULT_ANNOTATION = "flock.fritzlab.net/anycast"


if TYPE_CHECKING:
    # A pool: IPv4Network | IPv6Network in Python, its CIDR text in JSON.
    Pool = Annotated[
        IPNetwork,
        PlainValidator(parse_pool),
        PlainSerializer(format_network, return_type=str, when_used="json"),
    ]
    AbsolutePath = Annotated[str, AfterValidator(absolute_path)]
    FilePath = Annotated[str, AfterValidator(file_path)]


class FlockBlock(Record, extra="forbid", populate_by_name=True, frozen=True):
    """Our own settings, under the ``flock`` key of the plugin's entry: strict."""

    pools: Annotated[list[Pool], Field(description="CIDRs every anycast address must fall in; empty allows none.")]
    state_dir: Annotated[AbsolutePath, Field(alias="stateDir")] = DEFAULT_STATE_DIR
    kubeconfig: FilePath | None = None
    annotation: str = DEFAULT_ANNOTATION
    api_timeout: Annotated[float, Field(alias="apiTimeout", gt=0, le=30)] = 2.0
    # Generous: a burst of pod starts queues on the lock; failing fast (code 11)
    # only makes the runtime retry the whole ADD later.
    lock_timeout: Annotated[float, Field(alias="lockTimeout", gt=0, le=120)] = 30.0
    log_file: Annotated[FilePath | None, Field(alias="logFile")] = None
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Field(alias="logLevel")] = "warning"


class CniArgs(Record, extra="allow"):
    """``args.cni`` of the network config (CONVENTIONS "args in network config"); other keys in ``extra``."""

    anycast: list[str] | str | None = None


class ConfigArgs(Record, extra="allow"):
    cni: CniArgs | None = None


class RuntimeConfig(Record, extra="allow"):
    anycast: list[str] | None = None


class NetworkConfig(Record, extra="allow", populate_by_name=True):
    """The runtime's envelope around our plugin entry: tolerant, unknown keys kept."""

    cni_version: Annotated[str, Field(alias="cniVersion")]
    name: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(min_length=1)]
    flock: FlockBlock
    runtime_config: Annotated[RuntimeConfig, Field(default_factory=RuntimeConfig, alias="runtimeConfig")]
    args: ConfigArgs | None = None
    prev_result: Annotated[dict[str, Any] | None, Field(alias="prevResult")] = None
    valid_attachments: Annotated[list[dict[str, Any]] | None, Field(alias="cni.dev/valid-attachments")] = None
    attachments: Annotated[list[dict[str, Any]] | None, Field(alias="cni.dev/attachments")] = None

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
        return NetworkConfig.validate(document)
    except validation_error_class() as exc:
        raise _translate_validation_error(exc) from exc


def _translate_validation_error(exc: Any) -> InvalidConfig | UnsupportedField:
    for error in exc.errors():
        if error["type"] == "extra_forbidden":
            location = error_location(error["loc"])
            return UnsupportedField(
                f"unsupported field {location!r} in the network config",
                f"{location}={error.get('input')!r}",
            )
    return InvalidConfig("invalid network config", describe_validation_error(exc))
