"""Readiness from the Kubernetes API, end to end: stand-in API server → flock-reconciler → BIRD → FRR.

The lab (lab/topology.py) as in test_reconciler_lab.py: router netns
with FRR, node netns with BIRD and flock-reconciler, pods attached through
the real chain (ptp + host-local, then flock-anycast) with CNI_ARGS
``K8S_POD_NAMESPACE``/``K8S_POD_NAME``/``K8S_POD_UID``. Readiness now comes
from ``readiness.source: kubernetes``: the stand-in API server
(lab/fake_apiserver.py) is served by this test process on a socket
that lives inside the node netns, and the reconciler reaches it there with a
kubeconfig (token auth) through lightkube. The pods the test puts into the
API carry the same namespace/name/UID as the CNI ADD.

Issue 6, "How it must be proven", item 1. Every wait is a poll with a
deadline; the peer's RIB is sampled continuously (``PrefixWatcher``) where
the absence of a withdrawal is the claim.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from lab.daemons import wait_until
from lab.fake_apiserver import FakeApiServer, listen_socket_in_netns
from lab.topology import ROUTE_PROTOCOL, Lab, Pod, PrefixWatcher, RouteMonitor, host_prefix

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NODE_NAME = "lab-node"  # Lab.reconciler_config()'s nodeName
NAMESPACE = "lab"  # Lab.add_pod()'s K8S_POD_NAMESPACE
TOKEN = "lab-token"
DEADLINE = 15.0
STALE_HOLD = 2.0

EXPIRED = 'flock_reconciler_kubernetes_watch_failures_total{reason="expired"}'
LIST_ERRORS = 'flock_reconciler_kubernetes_lists_total{result="error"}'
STALE = 'flock_reconciler_readiness_stale{source="kubernetes"}'
READINESS_WAKES = 'flock_reconciler_wakeups_total{reason="readiness-kubernetes"}'
PASSES_OK = 'flock_reconciler_passes_total{result="ok"}'


class Cluster:
    """The stand-in API server inside the lab's node netns, and a kubeconfig for it."""

    def __init__(self, lab: Lab) -> None:
        assert lab.node is not None
        self.lab = lab
        self.api = FakeApiServer(token=TOKEN)
        self.url = self.api.start(listen_socket_in_netns(lab.node.path))
        self.port = int(self.url.rsplit(":", 1)[1])
        self.kubeconfig = os.path.join(lab.workdir, "kubeconfig")
        with open(self.kubeconfig, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
                    "users": [{"name": "flock", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "flock"}}],
                    "current-context": "lab",
                },
                handle,
            )

    def restart_api(self) -> None:
        """The API server comes back at the same address (a new listening socket in the node netns)."""
        assert self.lab.node is not None
        self.api.start(listen_socket_in_netns(self.lab.node.path), port=self.port)

    def put(self, pod: Pod, ready: bool = True, uid: str | None = None) -> None:
        """The pod as the API knows it: same namespace, name and (unless told) UID as its CNI ADD."""
        self.api.put_pod(NAMESPACE, pod.name, NODE_NAME, ready=ready, uid=uid or pod.uid)

    def start_reconciler(self, stale_hold: float = STALE_HOLD) -> None:
        self.lab.start_reconciler(
            readiness={
                "source": "kubernetes",
                "file": None,
                "kubernetes": {
                    "kubeconfig": self.kubeconfig,
                    "staleHold": stale_hold,
                    "backoff": {"initial": 0.05, "maximum": 0.3},
                    "requestTimeout": 2,
                },
            }
        )
        wait_until(lambda: self.lab.http_get("/readyz").status == 200, DEADLINE, "reconciler ready (first pod list)")


@pytest.fixture
def cluster(reconciler_lab: Lab) -> Iterator[Cluster]:
    built = Cluster(reconciler_lab)
    try:
        yield built
    finally:
        # Before the lab's teardown: the reconciler is stopped by the lab, the API server by us.
        built.api.stop()


# --------------------------------------------------------------------------
# helpers


def metric(lab: Lab, name: str) -> float:
    return lab.metrics().get(name, 0.0)


