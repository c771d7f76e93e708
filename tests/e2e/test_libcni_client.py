"""flock-anycast driven by a real libcni client, as containerd or CRI-O drive it.

The conflist is ``ptp`` + ``host-local`` → ``flock-anycast`` → ``bandwidth``:
libcni builds every plugin's stdin (name, cniVersion, prevResult,
runtimeConfig filtered by each entry's capabilities), caches the ADD result
and feeds it back to CHECK and DEL, and decodes a plugin's error JSON. The
bandwidth plugin after us must find the host veth in our output, so it only
works when our result is a valid prevResult. Each case runs in throwaway
"host" and pod namespaces, against the source entry point and the frozen
binary.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from lab.netns import Netns
from lab.plugin import REPO, make_bin_dir
from netconf.state import StateStore
from tests.e2e.libcni import ClientBuildError, ClientRun, build_client, run_client

NETWORK = "flocknet"
POOLS = ["2001:db8:a::/64", "192.0.2.0/24"]
ANYCAST = ["2001:db8:a::53", "192.0.2.53"]
CLIENT_CACHE_DIR = os.path.join(REPO, "build", "work", "libcni-client")
# Rates in bit/s, bursts in bits: ingress shaping puts a tbf qdisc on the
# host veth, egress shaping mirrors the veth's ingress to an ifb device.
BANDWIDTH = {"ingressRate": 1_000_000, "ingressBurst": 100_000, "egressRate": 1_000_000, "egressBurst": 100_000}


@pytest.fixture(scope="session")
def libcni_client() -> str:
    """The libcni client binary, built offline once and cached across sessions."""
    try:
        return build_client(CLIENT_CACHE_DIR)
    except ClientBuildError as exc:
        pytest.fail(str(exc))


def containerd_args(namespace: str, name: str, container_id: str) -> str:
    """CNI_ARGS the way containerd's CRI plugin sends them."""
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
        f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={name}-uid"
    )


def conflist(version: str, tmp_path) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": NETWORK,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:244::/64"}]],
                    "dataDir": str(tmp_path / "ipam"),
                },
            },
            {
                "type": "flock-anycast",
                "capabilities": {"anycast": True},
                "flock": {"pools": POOLS, "stateDir": str(tmp_path / "state")},
            },
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


@dataclass
class Runtime:
    """One network on one node, as a runtime holding the conflist sees it."""

    client: str
    host: Netns
    conflist: str
    bin_dir: str
    cache_dir: str
    state_dir: str

    def __call__(self, verb: str, container_id: str, pod: Netns, args: str, cap_anycast=None) -> ClientRun:
        return run_client(
            self.client,
            verb,
            host=self.host,
            conflist=self.conflist,
            bin_dirs=[self.bin_dir],
            cache_dir=self.cache_dir,
            container_id=container_id,
            netns=pod.path,
            args=args,
            cap_anycast=cap_anycast,
            capability_args={"bandwidth": BANDWIDTH},
        )

    def allocations(self):
        return StateStore(self.state_dir).read().allocations

    def record_files(self) -> list[str]:
        """The record files in the allocations directory (writers' dot temp files aside)."""
        try:
            names = os.listdir(StateStore(self.state_dir).allocations_dir)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.startswith("."))


@pytest.fixture
def runtime(libcni_client, make_netns, plugin_binary, tmp_path):
    def for_version(version: str) -> Runtime:
        path = tmp_path / "net.conflist"
        path.write_text(json.dumps(conflist(version, tmp_path)))
        return Runtime(
            client=libcni_client,
            host=make_netns("host", forwarding=True),
            conflist=str(path),
            bin_dir=make_bin_dir(str(tmp_path / "bin"), plugin_binary),
            cache_dir=str(tmp_path / "libcni-cache"),
            state_dir=str(tmp_path / "state"),
        )

    return for_version


def addresses(namespace: Netns, ifname: str) -> list[tuple[str, int]]:
    """(address, prefixlen) on ``ifname``, in the kernel's order; [] when the link is gone."""
    with namespace.iproute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        return [(message.get("IFA_ADDRESS"), message["prefixlen"]) for message in ipr.get_addr(index=found[0])]


def link_kinds(namespace: Netns) -> dict[str, str | None]:
    with namespace.iproute() as ipr:
        return {link.get("IFLA_IFNAME"): link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) for link in ipr.get_links()}


def qdisc_kinds(namespace: Netns, ifname: str) -> set[str]:
    with namespace.iproute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {message.get("TCA_KIND") for message in ipr.get_qdiscs(index=index)}


def delete_lo_address(pod: Netns, address: str, prefixlen: int) -> None:
    with pod.iproute() as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname="lo")[0], address=address, prefixlen=prefixlen)


def anycast_on_lo(pod: Netns) -> set[str]:
    return {address for address, _ in addresses(pod, "lo")} & set(ANYCAST)


