"""The ``kubernetes`` readiness source, through lightkube, against the stand-in API server.

The stand-in (lab/fake_apiserver.py) listens on 127.0.0.1 of the test
process; no namespace or root is needed. Every wake-up the source makes is
recorded together with the view it just published (``Recorder``): the
source publishes and wakes from one thread, in that order, so the recording
holds every view the loop could have seen — which is how "no NotReady
moment" is asserted. Waits poll the recorder, not the source, so a count
read after a wait includes the wake-up waited for. Timings are injected
short (stale hold 1 s, back-off 50–200 ms); every wait is a poll with a
deadline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest
from lightkube.resources.core_v1 import Pod
from prometheus_client import CollectorRegistry

from lab.fake_apiserver import FakeApiServer
from netconf.state import StateStore
from netconf.values import Allocation, PodRef
from reconciler.desired import NextHop
from reconciler.kubernetes_source import (
    KubernetesConfigError,
    KubernetesReadiness,
    PodReadinessView,
    apply_event,
    pod_is_ready,
    ready_pods,
    retry_delay,
)
from reconciler.main import Runtime, make_readiness_source, run
from reconciler.node_config import KubernetesSettings, NodeConfigError, ReadinessSettings, parse_node_config
from tests.reconciler_fakes import FakeBird, FakeKernel

NODE = "node-a"
OTHER_NODE = "node-b"
TOKEN = "unit-token"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = 5.0


# -- helpers -------------------------------------------------------------------


def poll(predicate, what: str, timeout: float = DEADLINE, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def allocation(name="a", uid=None, namespace="dns", cid=None):
    return Allocation(
        network="flocknet",
        container_id=cid or f"cid-{name}",
        ifname="eth0",
        netns=f"/run/netns/{name}",
        pod=PodRef(namespace=namespace, name=name, uid=uid),
        anycast=(ip_address("192.0.2.53"),),
        pod_ips=(ip_address("10.1.0.2"),),
        state="committed",
        created_at=T0,
        updated_at=T0,
    )


def write_kubeconfig(path, url: str, token: str = TOKEN) -> str:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
                "users": [{"name": "flock", "user": {"token": token}}],
                "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "flock"}}],
                "current-context": "stand-in",
            }
        )
    )
    return str(path)


class Recorder:
    """The ``wake`` callback: (reason, view published just before) for every wake-up."""

    def __init__(self) -> None:
        self.source: KubernetesReadiness | None = None
        self._lock = threading.Lock()
        self.wakes: list[tuple[str, PodReadinessView]] = []

    def __call__(self, reason: str) -> None:
        assert self.source is not None
        with self._lock:
            self.wakes.append((reason, self.source.observe()))

    def views(self) -> list[PodReadinessView]:
        with self._lock:
            return [view for _, view in self.wakes]

    def last(self) -> PodReadinessView:
        """The view of the latest wake-up (empty before any): what the loop was last told to look at."""
        with self._lock:
            return self.wakes[-1][1] if self.wakes else PodReadinessView()

    def count(self) -> int:
        with self._lock:
            return len(self.wakes)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def sample(subject: KubernetesReadiness, name: str, **labels) -> float:
    value = subject.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def api():
    server = FakeApiServer(token=TOKEN)
    server.url = server.start()
    yield server
    server.stop()


@pytest.fixture
def make_source(api, tmp_path):
    """Build, register metrics on a fresh registry, and start a source; stopped after the test."""
    created: list[KubernetesReadiness] = []
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)

    def factory(start: bool = True, **overrides):
        settings = KubernetesSettings.model_validate(
            {
                "kubeconfig": kubeconfig,
                "staleHold": 1.0,
                "backoff": {"initial": 0.05, "maximum": 0.2},
                "requestTimeout": 2.0,
                **overrides,
            }
        )
        # rng 0: back-off at half its bound, server-side watch timeout exactly watchTimeout.
        source = KubernetesReadiness(settings, NODE, rng=lambda: 0.0)
        source.registry = CollectorRegistry()
        source.register_metrics(source.registry)
        recorder = Recorder()
        recorder.source = source
        created.append(source)
        if start:
            source.start(recorder)
        return source, recorder

    yield factory
    for source in created:
        source.stop()


def synced_with_watch(source: KubernetesReadiness, api: FakeApiServer) -> None:
    assert source.wait_synced(DEADLINE), f"no first list: {source.status()}"
    poll(lambda: api.open_watches >= 1, "the watch to be open")


def watches_open_after(api: FakeApiServer, count: int) -> bool:
    """A watch request beyond the first ``count`` was made and a watch is open."""
    return len(api.watch_requests()) > count and api.open_watches >= 1


# -- pure functions ------------------------------------------------------------


def pod(name="a", uid="uid-a", ready=True, terminating=False, conditions=None, namespace="dns"):
    metadata = {"name": name, "namespace": namespace, "uid": uid}
    if terminating:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if conditions is None:
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return Pod.from_dict(
        {"metadata": metadata, "spec": {"containers": [{"name": "c"}]}, "status": {"conditions": conditions}}
    )


@pytest.mark.parametrize(
    "subject, ready",
    [
        (pod(ready=True), True),
        (pod(ready=False), False),
        (pod(ready=True, terminating=True), False),
        (pod(conditions=[]), False),
        (pod(conditions=[{"type": "ContainersReady", "status": "True"}]), False),
        (pod(conditions=[{"type": "Ready", "status": "Unknown"}]), False),
    ],
    ids=["ready", "not ready", "terminating", "no conditions", "no Ready condition", "unknown"],
)
def test_pod_is_ready(subject, ready):
    assert pod_is_ready(subject) is ready


def test_apply_event_keeps_a_newer_pod_of_the_same_name():
    ready = ready_pods([pod("a", "uid-new"), pod("b", "uid-b", ready=False)])
    assert ready == {("dns", "a"): "uid-new"}
    # The DELETED of an older incarnation arrives late: the new pod stays.
    assert apply_event(ready, "DELETED", pod("a", "uid-old")) == ready
    assert apply_event(ready, "DELETED", pod("a", "uid-new")) == {}
    assert apply_event(ready, "MODIFIED", pod("a", "uid-new", ready=False)) == {}
    assert apply_event(ready, "ADDED", pod("c", "uid-c")) == {("dns", "a"): "uid-new", ("dns", "c"): "uid-c"}


@pytest.mark.parametrize(
    "subject, expected",
    [
        (allocation("a", uid="uid-a"), True),
        (allocation("a", uid=None), True),
        (allocation("a", uid="uid-recreated"), False),
        (allocation("b", uid="uid-b"), False),
        (allocation("a", namespace="other"), False),
        (allocation(None, uid="uid-a", namespace=None), True),
        (allocation(None, uid=None, namespace=None), False),
    ],
    ids=["uid matches", "no uid: by name", "uid differs", "other pod", "other namespace", "uid only", "no pod"],
)
def test_view_matches_allocations_by_name_and_uid(subject, expected):
    view = PodReadinessView({("dns", "a"): "uid-a"})
    assert view.is_ready(subject) is expected
    assert PodReadinessView({("dns", "a"): "uid-a"}, withdrawn=True).is_ready(subject) is False


def test_retry_delay_is_bounded_and_jittered():
    assert retry_delay(1, 0.5, 30, 0.0) == 0.25
    assert retry_delay(1, 0.5, 30, 0.999) < 0.5
    assert retry_delay(3, 0.5, 30, 0.999) < 2.0
    assert all(retry_delay(n, 0.5, 30, 0.999) <= 30 for n in range(1, 40))


# -- configuration ---------------------------------------------------------------


def test_node_config_kubernetes_settings_defaults_aliases_and_strictness():
    config = parse_node_config(
        {
            "nodeName": NODE,
            "pools": ["192.0.2.0/24"],
            "readiness": {
                "source": "kubernetes",
                "kubernetes": {
                    "kubeconfig": "/etc/flock/kubeconfig",
                    "staleHold": 5,
                    "backoff": {"initial": 0.1, "maximum": 2},
                    "watchTimeout": 60,
                },
            },
        }
    )
    settings = config.readiness.kubernetes
    assert (settings.kubeconfig, settings.stale_hold, settings.watch_timeout) == ("/etc/flock/kubeconfig", 5, 60)
    assert (settings.backoff.initial, settings.backoff.maximum) == (0.1, 2)
    defaults = ReadinessSettings(source="kubernetes").kubernetes
    assert defaults.kubeconfig is None and defaults.stale_hold == 60 and defaults.backoff.maximum == 30

    for bad, field in (
        ({"stalehold": 5}, "readiness.kubernetes.stalehold"),
        ({"staleHold": -1}, "readiness.kubernetes.staleHold"),
        ({"backoff": {"initial": 2, "maximum": 1}}, "readiness.kubernetes"),
        ({"watchTimeout": 0}, "readiness.kubernetes.watchTimeout"),
    ):
        with pytest.raises(NodeConfigError, match=field.replace(".", r"\.")):
            parse_node_config({"nodeName": NODE, "readiness": {"source": "kubernetes", "kubernetes": bad}})


def test_unusable_kubeconfig_fails_at_construction(tmp_path):
    missing = KubernetesSettings(kubeconfig=str(tmp_path / "absent"))
    with pytest.raises(KubernetesConfigError, match="absent"):
        KubernetesReadiness(missing, NODE)
    userless = tmp_path / "userless"
    userless.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c"}}],
                "current-context": "x",
            }
        )
    )
    with pytest.raises(KubernetesConfigError, match="no user"):
        KubernetesReadiness(KubernetesSettings(kubeconfig=str(userless)), NODE)
    with pytest.raises(ValueError, match="nodeName"):
        make_readiness_source(ReadinessSettings(source="kubernetes", kubernetes=missing))


def test_make_readiness_source_builds_the_kubernetes_source(api, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    source = make_readiness_source(
        ReadinessSettings(source="kubernetes", kubernetes=KubernetesSettings(kubeconfig=kubeconfig)), NODE
    )
    assert isinstance(source, KubernetesReadiness) and source.name == "kubernetes"
    assert source.server == api.url
    assert not source.status().healthy and "first pod list" in source.status().detail


# -- list and watch ----------------------------------------------------------------


def test_initial_list_gives_the_ready_pods_of_this_node(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.put_pod("dns", "b", NODE, ready=False, uid="uid-b")
    api.put_pod("dns", "c", OTHER_NODE, ready=True, uid="uid-c")
    version = str(api.resource_version)
    source, recorder = make_source()
    synced_with_watch(source, api)

    view = source.observe()
    assert view.is_ready(allocation("a", uid="uid-a"))
    assert view.is_ready(allocation("a"))
    assert not view.is_ready(allocation("b", uid="uid-b"))
    assert not view.is_ready(allocation("c", uid="uid-c")), "a pod of another node"
    assert source.status().healthy

    [listed] = api.list_requests()
    assert listed["fieldSelector"] == f"spec.nodeName={NODE}"
    [watched] = api.watch_requests()
    assert watched["fieldSelector"] == f"spec.nodeName={NODE}"
    assert watched["resourceVersion"] == version, "the watch starts at the list's resourceVersion"
    assert watched["allowWatchBookmarks"] == "true" and source.bookmarks is True
    assert recorder.count() == 1, "one wake-up: the first view"
    assert sample(source, "flock_reconciler_readiness_ready_pods", source="kubernetes") == 1
    assert sample(source, "flock_reconciler_kubernetes_lists_total", result="ok") == 1


@pytest.mark.parametrize(
    "change",
    ["not ready", "terminating", "deleted"],
)
def test_a_pod_that_stops_being_ready_wakes_the_loop(api, make_source, change):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.put_pod("dns", "b", NODE, ready=True, uid="uid-b")
    source, recorder = make_source()
    synced_with_watch(source, api)
    a = allocation("a", uid="uid-a")
    assert source.observe().is_ready(a)

    if change == "not ready":
        api.set_ready("dns", "a", False)
    elif change == "terminating":
        api.mark_terminating("dns", "a")
    else:
        api.delete_pod("dns", "a")

    poll(lambda: not recorder.last().is_ready(a), f"pod a {change} → not Ready")
    reason, view = recorder.wakes[-1]
    assert reason == "readiness-kubernetes" and not view.is_ready(a)
    assert recorder.count() == 2, "exactly one wake-up for the change"
    assert source.observe().is_ready(allocation("b", uid="uid-b"))

    if change == "not ready":
        api.set_ready("dns", "a", True)
        poll(lambda: recorder.last().is_ready(a), "pod a Ready again")
        assert recorder.count() == 3


def test_updates_that_do_not_change_readiness_do_not_wake(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source()
    synced_with_watch(source, api)

    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a", annotations={"note": "changed"})
    api.put_pod("dns", "elsewhere", OTHER_NODE, ready=True)
    api.put_pod("dns", "starting", NODE, ready=False)
    api.delete_pod("dns", "starting")
    # A sentinel change behind them: once it is seen, the events before it were handled.
    api.put_pod("dns", "sentinel", NODE, ready=True)
    poll(lambda: recorder.last().is_ready(allocation("sentinel")), "the sentinel pod")

    assert recorder.count() == 2, [sorted(view.ready) for view in recorder.views()]


def test_a_recreated_pod_with_the_same_name_is_another_pod(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-old")
    source, _ = make_source()
    synced_with_watch(source, api)
    old, new = allocation("a", uid="uid-old"), allocation("a", uid="uid-new", cid="cid-new")
    assert source.observe().is_ready(old) and not source.observe().is_ready(new)

    api.delete_pod("dns", "a")
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-new")

    poll(lambda: source.observe().is_ready(new), "the new incarnation Ready")
    assert not source.observe().is_ready(old), "the old allocation's UID no longer matches"


def test_watch_expired_mid_stream_relists_without_a_not_ready_moment(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.put_pod("dns", "b", NODE, ready=True, uid="uid-b")
    source, recorder = make_source()
    synced_with_watch(source, api)
    api.put_pod("dns", "churn", OTHER_NODE)  # the version moves on without an event for us

    api.expire_watches()

    poll(lambda: len(api.list_requests()) == 2 and watches_open_after(api, 1), "re-list and a new watch")
    assert api.watch_requests()[-1]["resourceVersion"] == str(api.resource_version)
    assert sample(source, "flock_reconciler_kubernetes_watch_failures_total", reason="expired") == 1
    assert recorder.count() == 1, "a re-list finding the same Ready pods publishes nothing"
    for pod_name in ("a", "b"):
        assert source.observe().is_ready(allocation(pod_name, uid=f"uid-{pod_name}"))
    assert source.status().healthy

    # The new watch works.
    api.set_ready("dns", "b", False)
    poll(lambda: not recorder.last().is_ready(allocation("b", uid="uid-b")), "b NotReady through the new watch")
    assert all(view.is_ready(allocation("a", uid="uid-a")) for view in recorder.views())


def test_watch_resumed_after_compaction_gets_410_and_relists(api, make_source):
    """The server ends the watch (timeoutSeconds); lightkube resumes from a compacted version."""
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source(watchTimeout=1)
    synced_with_watch(source, api)
    for index in range(3):
        api.put_pod("dns", f"churn-{index}", OTHER_NODE)  # newer versions we see no event of
    api.compact()

    poll(lambda: len(api.list_requests()) == 2 and watches_open_after(api, 2), "410 on resume, then re-list")
    resumed = api.watch_requests()[1]
    assert int(resumed["resourceVersion"]) < api.resource_version, "lightkube resumed from the old version"
    assert api.watch_requests()[2]["resourceVersion"] == str(api.resource_version)
    assert sample(source, "flock_reconciler_kubernetes_watch_failures_total", reason="expired") == 1
    assert recorder.count() == 1
    assert all(view.is_ready(allocation("a", uid="uid-a")) for view in recorder.views())


def test_events_missed_while_down_arrive_in_one_atomic_swap(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.put_pod("dns", "b", NODE, ready=True, uid="uid-b")
    source, recorder = make_source(staleHold=5)
    synced_with_watch(source, api)

    api.forced_status = 503
    api.drop_watches()
    poll(lambda: sample(source, "flock_reconciler_kubernetes_lists_total", result="error") >= 1, "a failed re-list")
    api.delete_pod("dns", "b")  # DELETED never reaches the source: it is down
    api.put_pod("dns", "c", NODE, ready=True, uid="uid-c")
    api.compact()
    assert "503" in source.status().detail and not source.status().healthy
    api.forced_status = None

    poll(lambda: recorder.last().is_ready(allocation("c", uid="uid-c")), "the re-list")
    assert not source.observe().is_ready(allocation("b", uid="uid-b"))
    assert recorder.count() == 2, "one swap for both changes"
    assert all(view.is_ready(allocation("a", uid="uid-a")) for view in recorder.views()), "a flapped"
    poll(lambda: source.status().healthy, "healthy again")


def test_dropped_watch_is_resumed_without_flapping(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source()
    synced_with_watch(source, api)

    api.drop_watches()

    poll(lambda: watches_open_after(api, 1), "a new watch after the drop")
    assert sample(source, "flock_reconciler_kubernetes_watch_failures_total", reason="connection") == 1
    assert recorder.count() == 1 and source.observe().is_ready(allocation("a", uid="uid-a"))
    api.set_ready("dns", "a", False)
    poll(lambda: not recorder.last().is_ready(allocation("a", uid="uid-a")), "events after the resume")
    assert [view.is_ready(allocation("a", uid="uid-a")) for view in recorder.views()] == [True, False]


def test_bookmarks_move_the_resume_version(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source(watchTimeout=1)
    synced_with_watch(source, api)
    listed = source.resource_version
    for index in range(3):
        api.put_pod("dns", f"churn-{index}", OTHER_NODE)

    api.send_bookmarks()
    poll(lambda: source.resource_version == str(api.resource_version), "the bookmark's version")
    bookmark = source.resource_version
    assert int(bookmark) > int(listed)
    # Without the bookmark, resuming from the list's version would now be 410.
    api.compact()

    poll(lambda: len(api.watch_requests()) >= 2, "the resume after the server's watch timeout")
    assert api.watch_requests()[1]["resourceVersion"] == bookmark
    assert api.watch_requests()[1]["allowWatchBookmarks"] == "true"
    assert len(api.list_requests()) == 1, "no re-list: the resume did not expire"
    assert sample(source, "flock_reconciler_kubernetes_watch_failures_total", reason="expired") == 0
    assert recorder.count() == 1


# -- the API going away ----------------------------------------------------------------


def test_api_down_longer_than_stale_hold_withdraws_and_says_so(api, make_source, caplog):
    caplog.set_level(logging.INFO, logger="reconciler.kubernetes_source")
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source(staleHold=1.0)
    synced_with_watch(source, api)
    a = allocation("a", uid="uid-a")

    down_at = time.monotonic()
    api.stop()
    poll(lambda: recorder.last().withdrawn, "withdrawal after the stale hold")
    held = time.monotonic() - down_at

    assert held >= 0.9, f"withdrawn after {held:.2f}s, the hold is 1s"
    assert not source.observe().is_ready(a)
    reason, view = recorder.wakes[-1]
    assert view.withdrawn, "the withdrawal woke the loop"
    status = source.status()
    assert not status.healthy and "withdrawn" in status.detail and "staleHold 1s" in status.detail
    assert sample(source, "flock_reconciler_readiness_stale", source="kubernetes") == 1
    assert sample(source, "flock_reconciler_readiness_stale_withdrawals_total", source="kubernetes") == 1
    [record] = [r for r in caplog.records if "stale" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.fields["ready_before"] == 1

    api.start(port=port_of(api.url))
    poll(lambda: recorder.last().is_ready(a), "re-advertised after the API came back")
    assert source.status().healthy
    assert sample(source, "flock_reconciler_readiness_stale", source="kubernetes") == 0
    assert [view.is_ready(a) for view in recorder.views()] == [True, False, True]


def test_api_down_shorter_than_stale_hold_keeps_the_last_view(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    source, recorder = make_source(staleHold=3.0)
    synced_with_watch(source, api)
    a = allocation("a", uid="uid-a")

    down_at = time.monotonic()
    api.stop()
    poll(lambda: sample(source, "flock_reconciler_kubernetes_lists_total", result="error") >= 2, "retries while down")
    assert time.monotonic() - down_at < 3.0, "the machine was too slow to test within the hold"
    assert source.observe().is_ready(a) and not source.observe().withdrawn
    status = source.status()
    assert not status.healthy and "keeping the last known readiness" in status.detail

    api.start(port=port_of(api.url))
    poll(lambda: source.status().healthy, "healthy after the API came back")
    assert recorder.count() == 1, "nothing changed, nothing published"
    assert sample(source, "flock_reconciler_readiness_stale_withdrawals_total", source="kubernetes") == 0


def test_without_a_first_list_nothing_is_ready_and_the_hold_still_applies(api, make_source):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.forced_status = 503
    source, recorder = make_source(staleHold=0.5)

    assert not source.wait_synced(0.1)
    assert not source.observe().is_ready(allocation("a", uid="uid-a"))
    assert "first pod list" in source.status().detail
    poll(lambda: recorder.last().withdrawn, "stale after the hold without a first list")
    assert "withdrawn" in source.status().detail and "503" in source.status().detail

    api.forced_status = None
    assert source.wait_synced(DEADLINE)
    poll(lambda: source.status().healthy, "healthy")
    assert source.observe().is_ready(allocation("a", uid="uid-a"))


def test_a_wrong_token_is_reported(api, make_source, tmp_path):
    api.put_pod("dns", "a", NODE, ready=True)
    source, _ = make_source(start=False, kubeconfig=write_kubeconfig(tmp_path / "bad", api.url, token="wrong"))
    source.start(lambda reason: None)
    poll(lambda: "401" in source.status().detail, "the 401 in the status")
    assert sample(source, "flock_reconciler_kubernetes_watch_failures_total", reason="http") >= 1


def test_stop_is_prompt_with_a_watch_open(api, make_source):
    source, _ = make_source(watchTimeout=600)
    synced_with_watch(source, api)
    thread = source._thread

    started = time.monotonic()
    source.stop()

    assert time.monotonic() - started < 1.0
    assert thread is not None and not thread.is_alive()
    poll(lambda: api.open_watches == 0, "the server to see the watch closed")


# -- wired into the daemon ---------------------------------------------------------------

P4 = ip_network("192.0.2.53/32")
HOP4 = NextHop(ip_address("10.1.0.2"), "veth-a")


def daemon_config(tmp_path, kubeconfig: str, **kubernetes) -> str:
    config = {
        "nodeName": NODE,
        "pools": ["192.0.2.0/24", "2001:db8:a::/64"],
        "stateDir": str(tmp_path / "state"),
        "readiness": {
            "source": "kubernetes",
            "kubernetes": {
                "kubeconfig": kubeconfig,
                "staleHold": 0.5,
                "backoff": {"initial": 0.05, "maximum": 0.2},
                **kubernetes,
            },
        },
        "drainDelay": 0.0,
        "debounce": 0.01,
        "maxWait": 0.05,
        "http": {"listen": "127.0.0.1:0"},
    }
    path = tmp_path / "node.yaml"
    path.write_text(json.dumps(config))
    return str(path)


def fake_runtime():
    journal: list = []
    kernel = FakeKernel(journal)
    kernel.attach(ip_address("10.1.0.2"), "veth-a")
    bird = FakeBird(journal)
    runtime = Runtime(
        make_kernel=lambda config: kernel,
        make_bird=lambda config: bird,
        make_route_monitor=None,
        install_process_state=lambda config, stop: (lambda: None),
    )
    return runtime, kernel, bird, journal


def test_once_uses_the_pod_list_and_exits_1_without_one(api, tmp_path):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation("a", uid="uid-a"))
    path = daemon_config(tmp_path, write_kubeconfig(tmp_path / "kubeconfig", api.url))

    runtime, kernel, bird, _ = fake_runtime()
    assert run(["--config", path, "--once"], runtime) == 0
    assert kernel.routes == {P4: {HOP4}} and bird.exported == {P4}

    api.stop()
    runtime, kernel, bird, journal = fake_runtime()
    kernel.routes = {P4: frozenset({HOP4})}
    assert run(["--config", path, "--once"], runtime) == 1
    assert journal == [], "no pod list: nothing may be withdrawn"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scraped(text: str, name: str) -> float:
    """The value of one sample (``name{labels}`` as printed) in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_daemon_follows_the_pod_watch_and_reports_staleness(api, tmp_path):
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation("a", uid="uid-a"))
    path = daemon_config(tmp_path, write_kubeconfig(tmp_path / "kubeconfig", api.url))
    runtime, kernel, bird, _ = fake_runtime()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", run(["--config", path], runtime)))
    thread.start()
    try:
        assert runtime.started.wait(DEADLINE)
        base = "http://%s:%d" % runtime.http.address
        poll(lambda: bird.exported == {P4}, "pod a advertised")
        poll(lambda: get(base + "/readyz")[0] == 200, "/readyz 200")
        _, metrics = get(base + "/metrics")
        assert scraped(metrics, 'flock_reconciler_readiness_stale{source="kubernetes"}') == 0

        api.set_ready("dns", "a", False)
        poll(lambda: bird.exported == set() and kernel.routes == {}, "pod a withdrawn")
        assert scraped(get(base + "/metrics")[1], 'flock_reconciler_wakeups_total{reason="readiness-kubernetes"}') >= 1
        api.set_ready("dns", "a", True)
        poll(lambda: bird.exported == {P4}, "pod a advertised again")

        api.stop()
        poll(lambda: bird.exported == set(), "withdrawn after the stale hold")
        status, body = get(base + "/readyz")
        assert status == 503
        detail = json.loads(body)
        assert detail["readiness"] is False
        assert any("readiness" in problem and "withdrawn" in problem for problem in detail["problems"])
        assert scraped(get(base + "/metrics")[1], 'flock_reconciler_readiness_stale{source="kubernetes"}') == 1
    finally:
        if runtime.waker is not None:
            runtime.waker.stop()
        thread.join(10)
    assert result.get("code") == 0


