"""Fault injection and latency (§6, §7.11): what the real client sees when the control plane misbehaves."""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from kubernetes import client

from bridge.sim.api import ApiServer
from bridge.sim.faults import FaultError, Faults
from bridge.sim.profiles import PROFILES, Latency

PodManifest = Callable[..., dict[str, Any]]


def _admin(api_server: ApiServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_admin_endpoint_adds_lists_and_clears_faults(api_server: ApiServer) -> None:
    status, fault = _admin(api_server, "POST", "/_sim/faults", {"verb": "create", "status": 503, "count": 2})
    assert status == 201
    assert (fault["verb"], fault["action"], fault["status"], fault["count"]) == ("create", "error", 503, 2)
    assert _admin(api_server, "GET", "/_sim/faults")[1]["faults"] == [fault]
    assert _admin(api_server, "DELETE", "/_sim/faults") == (200, {"faults": []})
    assert api_server.faults.active() == []


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"verb": "frobnicate"}, "frobnicate"),
        ({"verb": "get", "action": "cut"}, "only applies to watches"),
        ({"status": 200}, "status 200"),
        ({"probability": 0}, "probability"),
        ({"colour": "red"}, "colour"),
        ({"status": "503"}, "fault status '503' must be a whole number"),
        ({"count": 0.5}, "fault count 0.5 must be a whole number or null"),
        ([1, 2], "JSON object"),
    ],
)
def test_a_bad_fault_is_a_400_naming_the_problem(api_server: ApiServer, body: Any, named: str) -> None:
    status, document = _admin(api_server, "POST", "/_sim/faults", body)
    assert status == 400
    assert document["kind"] == "Status"
    assert named in document["message"]


