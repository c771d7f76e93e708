"""The one error tree of flock, mapped to CNI error codes.

Every module raises a subclass of :class:`CniError`; only the plugin's
dispatcher catches broadly and turns anything else into code 999. The codes
follow the CNI spec (SPEC.md "Error" section); 100 and above are ours.

Two spec codes have no class on purpose: 3 (unknown container), because a
runtime skips its cleanup after it, and 51 (STATUS: existing pods may be
degraded), because they cannot be: a pod's anycast addresses live on its
own ``lo`` and nothing the plugin could fail at takes them away.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # the plugin imports this module on every exec: no typing at run time
    from typing import ClassVar


class CniError(Exception):
    """Base of every error the plugin reports as CNI error JSON."""

    code: ClassVar[int] = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, str | int]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }


class IncompatibleVersion(CniError):
    code = 1


class UnsupportedField(CniError):
    code = 2


class InvalidEnvironment(CniError):
    code = 4


class IOFailure(CniError):
    code = 5


class DecodeFailure(CniError):
    code = 6


class InvalidConfig(CniError):
    code = 7


class TryAgainLater(CniError):
    code = 11


class PluginNotAvailable(CniError):
    """STATUS only: ADD cannot be served."""

    code = 50


class StateCorrupt(IOFailure):
    """The state file does not parse or has an unknown schema version."""


class LockTimeout(TryAgainLater):
    """Another writer held the state lock longer than the configured wait."""


# Plugin-specific codes (>= 100).


class InvalidAnycastAddress(CniError):
    """An anycast address is not a host IP address that can be routed as anycast."""

    code = 100


class AnycastOutsidePools(CniError):
    """An anycast address lies in none of the configured ``pools``."""

    code = 101


class NoPodAddressOfFamily(CniError):
    """The pod has no unicast IP of the anycast address's family."""

    code = 102


class PodNetnsUnusable(CniError):
    """The pod network namespace cannot be entered."""

    code = 103


class NetlinkFailure(CniError):
    """The kernel refused an address change inside the pod netns."""

    code = 104


class AnycastMissing(CniError):
    """CHECK: an allocation or an address on ``lo`` is missing or wrong."""

    code = 105


class CleanupFailed(CniError):
    """GC: some stale allocations could not be cleaned up."""

    code = 106


class KubernetesUnreachable(TryAgainLater):
    """The API server could not be asked for the pod's annotation."""


class KubernetesRefused(CniError):
    """The API server refused the plugin's credentials (401/403): fix RBAC or kubeconfig."""

    code = 107


class AnycastLimitExceeded(CniError):
    """Too many anycast addresses for one attachment, or an oversized annotation or pod.

    Refused before anything is parsed: whoever can annotate a pod must not
    be able to make every ADD burn CPU.
    """

    code = 108
