"""The annotation source and the clock, through the verbs' seams: fakes, no API server, no patching.

The real adapters behind the same seams: ``kubernetes.ApiPodAnnotations``
against the stand-in API server (tests/unit/test_kubernetes_bounds.py,
tests/netns/test_annotation_source.py), ``verbs.SystemClock`` below.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta

import pytest

from cni_plugin import verbs
from cni_plugin.anycast import MAX_ANNOTATION_BYTES
from cni_plugin.environment import CniEnvironment, parse_cni_args
from netconf.config import parse_network_config
from netconf.errors import AnycastLimitExceeded, InvalidAnycastAddress, KubernetesRefused, KubernetesUnreachable
from netconf.state import StateStore
from tests.unit.fakes import FakeClock, FakePodAnnotations, FakePodLoopback
from tests.unit.test_plugin_bad_input import config

POD = "/run/netns/pod"
KEY = ("flocknet", "c1", "eth0")
ANNOTATION = "flock.fritzlab.net/anycast"
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=dns;K8S_POD_NAME=resolver-0"
V4 = ipaddress.ip_address("192.0.2.53")
V6 = ipaddress.ip_address("2001:db8:a::53")


def on_lo(*addresses):
    return {(address, 32 if address.version == 4 else 128) for address in addresses}


class Node:
    """One node's fakes and state directory; ``context`` builds one exec's VerbContext."""

    def __init__(self, tmp_path, pods=None, kubeconfig="/etc/cni/net.d/flock.kubeconfig") -> None:
        self.state_dir = str(tmp_path / "state")
        self.loopback = FakePodLoopback(netns_paths=(POD,))
        self.annotations = FakePodAnnotations(pods)
        self.clock = FakeClock()
        self.kubeconfig = kubeconfig

    def context(self, command="ADD", cni_args=POD_ARGS, top=None, **flock):
        if self.kubeconfig is not None:
            flock.setdefault("kubeconfig", self.kubeconfig)
        document = config(self.state_dir, version="1.1.0", **flock)
        document.update(top or {})
        parsed = parse_network_config(document)
        env = CniEnvironment(command=command, container_id="c1", netns=POD, ifname="eth0", args=parse_cni_args(cni_args))
        return verbs.VerbContext(
            env=env,
            config=parsed,
            store=StateStore(self.state_dir),
            loopback=self.loopback,
            annotations=self.annotations,
            clock=self.clock,
        )

    def record(self):
        return StateStore(self.state_dir).get(KEY)

    def state_files(self):
        directory = StateStore(self.state_dir).allocations_dir
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# --- the pod annotation ------------------------------------------------------------------


def test_annotation_gives_the_set_when_no_explicit_source_names_one(tmp_path):
    node = Node(tmp_path, {("dns", "resolver-0"): "2001:db8:a::53, 192.0.2.53"})
    verbs.cmd_add(node.context())
    assert node.annotations.reads == [("dns", "resolver-0")]
    assert node.loopback.addresses[POD] == on_lo(V4, V6)
    record = node.record()
    assert record.state == "committed" and record.anycast == (V6, V4)
    assert (record.pod.namespace, record.pod.name) == ("dns", "resolver-0")


def test_annotation_key_names_the_source_in_errors(tmp_path):
    node = Node(tmp_path, {("dns", "resolver-0"): "not-an-ip"})
    with pytest.raises(InvalidAnycastAddress, match="annotation example.com/vip of pod dns/resolver-0"):
        verbs.cmd_add(node.context(annotation="example.com/vip"))


@pytest.mark.parametrize(
    "cni_args, top",
    [
        (POD_ARGS + ";FLOCK_ANYCAST=192.0.2.54", None),
        (POD_ARGS, {"args": {"cni": {"anycast": "192.0.2.54"}}}),
        (POD_ARGS, {"runtimeConfig": {"anycast": ["192.0.2.54"]}}),
    ],
    ids=["CNI_ARGS", "args.cni", "runtimeConfig"],
)
def test_an_explicit_source_wins_and_the_annotation_is_never_read(tmp_path, cni_args, top):
    node = Node(tmp_path, {("dns", "resolver-0"): "192.0.2.53"})
    verbs.cmd_add(node.context(cni_args=cni_args, top=top))
    assert node.annotations.reads == []
    assert node.loopback.addresses[POD] == on_lo(ipaddress.ip_address("192.0.2.54"))


@pytest.mark.parametrize(
    "kubeconfig, cni_args",
    [
        (None, POD_ARGS),
        ("/k", "K8S_POD_NAMESPACE=dns"),
        ("/k", "K8S_POD_NAME=resolver-0"),
        ("/k", "K8S_POD_NAMESPACE=;K8S_POD_NAME=x"),
    ],
    ids=["no kubeconfig", "no pod name", "no pod namespace", "empty namespace"],
)
def test_without_kubeconfig_or_pod_identity_the_annotation_is_not_read(tmp_path, kubeconfig, cni_args):
    node = Node(tmp_path, {("dns", "resolver-0"): "192.0.2.53"}, kubeconfig=kubeconfig)
    result = verbs.cmd_add(node.context(cni_args=cni_args))
    assert result["ips"]  # prevResult passed through
    assert node.annotations.reads == [] and node.state_files() == []


@pytest.mark.parametrize("value", [None, "", " , ,"], ids=["no annotation", "empty", "only separators"])
def test_pod_without_addresses_in_its_annotation_passes_through(tmp_path, value):
    node = Node(tmp_path, {("dns", "resolver-0"): value})
    verbs.cmd_add(node.context())
    assert node.annotations.reads == [("dns", "resolver-0")]
    assert node.state_files() == [] and node.loopback.addresses[POD] == set()


@pytest.mark.parametrize(
    "pods, error, raised, code",
    [
        ({}, None, KubernetesUnreachable, 11),  # pod not found (yet): the runtime retries
        ({("dns", "resolver-0"): "192.0.2.53"}, KubernetesRefused("refused to read pod dns/resolver-0"), KubernetesRefused, 107),
        ({("dns", "resolver-0"): "not-an-ip"}, None, InvalidAnycastAddress, 100),
        ({("dns", "resolver-0"): "192.0.2.53," + " " * MAX_ANNOTATION_BYTES}, None, AnycastLimitExceeded, 108),
        ({("dns", "resolver-0"): "2001:db8:a::53," * 100_000}, None, AnycastLimitExceeded, 108),
        ({("dns", "resolver-0"): ",".join(f"2001:db8:a::{index + 1:x}" for index in range(65))}, None, AnycastLimitExceeded, 108),
    ],
    ids=["pod not found", "refused", "malformed", "padded", "100,000 addresses", "65 addresses"],
)
def test_annotation_failures_keep_their_code_and_change_nothing(tmp_path, pods, error, raised, code):
    node = Node(tmp_path, pods)
    node.annotations.error = error
    verbs.cmd_add(node.context(cni_args="FLOCK_ANYCAST=192.0.2.7"))  # an earlier ADD, which must survive
    before_files, before_lo = node.state_files(), set(node.loopback.addresses[POD])
    node.annotations.reads.clear()
    with pytest.raises(raised) as failure:
        verbs.cmd_add(node.context())
    assert failure.value.code == code
    assert node.annotations.reads == [("dns", "resolver-0")]
    assert node.state_files() == before_files and node.loopback.addresses[POD] == before_lo
    assert node.record().anycast == (ipaddress.ip_address("192.0.2.7"),)


def test_annotation_of_64_addresses_is_accepted(tmp_path):
    value = ", ".join(f"2001:db8:a::{index + 1:x}" for index in range(64))
    assert len(value) <= MAX_ANNOTATION_BYTES
    node = Node(tmp_path, {("dns", "resolver-0"): value})
    verbs.cmd_add(node.context())
    assert len(node.record().anycast) == 64


def test_check_and_del_trust_the_record_and_never_read_the_annotation(tmp_path):
    node = Node(tmp_path, {("dns", "resolver-0"): "192.0.2.53"})
    verbs.cmd_add(node.context())
    node.annotations.pods[("dns", "resolver-0")] = "192.0.2.99"  # changed since ADD
    node.annotations.reads.clear()
    verbs.cmd_check(node.context("CHECK"))
    verbs.cmd_del(node.context("DEL"))
    assert node.annotations.reads == []
    assert node.record() is None and node.loopback.addresses[POD] == set()


# --- the clock ---------------------------------------------------------------------------


def test_add_stamps_the_records_with_the_clock(tmp_path):
    node = Node(tmp_path, kubeconfig=None)
    node.clock.step = timedelta(seconds=1)
    start = node.clock.current
    verbs.cmd_add(node.context(cni_args="FLOCK_ANYCAST=192.0.2.53"))
    record = node.record()
    # pending at the first reading, committed at the second
    assert record.created_at == start and record.updated_at == start + timedelta(seconds=1)
    assert node.clock.readings == [start, start + timedelta(seconds=1)]


def test_repeated_add_keeps_created_at_and_moves_updated_at(tmp_path):
    node = Node(tmp_path, kubeconfig=None)
    start = node.clock.current
    verbs.cmd_add(node.context(cni_args="FLOCK_ANYCAST=192.0.2.53"))
    node.clock.advance(3600)
    verbs.cmd_add(node.context(cni_args="FLOCK_ANYCAST=192.0.2.54"))
    record = node.record()
    assert record.created_at == start
    assert record.updated_at == start + timedelta(hours=1)


class StampWatchingLoopback(FakePodLoopback):
    """Keeps the record as it stood when ``lo`` was changed."""

    def __init__(self, store, **kwargs):
        super().__init__(**kwargs)
        self.store, self.seen = store, []

    def delete_addresses(self, netns, addresses, inode=None):
        self.seen.append(self.store.get(KEY))
        super().delete_addresses(netns, addresses, inode)


def test_del_marks_pending_at_the_clocks_time(tmp_path):
    node = Node(tmp_path, kubeconfig=None)
    node.loopback = StampWatchingLoopback(StateStore(node.state_dir), netns_paths=(POD,))
    verbs.cmd_add(node.context(cni_args="FLOCK_ANYCAST=192.0.2.53"))
    node.clock.advance(60)
    verbs.cmd_del(node.context("DEL", cni_args="FLOCK_ANYCAST=192.0.2.53"))
    [marked] = node.loopback.seen
    assert marked.state == "pending" and marked.updated_at == FakeClock.START + timedelta(seconds=60)


def test_system_clock_is_utc_now():
    before = datetime.now(UTC)
    now = verbs.SystemClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(UTC)
