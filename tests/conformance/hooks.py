"""Remove-resources hooks: undo what one plugin's ADD did, so its CHECK must fail.

Pass one as ``--remove-resources-hook tests.conformance.hooks:NAME``. Each
receives the :class:`~tests.conformance.runtime.Attachment` (pod netns path,
host netns path, container ID, ifname, the config sent and the ADD result)
and works through pyroute2 sockets opened in those namespaces; nothing here
touches the root namespace.
"""

from __future__ import annotations

import ipaddress
import os

from pyroute2 import IPRoute

from tests.conformance.runtime import Attachment

LOOPBACK_ADDRESSES = {ipaddress.ip_interface("127.0.0.1/8"), ipaddress.ip_interface("::1/128")}


def _interface_index(ipr: IPRoute, ifname: str) -> int:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        raise LookupError(f"no interface {ifname!r} to remove resources from")
    return indexes[0]


def remove_flock_anycast_addresses(attachment: Attachment) -> None:
    """flock-anycast: delete every address on the pod's ``lo`` except 127.0.0.1/8 and ::1/128."""
    with IPRoute(netns=attachment.netns, flags=0) as ipr:
        index = _interface_index(ipr, "lo")
        removed = 0
        for message in ipr.get_addr(index=index):
            address = ipaddress.ip_interface(f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}")
            if address not in LOOPBACK_ADDRESSES:
                ipr.addr("del", index=index, address=str(address.ip), prefixlen=message["prefixlen"])
                removed += 1
    if not removed:
        raise LookupError("no anycast address on lo to remove: did ADD add any?")


def remove_pod_interface(attachment: Attachment) -> None:
    """ptp (and other interface plugins): delete the CNI_IFNAME interface in the pod."""
    with IPRoute(netns=attachment.netns, flags=0) as ipr:
        ipr.link("del", index=_interface_index(ipr, attachment.ifname))


def set_loopback_down(attachment: Attachment) -> None:
    """loopback: its whole effect is ``lo`` up, and ``lo`` cannot be deleted."""
    with IPRoute(netns=attachment.netns, flags=0) as ipr:
        ipr.link("set", index=_interface_index(ipr, "lo"), state="down")


def remove_bandwidth_qdiscs(attachment: Attachment) -> None:
    """bandwidth: delete the traffic shaping (root and ingress qdiscs) on every host-side
    interface of the result, keeping the devices.

    SPEC §2 CHECK names missing "traffic shaping controls" as something CHECK
    should report; deleting the ifb device as well would let a CHECK that only
    looks for the device pass for the wrong reason.
    """
    host_interfaces = [
        interface["name"]
        for interface in (attachment.result or {}).get("interfaces", [])
        if not interface.get("sandbox")
    ]
    with IPRoute(netns=attachment.host_netns, flags=0) as ipr:
        for name in host_interfaces:
            indexes = ipr.link_lookup(ifname=name)
            if not indexes:
                continue
            for message in ipr.get_qdiscs(index=indexes[0]):
                if message.get_attr("TCA_KIND") in ("tbf", "ingress"):
                    ipr.tc("del", index=indexes[0], handle=message["handle"], parent=message["parent"])


def revert_tuning_mtu(attachment: Attachment) -> None:
    """tuning (configured with ``mtu``): put the pod interface's MTU back to something else."""
    configured = attachment.config.get("mtu")
    if not configured:
        raise LookupError("the tuning config sets no 'mtu' for this hook to revert")
    with IPRoute(netns=attachment.netns, flags=0) as ipr:
        ipr.link("set", index=_interface_index(ipr, attachment.ifname), mtu=1500 if configured != 1500 else 1400)


def remove_sample_plugin_state(attachment: Attachment) -> None:
    """The harness's sample plugin (tests/conformance/sample): delete its state file."""
    state_dir = attachment.config["stateDir"]
    name = attachment.config["name"]
    os.remove(os.path.join(state_dir, name, f"{attachment.container_id}_{attachment.ifname}"))