# Each version once, both anycast sources at the latest one the Go plugins
# speak; the source only changes what the runtime sends, not the chain.
CASES = [("0.3.1", "cni-args"), ("0.4.0", "capability"), ("1.0.0", "capability"), ("1.0.0", "cni-args")]


@pytest.mark.parametrize(("version", "source"), CASES)
def test_add_check_del_through_libcni(runtime, make_netns, version, source):
    network = runtime(version)
    pod = make_netns("pod")
    container_id = f"ctr-{version}-{source}"
    args = containerd_args("dns", "resolver-0", container_id)
    cap_anycast = None
    if source == "capability":
        cap_anycast = ANYCAST
    else:
        args += f";FLOCK_ANYCAST={','.join(ANYCAST)}"

    result = network("add", container_id, pod, args, cap_anycast).ok()

    # The pod's IPs are ptp's, unchanged and in host-local's range order:
    # the runtime takes the pod IP from ips[0].
    assert result["cniVersion"] == version
    result_ips = [ipaddress.ip_interface(ip["address"]) for ip in result["ips"]]
    assert [ip.version for ip in result_ips] == [4, 6]
    on_eth0 = [
        (address, prefixlen) for address, prefixlen in addresses(pod, "eth0") if not ipaddress.ip_address(address).is_link_local
    ]
    assert [(str(ip.ip), ip.network.prefixlen) for ip in result_ips] == on_eth0
    assert [ip["gateway"] for ip in result["ips"]] == ["10.244.0.1", "fd00:244::1"]
    assert {ip["interface"] for ip in result["ips"]} == {1}
    host_veth, container_eth0, ifb = result["interfaces"]
    assert container_eth0["name"] == "eth0" and container_eth0["sandbox"] == pod.path
    assert "sandbox" not in host_veth and link_kinds(network.host)[host_veth["name"]] == "veth"
    if version != "1.0.0":
        assert [ip["version"] for ip in result["ips"]] == ["4", "6"]

    # bandwidth found the host veth in our output and shaped it both ways.
    assert "tbf" in qdisc_kinds(network.host, host_veth["name"])
    assert ifb["name"].startswith("bwp") and link_kinds(network.host)[ifb["name"]] == "ifb"
    assert "tbf" in qdisc_kinds(network.host, ifb["name"])

    assert ("2001:db8:a::53", 128) in addresses(pod, "lo")
    assert ("192.0.2.53", 32) in addresses(pod, "lo")
    [allocation] = network.allocations()
    assert allocation.state == "committed"
    assert allocation.key == (NETWORK, container_id, "eth0")
    assert allocation.netns == pod.path
    assert (allocation.pod.namespace, allocation.pod.name, allocation.pod.uid) == ("dns", "resolver-0", "resolver-0-uid")
    assert {str(address) for address in allocation.anycast} == set(ANYCAST)
    assert {ip.ip for ip in result_ips} == set(allocation.pod_ips)

    if version != "0.3.1":
        checked = network("check", container_id, pod, args, cap_anycast)
        assert checked.returncode == 0 and checked.stdout == "", checked
        delete_lo_address(pod, "2001:db8:a::53", 128)
        failure = network("check", container_id, pod, args, cap_anycast).failure()
        # libcni surfaces the plugin's own error, code and message intact.
        assert failure["code"] == 105, failure
        assert "2001:db8:a::53" in failure["msg"]

    deleted = network("del", container_id, pod, args, cap_anycast)
    assert deleted.returncode == 0 and deleted.stdout == "", deleted
    assert anycast_on_lo(pod) == set()
    assert network.allocations() == []
    assert addresses(pod, "eth0") == []
    assert not {host_veth["name"], ifb["name"]} & set(link_kinds(network.host))
    # libcni dropped its cached result on the first DEL, so the second one
    # reaches every plugin without prevResult: still a success.
    again = network("del", container_id, pod, args, cap_anycast)
    assert again.returncode == 0 and again.stdout == "", again


def test_refused_add_surfaces_the_plugin_error_and_del_cleans_up(runtime, make_netns):
    network = runtime("1.0.0")
    pod = make_netns("pod")
    args = containerd_args("dns", "resolver-1", "ctr-refused") + ";FLOCK_ANYCAST=198.51.100.53"

    failure = network("add", "ctr-refused", pod, args).failure()

    assert failure["code"] == 101, failure
    assert "198.51.100.53" in failure["msg"]
    assert "flock-anycast" in failure["error"]  # libcni names the failing plugin
    assert anycast_on_lo(pod) == set()
    assert network.allocations() == []
    assert network.record_files() == []
    # A runtime follows a failed ADD with DEL, which must undo ptp's half.
    deleted = network("del", "ctr-refused", pod, args)
    assert deleted.returncode == 0, deleted
    assert addresses(pod, "eth0") == []