def wait_advertised(lab: Lab, pod: Pod) -> None:
    for address in pod.anycast:
        wait_until(lambda a=address: lab.node_route(a) == [pod.next_hop(a)], DEADLINE, f"node route {address}")
        wait_until(lambda a=address: lab.peer_has(a), DEADLINE, f"{address} at FRR")


def wait_withdrawn(lab: Lab, pod: Pod) -> None:
    for address in pod.anycast:
        wait_until(lambda a=address: not lab.peer_has(a), DEADLINE, f"{address} gone from FRR")
        wait_until(
            lambda a=address: lab.node_route(a) is None, DEADLINE + lab.drain_delay, f"node route {address} removed"
        )


def prefixes(*pods: Pod) -> list[str]:
    return [host_prefix(address) for pod in pods for address in pod.anycast]


def our_deletes(monitor: RouteMonitor, *pods: Pod) -> list:
    wanted = set(prefixes(*pods))
    return [
        event
        for event in monitor.matching(protocol=ROUTE_PROTOCOL)
        if event.prefix in wanted and event.event == "RTM_DELROUTE"
    ]


def never_left(watcher: PrefixWatcher, *pods: Pod) -> None:
    for prefix in prefixes(*pods):
        assert [present for _, present in watcher.transitions[prefix]] == [True], (
            f"{prefix} flapped at the peer: {watcher.transitions[prefix]}"
        )


# --------------------------------------------------------------------------
# Ready → advertised; Ready=False, terminating, deleted → withdrawn


def test_pod_readiness_in_the_api_drives_the_advertisement(cluster: Cluster) -> None:
    lab = cluster.lab
    a = lab.add_pod("a", ("2001:db8:a::53", "192.0.2.53"))
    b = lab.add_pod("b", ("2001:db8:a::54", "192.0.2.54"))
    c = lab.add_pod("c", ("2001:db8:a::55", "192.0.2.55"))
    cluster.put(a, ready=True)
    cluster.put(b, ready=True)
    cluster.put(c, ready=True, uid="uid-of-an-earlier-pod-named-c")  # same name, another pod
    cluster.start_reconciler()

    wait_advertised(lab, a)
    wait_advertised(lab, b)
    for address in c.anycast:
        assert lab.node_route(address) is None and not lab.peer_has(address), "c's UID does not match the API's"

    with PrefixWatcher(lab.frr, prefixes(a, b, c)) as watcher:
        cluster.api.set_ready(NAMESPACE, "a", False)
        wait_withdrawn(lab, a)
        cluster.api.mark_terminating(NAMESPACE, "b")
        wait_withdrawn(lab, b)
        cluster.put(c, ready=True)  # now the API has the pod of this sandbox
        wait_advertised(lab, c)
        wait_until(lambda: lab.router_route(c.anycast[1]), DEADLINE, "the router's FIB route to c")
        answered = lab.answering_pod(c.anycast[1])
        assert answered is c, f"ping {c.anycast[1]} answered by {answered and answered.name}"
        cluster.api.delete_pod(NAMESPACE, "c")
        wait_withdrawn(lab, c)

    for prefix in prefixes(a, b):
        assert [present for _, present in watcher.transitions[prefix]] == [True, False], (
            f"{prefix}: {watcher.transitions[prefix]}"
        )
    for prefix in prefixes(c):
        assert [present for _, present in watcher.transitions[prefix]] == [False, True, False], (
            f"{prefix}: {watcher.transitions[prefix]}"
        )


# --------------------------------------------------------------------------
# 410 mid-way → re-list, no spurious withdrawal