def test_daemon_holds_its_first_pass_until_the_first_pod_list(api, tmp_path):
    """A restart while the API is down must not withdraw what the previous instance advertised."""
    api.put_pod("dns", "a", NODE, ready=True, uid="uid-a")
    api.forced_status = 503
    with StateStore(str(tmp_path / "state")).transaction() as transaction:
        transaction.put(allocation("a", uid="uid-a"))
    path = daemon_config(tmp_path, write_kubeconfig(tmp_path / "kubeconfig", api.url), staleHold=3.0)
    runtime, kernel, bird, journal = fake_runtime()
    kernel.routes = {P4: frozenset({HOP4})}  # left by the previous instance
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", run(["--config", path], runtime)))
    thread.start()
    try:
        poll(lambda: runtime.http is not None, "the HTTP endpoints")
        base = "http://%s:%d" % runtime.http.address
        failed_lists = 'flock_reconciler_kubernetes_lists_total{result="error"}'
        poll(lambda: scraped(get(base + "/metrics")[1], failed_lists) >= 2, "two failed lists")
        assert journal == [], "a pass ran before the first pod list"
        assert get(base + "/healthz")[0] == 200, "waiting for the API is not a dead loop"
        status, body = get(base + "/readyz")
        assert status == 503 and "first pod list" in body

        api.forced_status = None
        poll(lambda: bird.exported == {P4}, "the first pass, with pod a Ready")
        assert kernel.routes == {P4: {HOP4}}
        assert "kernel.delete" not in [entry[0] for entry in journal]
    finally:
        if runtime.waker is not None:
            runtime.waker.stop()
        thread.join(10)
    assert result.get("code") == 0
