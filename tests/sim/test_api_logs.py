"""The pod log endpoint (§1.9) fed through LogStore directly, read with the real client."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from bridge.sim.api import ApiServer
from bridge.sim.logs import LogStore, _ContainerLog
from tests.pod_log import pod_log

PodManifest = Callable[..., dict[str, Any]]


@pytest.fixture
def bound_pod(core_v1: Any, pod_manifest: PodManifest, bind: Callable[[str], None]) -> str:
    core_v1.create_namespaced_pod("default", pod_manifest("job"))
    bind("job")
    return "job"


def _message(exception: client.ApiException) -> str:
    message: str = json.loads(str(exception.body))["message"]
    return message


def test_unscheduled_pod_has_no_log_location(core_v1: Any, pod_manifest: PodManifest) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("pending"))
    response = core_v1.read_namespaced_pod_log("pending", "default", _preload_content=False)
    assert response.status == 204


def test_container_not_started_is_400_with_the_waiting_reason(
    api_server: ApiServer, core_v1: Any, bound_pod: str
) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod_log(bound_pod, "default")
    assert caught.value.status == 400
    assert _message(caught.value) == 'container "base" in pod "job" is waiting to start: ContainerCreating'

    def pulling_fails(pod: dict[str, object]) -> None:
        status = pod["status"]
        assert isinstance(status, dict)
        status["containerStatuses"] = [
            {
                "name": "base",
                "state": {"waiting": {"reason": "ErrImagePull"}},
                "ready": False,
                "restartCount": 0,
                "image": "busybox",
                "imageID": "",
            }
        ]

    api_server.store.update("pods", "default", bound_pod, pulling_fails)
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod_log(bound_pod, "default")
    assert _message(caught.value).endswith("is waiting to start: image can't be pulled")


def test_log_text_tail_and_limit(api_server: ApiServer, core_v1: Any, bound_pod: str) -> None:
    api_server.logs.start("default", bound_pod, "base")
    api_server.logs.append("default", bound_pod, "base", b"one\ntwo\nthree\n")
    assert pod_log(core_v1, bound_pod, "default") == "one\ntwo\nthree\n"
    assert pod_log(core_v1, bound_pod, "default", tail_lines=2) == "two\nthree\n"
    assert pod_log(core_v1, bound_pod, "default", limit_bytes=5) == "one\nt"
    response = core_v1.read_namespaced_pod_log(bound_pod, "default", _preload_content=False)
    assert response.headers["Content-Type"] == "text/plain"


def test_container_must_be_named_when_there_are_several(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    body = pod_manifest("two")
    body["spec"]["containers"].append({"name": "side", "image": "busybox"})
    core_v1.create_namespaced_pod("default", body)
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod_log("two", "default")
    assert (
        _message(caught.value) == "a container name must be specified for pod two, choose one of: [base side]"
    )
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod_log("two", "default", container="nope")
    assert _message(caught.value) == "container nope is not valid for pod two"


def test_follow_streams_new_output_and_ends_when_the_container_exits(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, bound_pod: str
) -> None:
    logs = api_server.logs
    logs.start("default", bound_pod, "base")
    logs.append("default", bound_pod, "base", b"first\n")
    lines = []
    for line in new_watch().stream(core_v1.read_namespaced_pod_log, bound_pod, "default"):
        lines.append(line)
        if line == "first":  # the stream is open: produce more, then exit the container
            logs.append("default", bound_pod, "base", b"second\n")
            logs.close("default", bound_pod, "base")
    assert lines == ["first", "second"]


def test_follow_ends_when_the_pod_is_dropped(
    new_watch: Callable[[], Any], api_server: ApiServer, core_v1: Any, bound_pod: str
) -> None:
    api_server.logs.start("default", bound_pod, "base")
    api_server.logs.append("default", bound_pod, "base", b"only\n")
    lines = []
    for line in new_watch().stream(core_v1.read_namespaced_pod_log, bound_pod, "default"):
        lines.append(line)
        api_server.logs.drop("default", bound_pod)
    assert lines == ["only"]


class _PodGoneBeforeTheLogIsRead(LogStore):
    """The pod's logs are dropped right after the endpoint's checks: a force delete racing the request."""

    def read(self, namespace: str, pod: str, container: str, **options: Any) -> bytes | None:
        self.drop(namespace, pod)
        return super().read(namespace, pod, container, **options)

    def follow(self, namespace: str, pod: str, container: str, **options: Any) -> Iterator[bytes]:
        self.drop(namespace, pod)  # after the 200 header of the stream has gone out
        return super().follow(namespace, pod, container, **options)


class _FailingMidStream(LogStore):
    """A follow that breaks after its first chunk, as a bug inside the server would."""

    def follow(self, namespace: str, pod: str, container: str, **options: Any) -> Iterator[bytes]:
        yield b"one\n"
        raise RuntimeError("a bug in the log store")


@pytest.fixture
def log_server_for(
    api_server: ApiServer, connect: Callable[[ApiServer], Any], pod_manifest: PodManifest
) -> Iterator[Callable[[LogStore], tuple[ApiServer, Any]]]:
    """``log_server_for(logs)``: a server over ``logs`` with a started pod ``job``, and its real client."""
    servers: list[ApiServer] = []

    def serve(logs: LogStore) -> tuple[ApiServer, Any]:
        server = ApiServer(api_server.store, logs, profile=api_server.profile)
        server.start()
        servers.append(server)
        core_v1 = connect(server)
        core_v1.create_namespaced_pod("default", pod_manifest("job", nodeName="node-1"))
        logs.start("default", "job", "base")
        logs.append("default", "job", "base", b"one\n")
        return server, core_v1

    yield serve
    for server in servers:
        server.stop()


def test_a_log_read_racing_the_pods_removal_is_404(
    log_server_for: Callable[[LogStore], tuple[ApiServer, Any]],
) -> None:
    _, core_v1 = log_server_for(_PodGoneBeforeTheLogIsRead())
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod_log("job", "default")
    assert caught.value.status == 404
    assert _message(caught.value) == 'pods "job" not found'


def test_a_follow_racing_the_pods_removal_ends_empty(
    log_server_for: Callable[[LogStore], tuple[ApiServer, Any]],
) -> None:
    _, core_v1 = log_server_for(_PodGoneBeforeTheLogIsRead())
    response = core_v1.read_namespaced_pod_log("job", "default", follow=True, _preload_content=False)
    assert response.status == 200
    assert response.data == b""


def test_an_error_mid_stream_cuts_the_connection_instead_of_writing_a_status_into_it(
    log_server_for: Callable[[LogStore], tuple[ApiServer, Any]],
) -> None:
    server, _ = log_server_for(_FailingMidStream())
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as connection:
        connection.sendall(
            b"GET /api/v1/namespaces/default/pods/job/log?follow=true HTTP/1.1\r\nHost: sim\r\n\r\n"
        )
        received = b""
        while piece := connection.recv(65536):  # until the server closes the connection
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"4\r\none\n\r\n"  # the chunk sent before the error, then no terminating chunk


def test_log_store_follow_sees_appends_from_another_thread() -> None:
    logs = LogStore()
    logs.start("ns", "p", "c")
    stream = logs.follow("ns", "p", "c")
    appended = threading.Event()

    def produce() -> None:
        logs.append("ns", "p", "c", b"hello ")
        appended.set()
        logs.append("ns", "p", "c", b"world")
        logs.close("ns", "p", "c")

    producer = threading.Thread(target=produce)
    producer.start()
    assert appended.wait(5)
    assert b"".join(stream) == b"hello world"
    producer.join(5)


def test_log_store_tail_counts_a_final_partial_line() -> None:
    logs = LogStore()
    logs.append("ns", "p", "c", b"a\nb\nc")
    assert logs.read("ns", "p", "c", tail_lines=2) == b"b\nc"
    assert logs.read("ns", "p", "c", tail_lines=0) == b""
    assert logs.read("ns", "p", "c", tail_lines=10) == b"a\nb\nc"
    assert logs.read("ns", "p", "other") is None  # never started
    logs.drop("ns", "p")
    assert logs.read("ns", "p", "c") is None  # the pod is gone


def test_timestamps_prefix_every_line(api_server: ApiServer, core_v1: Any, bound_pod: str) -> None:
    api_server.logs.start("default", bound_pod, "base")
    api_server.logs.append("default", bound_pod, "base", b"one\ntw")
    api_server.logs.append("default", bound_pod, "base", b"o\nthree\n")
    text = pod_log(core_v1, bound_pod, "default", timestamps=True, since_seconds=3600)
    lines = text.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["one", "two", "three"]
    for line in lines:
        stamp = line.split(" ", 1)[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp), stamp
        age = time.time() - datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
        assert 0 <= age < 60


def test_since_selects_lines_by_their_write_time() -> None:
    log = _ContainerLog()
    log.append(b"old\n", now=100.0)
    log.append(b"new\npartial", now=200.0)
    assert log.first_line_index(None, 150.0) == 1
    assert log.first_line_index(1, 150.0) == 2  # tail and since combine: the stricter wins
    assert log.render(log.line_starts[1], len(log.data), timestamps=False) == b"new\npartial"