def test_watch_expired_midway_relists_without_spurious_withdrawal(cluster: Cluster) -> None:
    lab = cluster.lab
    api = cluster.api
    a = lab.add_pod("a", ("2001:db8:a::53", "192.0.2.53"))
    b = lab.add_pod("b", ("2001:db8:a::54", "192.0.2.54"))
    cluster.put(a)
    cluster.put(b)
    cluster.start_reconciler()
    wait_advertised(lab, a)
    wait_advertised(lab, b)
    wait_until(lambda: api.open_watches >= 1, DEADLINE, "the reconciler's watch open")

    reloads = lab.bird.reconfigurations()
    lists, watches = len(api.list_requests()), len(api.watch_requests())
    wakes = metric(lab, READINESS_WAKES)
    with RouteMonitor(lab.node) as monitor, PrefixWatcher(lab.frr, prefixes(a, b)) as watcher:
        api.put_pod("other", "elsewhere", "another-node")  # history moves on without us
        api.expire_watches()  # ERROR 410 Expired on the open watch

        wait_until(lambda: metric(lab, EXPIRED) == 1, DEADLINE, "the reconciler counting the 410")
        wait_until(
            lambda: len(api.list_requests()) == lists + 1 and len(api.watch_requests()) > watches and api.open_watches,
            DEADLINE,
            "re-list and a new watch",
        )
        assert api.watch_requests()[-1]["resourceVersion"] == str(api.resource_version)
        assert metric(lab, READINESS_WAKES) == wakes, "the re-list published a change although none happened"
        assert lab.bird.reconfigurations() == reloads, "BIRD was reconfigured across the re-list"
        assert lab.http_get("/readyz").status == 200

        # The new watch carries changes: b goes, a stays.
        passes = metric(lab, PASSES_OK)
        api.set_ready(NAMESPACE, "b", False)
        wait_withdrawn(lab, b)
        wait_until(lambda: metric(lab, PASSES_OK) > passes, DEADLINE, "the pass that withdrew b")

    never_left(watcher, a)
    assert our_deletes(monitor, a) == [], "a's kernel routes were touched across the re-list"
    for address in a.anycast:
        assert lab.node_route(address) == [a.next_hop(address)] and lab.peer_has(address)


# --------------------------------------------------------------------------
# API down: shorter than staleHold → kept; longer → withdrawn, said, recovered


def test_api_outage_is_held_then_withdrawn_and_recovered(cluster: Cluster) -> None:
    lab = cluster.lab
    api = cluster.api
    a = lab.add_pod("a", ("2001:db8:a::53", "192.0.2.53"))
    cluster.put(a)
    cluster.start_reconciler(stale_hold=STALE_HOLD)
    wait_advertised(lab, a)

    # Short outage: the reconciler notices, retries, keeps advertising.
    with PrefixWatcher(lab.frr, prefixes(a)) as watcher:
        errors = metric(lab, LIST_ERRORS)
        down_at = time.monotonic()
        api.stop()
        wait_until(lambda: metric(lab, LIST_ERRORS) >= errors + 2, DEADLINE, "list retries while the API is down")
        short = time.monotonic() - down_at
        if short >= STALE_HOLD * 0.75:
            pytest.fail(f"the machine took {short:.2f}s to see the outage; the hold is {STALE_HOLD}s")
        assert lab.http_get("/readyz").status == 503, "the outage is reported while held"
        cluster.restart_api()
        wait_until(lambda: lab.http_get("/readyz").status == 200, DEADLINE, "ready again after a short outage")
    never_left(watcher, a)
    assert metric(lab, STALE) == 0

    # Long outage: withdrawn after the hold, and said so.
    api.stop()
    down_at = time.monotonic()
    wait_withdrawn(lab, a)
    assert time.monotonic() - down_at >= STALE_HOLD * 0.9, "withdrawn before the stale hold ran out"
    assert metric(lab, STALE) == 1
    assert metric(lab, 'flock_reconciler_readiness_stale_withdrawals_total{source="kubernetes"}') == 1
    reply = lab.http_get("/readyz")
    assert reply.status == 503
    problems = json.loads(reply.body)["problems"]
    assert any(p.startswith("readiness:") and "withdrawn" in p for p in problems), problems
    with open(lab.reconciler_log_path, encoding="utf-8") as handle:
        assert "pod readiness stale: withdrawing every allocation" in handle.read()

    cluster.restart_api()
    wait_advertised(lab, a)
    wait_until(lambda: lab.http_get("/readyz").status == 200, DEADLINE, "ready after the API came back")
    assert metric(lab, STALE) == 0
