"""Watch (§2, §7.8) through ``kubernetes.watch.Watch``: start points, selector transitions, bookmarks,
initial events, server-side timeouts, 410 handling and the wire format."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from bridge.sim.api import ApiServer
from bridge.sim.profiles import PROFILES

PodManifest = Callable[..., dict[str, Any]]


def _take(events: Iterator[dict[str, Any]], count: int, stream: Any) -> list[dict[str, Any]]:
    """The first ``count`` events, then stop the watch (no waiting for a timeout)."""
    taken = []
    for event in events:
        taken.append(event)
        if len(taken) == count:
            stream.stop()
            break
    return taken


def _name(event: dict[str, Any]) -> tuple[str, str]:
    return event["type"], event["object"].metadata.name


@pytest.mark.parametrize("start", [{}, {"resource_version": "0"}], ids=["unset", "zero"])
def test_unset_or_zero_resource_version_replays_state_then_goes_live(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest, start: dict[str, str]
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("b"))
    core_v1.create_namespaced_pod("default", pod_manifest("a"))
    stream = new_watch()
    seen = []
    for event in stream.stream(core_v1.list_namespaced_pod, "default", timeout_seconds=5, **start):
        seen.append(_name(event))
        if len(seen) == 2:
            core_v1.create_namespaced_pod("default", pod_manifest("c"))
        if len(seen) == 3:
            stream.stop()
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


def test_a_specific_resource_version_delivers_only_newer_events(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("a"))
    since = core_v1.create_namespaced_pod("default", pod_manifest("b")).metadata.resource_version
    core_v1.create_namespaced_pod("default", pod_manifest("c"))
    core_v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"touched": "yes"}}})
    stream = new_watch()
    events = _take(stream.stream(core_v1.list_namespaced_pod, "default", resource_version=since), 2, stream)
    assert [_name(event) for event in events] == [("ADDED", "c"), ("MODIFIED", "a")]
    versions = [int(event["object"].metadata.resource_version) for event in events]
    assert int(since) < versions[0] < versions[1]


def test_selector_transitions_become_added_and_deleted(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    since = core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.resource_version
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "x"}}})  # starts matching
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"tier": "1"}}})  # still matches
    left = core_v1.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"app": None}}}
    )  # stops matching
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"tier": "2"}}})  # never seen
    core_v1.create_namespaced_pod("default", pod_manifest("q", labels={"app": "x"}))
    stream = new_watch()
    events = _take(
        stream.stream(core_v1.list_namespaced_pod, "default", label_selector="app=x", resource_version=since),
        4,
        stream,
    )
    assert [_name(event) for event in events] == [
        ("ADDED", "p"),
        ("MODIFIED", "p"),
        ("DELETED", "p"),
        ("ADDED", "q"),
    ]
    # The DELETED object is the last state that matched, stamped with the RV of the write that left.
    gone = events[2]["object"]
    assert gone.metadata.labels == {"app": "x", "tier": "1"}
    assert gone.metadata.resource_version == left.metadata.resource_version


def test_deleted_event_carries_a_new_resource_version(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    created = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    core_v1.delete_namespaced_pod("p", "default")
    stream = new_watch()
    events = _take(
        stream.stream(
            core_v1.list_namespaced_pod, "default", resource_version=created.metadata.resource_version
        ),
        2,
        stream,
    )
    assert [event["type"] for event in events] == ["MODIFIED", "DELETED"]
    assert int(events[1]["object"].metadata.resource_version) > int(
        events[0]["object"].metadata.resource_version
    )


def test_bookmarks_only_when_allowed(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    plain = [e["type"] for e in new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=1)]
    assert plain == ["ADDED"]
    allowed = list(
        new_watch().stream(
            core_v1.list_namespaced_pod, "default", timeout_seconds=1, allow_watch_bookmarks=True
        )
    )
    assert [event["type"] for event in allowed] == ["ADDED", "BOOKMARK"]
    bookmark = allowed[1]["object"]  # the client yields bookmarks as raw dicts
    assert bookmark["kind"] == "Pod"
    assert (
        bookmark["metadata"]["resourceVersion"]
        == core_v1.list_namespaced_pod("default").metadata.resource_version
    )


def test_bookmarks_are_periodic(
    new_watch: Callable[[], Any], api_server: ApiServer, connect: Callable[[ApiServer], Any]
) -> None:
    server = ApiServer(
        api_server.store, api_server.logs, profile=PROFILES["instant"], bookmark_interval_s=0.2
    )
    server.start()
    try:
        core_v1 = connect(server)
        stream = new_watch()
        events = _take(
            stream.stream(
                core_v1.list_namespaced_pod, "default", timeout_seconds=10, allow_watch_bookmarks=True
            ),
            3,
            stream,
        )
        assert [event["type"] for event in events] == ["BOOKMARK"] * 3
    finally:
        server.stop()


def test_send_initial_events_ends_with_an_annotated_bookmark(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    for name in ("b", "a"):
        core_v1.create_namespaced_pod("default", pod_manifest(name))
    listed = core_v1.list_namespaced_pod("default").metadata.resource_version
    stream = new_watch()
    events = _take(
        stream.stream(
            core_v1.list_namespaced_pod,
            "default",
            send_initial_events=True,
            resource_version_match="NotOlderThan",
            allow_watch_bookmarks=True,
        ),
        3,
        stream,
    )
    assert [_name(event) for event in events[:2]] == [("ADDED", "a"), ("ADDED", "b")]
    assert events[2]["type"] == "BOOKMARK"
    assert events[2]["object"]["metadata"] == {
        "resourceVersion": listed,
        "annotations": {"k8s.io/initial-events-end": "true"},
    }


def test_send_initial_events_needs_not_older_than(core_v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", watch=True, send_initial_events=True, _preload_content=False)
    assert caught.value.status == 422


def test_timeout_seconds_is_enforced_by_the_server(new_watch: Callable[[], Any], core_v1: Any) -> None:
    started = time.monotonic()
    events = list(new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3.0


def _raw_watch_lines(api_server: ApiServer, query: str) -> tuple[int, dict[str, str], list[bytes]]:
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.request("GET", f"/api/v1/namespaces/default/pods?watch=true&{query}")
        response = connection.getresponse()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, response.read().splitlines(keepends=True)
    finally:
        connection.close()


def test_wire_format_is_chunked_json_lines(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    for name in ("a", "b"):
        core_v1.create_namespaced_pod("default", pod_manifest(name))
    status, headers, lines = _raw_watch_lines(api_server, "timeoutSeconds=1")
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "application/json"
    assert all(line.endswith(b"\n") for line in lines)
    documents = [json.loads(line) for line in lines]
    assert [(d["type"], d["object"]["kind"], d["object"]["metadata"]["name"]) for d in documents] == [
        ("ADDED", "Pod", "a"),
        ("ADDED", "Pod", "b"),
    ]


def test_too_old_resource_version_is_an_error_event_in_a_200(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    old = core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.resource_version
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}})
    api_server.store.compact()
    status, _, lines = _raw_watch_lines(api_server, f"resourceVersion={old}&timeoutSeconds=5")
    assert status == 200
    [line] = lines
    event = json.loads(line)
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"], event["object"]["reason"]) == (
        "Status",
        410,
        "Expired",
    )
    assert event["object"]["message"].startswith(f"too old resource version: {old} (")
    with pytest.raises(client.ApiException) as caught:  # with timeout_seconds the client never retries a 410
        list(
            new_watch().stream(
                core_v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=5
            )
        )
    assert caught.value.status == 410


def _admin_fault(api_server: ApiServer, **fault: Any) -> None:
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        connection.request("POST", "/_sim/faults", body=json.dumps(fault))
        assert connection.getresponse().status == 201
    finally:
        connection.close()


def test_watch_retries_one_410_and_raises_on_the_second(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    since = core_v1.list_namespaced_pod("default").metadata.resource_version
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    _admin_fault(api_server, verb="watch", action="expire", count=1)
    stream = new_watch()
    events = _take(stream.stream(core_v1.list_namespaced_pod, "default", resource_version=since), 1, stream)
    assert [_name(event) for event in events] == [("ADDED", "p")]  # the first 410 was retried silently
    assert api_server.faults.active() == []

    _admin_fault(api_server, verb="watch", action="expire", count=2)
    with pytest.raises(client.ApiException) as caught:
        next(iter(new_watch().stream(core_v1.list_namespaced_pod, "default", resource_version=since)))
    assert caught.value.status == 410
    assert caught.value.reason.startswith("Expired: too old resource version")


def test_http_410_on_a_watch_raises_at_once(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    since = core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.resource_version
    _admin_fault(api_server, verb="watch", action="expire", form="http", count=1)
    with pytest.raises(client.ApiException) as caught:
        next(iter(new_watch().stream(core_v1.list_namespaced_pod, "default", resource_version=since)))
    assert caught.value.status == 410
    # The fault was used up by that one request: the next watch works.
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}})
    stream = new_watch()
    events = _take(stream.stream(core_v1.list_namespaced_pod, "default", resource_version=since), 1, stream)
    assert [_name(event) for event in events] == [("MODIFIED", "p")]


def test_watch_across_all_namespaces(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespace({"metadata": {"name": "other"}})
    core_v1.create_namespaced_pod("other", pod_manifest("o"))
    core_v1.create_namespaced_pod("default", pod_manifest("d"))
    stream = new_watch()
    events = _take(stream.stream(core_v1.list_pod_for_all_namespaces, timeout_seconds=5), 2, stream)
    assert sorted((e["object"].metadata.namespace, e["object"].metadata.name) for e in events) == [
        ("default", "d"),
        ("other", "o"),
    ]


def test_stopping_the_server_ends_open_watches(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    first_event = threading.Event()
    finished = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=60):
                first_event.set()
        except Exception as error:  # reported below: the stream must end cleanly, not break
            errors.append(error)
        finished.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert first_event.wait(5)
    api_server.stop()
    assert finished.wait(5), "the watch stream outlived the server"
    assert errors == []
    consumer.join(5)


def test_stopping_the_server_while_a_watch_is_being_set_up_ends_it_cleanly(
    new_watch: Callable[[], Any],
    api_server: ApiServer,
    core_v1: Any,
    pod_manifest: PodManifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shutdown race: a watch registered after stop() collected the open ones must still end."""
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    entered = threading.Event()
    serving_thread = api_server._thread
    assert serving_thread is not None
    register = api_server.store.watch

    def register_once_the_server_stopped_serving(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        serving_thread.join(5)  # stop() has shut the accept loop down and is closing the open watches
        return register(*args, **kwargs)

    monkeypatch.setattr(api_server.store, "watch", register_once_the_server_stopped_serving)
    outcome: list[Any] = []

    def consume() -> None:
        try:
            outcome.append(
                list(new_watch().stream(core_v1.list_namespaced_pod, "default", timeout_seconds=60))
            )
        except Exception as error:  # reported below: the stream must end cleanly, not break
            outcome.append(error)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert entered.wait(5)
    started = time.monotonic()
    api_server.stop()
    consumer.join(5)

    assert not consumer.is_alive(), "the watch stream outlived the server"
    assert not isinstance(outcome[0], Exception), outcome
    assert [event["object"].metadata.name for event in outcome[0]] == ["p"]
    assert time.monotonic() - started < 1.5  # ended by stop(), not by the 2 s drain deadline


def test_a_resource_version_from_the_future_is_a_504_error_event(
    core_v1: Any, new_watch: Callable[[], Any]
) -> None:
    future = str(int(core_v1.list_namespaced_pod("default").metadata.resource_version) + 1000)
    with pytest.raises(client.ApiException) as caught:
        next(iter(new_watch().stream(core_v1.list_namespaced_pod, "default", resource_version=future)))
    assert caught.value.status == 504
    assert caught.value.reason.startswith("Timeout: Timeout: Too large resource version")


def test_concurrent_writers_produce_one_strictly_ordered_stream(
    api_server: ApiServer, connect: Callable[[ApiServer], Any], new_watch: Callable[[], Any]
) -> None:
    writers, pods_each = 4, 50
    core_v1 = connect(api_server)
    since = core_v1.list_namespaced_pod("default").metadata.resource_version

    clients = [connect(api_server) for _ in range(writers)]  # a connection pool each, like separate processes

    def create_pods(writer: int) -> None:
        for number in range(pods_each):
            clients[writer].create_namespaced_pod(
                "default",
                {
                    "metadata": {"name": f"w{writer}-{number}"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            )

    threads = [threading.Thread(target=create_pods, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    stream = new_watch()
    events = _take(
        stream.stream(core_v1.list_namespaced_pod, "default", resource_version=since, timeout_seconds=30),
        writers * pods_each,
        stream,
    )
    for thread in threads:
        thread.join(10)
    versions = [int(event["object"].metadata.resource_version) for event in events]
    assert versions == sorted(set(versions))
    assert {event["object"].metadata.name for event in events} == {
        f"w{writer}-{number}" for writer in range(writers) for number in range(pods_each)
    }