def test_429_on_post_fails_at_once_with_plain_text(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    api_server.faults.inject(verb="create", status=429, retry_after=1)
    started = time.monotonic()
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", pod_manifest("p"))
    assert time.monotonic() - started < 0.5  # POST is never retried by urllib3, whatever Retry-After says
    assert caught.value.status == 429
    assert (caught.value.headers or {})["Retry-After"] == "1"
    assert (caught.value.headers or {})["Content-Type"].startswith("text/plain")
    assert caught.value.body == "Too many requests, please try again later.\n"
    assert core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.name == "p"  # used up


@pytest.mark.parametrize("verb", ["get", "delete"])
@pytest.mark.parametrize("status", [429, 503])
def test_get_and_delete_with_retry_after_are_retried_by_urllib3(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest, status: int, verb: str
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    call = core_v1.read_namespaced_pod if verb == "get" else core_v1.delete_namespaced_pod
    fault = api_server.faults.inject(verb=verb, status=status, retry_after=0, count=3)
    assert call("p", "default").metadata.name == "p"
    assert fault.hits == 3  # three failed attempts, the fourth (urllib3's last) succeeded
    if verb == "delete":
        core_v1.create_namespaced_pod("default", pod_manifest("p"))
    api_server.faults.inject(verb=verb, status=status, retry_after=0, count=4)
    with pytest.raises(client.ApiException) as caught:
        call("p", "default")
    assert caught.value.status == status


def test_500_is_a_status_and_not_retried(api_server: ApiServer, core_v1: Any) -> None:
    fault = api_server.faults.inject(verb="list", status=500, count=None)
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default")
    assert caught.value.status == 500
    assert json.loads(str(caught.value.body))["reason"] == "InternalError"
    assert fault.hits == 1


def test_409_on_the_next_write(api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest) -> None:
    api_server.faults.inject(verb="write", status=409)
    core_v1.list_namespaced_pod("default")  # reads are not writes
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", pod_manifest("p"))
    assert caught.value.status == 409
    assert json.loads(str(caught.value.body))["reason"] == "Conflict"
    assert core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.name == "p"


def test_dropped_connection_on_post_reaches_the_caller(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    api_server.faults.inject(verb="create", action="drop")
    with pytest.raises(urllib3.exceptions.HTTPError):
        core_v1.create_namespaced_pod("default", pod_manifest("p"))
    assert core_v1.list_namespaced_pod("default").items == []


def test_dropped_connection_on_get_is_retried(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    fault = api_server.faults.inject(verb="get", action="drop", count=2)
    assert core_v1.read_namespaced_pod("p", "default").metadata.name == "p"
    assert fault.hits == 2


def test_probability_and_resource_filter(api_server: ApiServer, core_v1: Any) -> None:
    api_server.faults.inject(verb="list", resource="secrets", status=503, count=None, probability=0.5)
    statuses = []
    for _ in range(40):
        try:
            core_v1.list_namespaced_secret("default")
            statuses.append(200)
        except client.ApiException as error:
            statuses.append(error.status)
        core_v1.list_namespaced_pod("default")  # other resources are untouched
    assert set(statuses) == {200, 503}
    assert 5 < statuses.count(503) < 35


def test_watch_cut_after_n_events_ends_the_stream_early(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    for name in ("a", "b", "c"):
        core_v1.create_namespaced_pod("default", pod_manifest(name))
    api_server.faults.inject(verb="watch", action="cut", after_events=2)
    started = time.monotonic()
    events = list(new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=30))
    assert [event["object"].metadata.name for event in events] == ["a", "b"]
    assert time.monotonic() - started < 5


def test_watch_drop_is_a_broken_stream(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("a"))
    api_server.faults.inject(verb="watch", action="drop", after_events=1)
    received: list[str] = []

    def consume() -> None:
        for event in new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=30):
            received.append(event["object"].metadata.name)

    with pytest.raises(urllib3.exceptions.HTTPError):
        consume()
    assert received == ["a"]


def test_compact_endpoint_expires_old_versions(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    old = core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.resource_version
    core_v1.create_namespaced_pod("default", pod_manifest("q"))
    status, document = _admin(api_server, "POST", "/_sim/compact")
    assert status == 200
    assert document["resourceVersion"] == core_v1.list_namespaced_pod("default").metadata.resource_version
    with pytest.raises(client.ApiException) as caught:
        list(
            new_watch().stream(
                core_v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=2
            )
        )
    assert caught.value.status == 410


def test_a_slow_profile_delays_answers(api_server: ApiServer, connect: Callable[[ApiServer], Any]) -> None:
    slow = dataclasses.replace(PROFILES["instant"], name="slow", get=Latency(0.05, 0.05))
    server = ApiServer(api_server.store, api_server.logs, profile=slow, faults=Faults())
    server.start()
    try:
        core_v1 = connect(server)
        started = time.monotonic()
        with pytest.raises(client.ApiException):
            core_v1.read_namespaced_pod("missing", "default")
        assert time.monotonic() - started >= 0.05
    finally:
        server.stop()


def test_latency_samples_follow_median_and_p99() -> None:
    latency, rng = Latency(0.01, 0.1), random.Random(7)
    samples = sorted(latency.sample(rng) for _ in range(4000))
    assert 0.008 < samples[len(samples) // 2] < 0.012
    assert 0.07 < samples[int(len(samples) * 0.99)] < 0.14
    assert Latency(0, 0).sample(random.Random(1)) == 0
    with pytest.raises(ValueError, match="median_s <= p99_s"):
        Latency(0.2, 0.1)


def test_faults_python_api_rejects_nonsense() -> None:
    faults = Faults()
    with pytest.raises(FaultError, match="fault count 0"):
        faults.inject(verb="get", count=0)


def test_max_inflight_throttles_the_request_beyond_the_cap(
    api_server: ApiServer, connect: Callable[[ApiServer], Any], pod_manifest: PodManifest
) -> None:
    server = ApiServer(api_server.store, api_server.logs, profile=PROFILES["instant"], max_inflight=1)
    server.start()
    inside, release = threading.Event(), threading.Event()

    def hold_the_first_create(event_type: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "held":
            inside.set()
            release.wait(5)  # keeps that request (and its seat) busy until the test has been throttled

    unsubscribe = api_server.store.subscribe(hold_the_first_create)
    try:
        core_v1 = connect(server)
        first = threading.Thread(target=core_v1.create_namespaced_pod, args=("default", pod_manifest("held")))
        first.start()
        assert inside.wait(5)
        with pytest.raises(client.ApiException) as caught:
            core_v1.create_namespaced_pod("default", pod_manifest("second"))
        assert caught.value.status == 429
        assert (caught.value.headers or {})["Retry-After"] == "1"
        release.set()
        first.join(5)
        assert core_v1.create_namespaced_pod("default", pod_manifest("third")).metadata.name == "third"
    finally:
        release.set()
        unsubscribe()
        server.stop()


def test_watches_are_never_throttled_by_max_inflight(
    api_server: ApiServer,
    connect: Callable[[ApiServer], Any],
    new_watch: Callable[[], Any],
    pod_manifest: PodManifest,
) -> None:
    connect(api_server).create_namespaced_pod("default", pod_manifest("existing"))
    seat_taken = _SignallingLatency(30.0, 30.0)
    slow_writes = dataclasses.replace(PROFILES["instant"], name="slow-writes", write=seat_taken)
    server = ApiServer(api_server.store, api_server.logs, profile=slow_writes, max_inflight=1)
    server.start()
    try:
        core_v1 = connect(server)
        created: list[Any] = []
        writer = threading.Thread(  # sits in the 30 s write latency (stop() cuts it short)
            target=lambda: created.append(core_v1.create_namespaced_pod("default", pod_manifest("slow"))),
            daemon=True,
        )
        writer.start()
        assert seat_taken.started.wait(5), "the slow create never took the seat"

        stream = new_watch()
        events = list(stream.stream(core_v1.list_namespaced_pod, "default", timeout_seconds=1))

        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "existing")]
        assert _raw_get_status(server) == 429  # the seat was taken all along
    finally:
        server.stop()
    writer.join(5)
    assert [pod.metadata.name for pod in created] == ["slow"]  # stop() let the request in flight finish


@dataclasses.dataclass(frozen=True)
class _SignallingLatency(Latency):
    """A latency that sets ``started`` when a request begins to wait it out, that is while it holds a seat."""

    started: threading.Event = dataclasses.field(default_factory=threading.Event)

    def sample(self, rng: random.Random) -> float:
        self.started.set()
        return super().sample(rng)


def _raw_get_status(server: ApiServer) -> int:
    """The status of one plain GET (no urllib3 retries, which would sleep through a 429's Retry-After)."""
    url = urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        connection.request("GET", "/api/v1/namespaces/default/pods/existing")
        return connection.getresponse().status
    finally:
        connection.close()
