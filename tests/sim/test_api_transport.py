"""The wire-level MUSTs of the spec (§0, §1.1, §1.11, §7.1, §7.2, §7.12): what breaks the client if wrong."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
import yaml
from kubernetes import client, config

from bridge.sim.api import ApiServer
from bridge.sim.kubeconfig import write_kubeconfig

PodManifest = Callable[..., dict[str, Any]]


def _raw(
    api_server: ApiServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request over plain http.client: exactly the bytes we choose, no client-side conventions."""
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_minimal_kubeconfig_has_no_credentials_and_the_discovery_calls_parse(
    api_server: ApiServer, tmp_path: Path
) -> None:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, api_server.url)
    document = yaml.safe_load(path.read_text())
    assert document["clusters"][0]["cluster"] == {"server": api_server.url}
    assert document["users"][0]["user"] == {}
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(path), client_configuration=configuration
    )
    assert client.Configuration.get_default_copy().host != api_server.url  # the global default is untouched
    api_client = client.ApiClient(configuration)
    try:
        version = client.VersionApi(api_client).get_code()
        assert (version.major, version.git_version) == ("1", "v1.34.0-kbridge-sim")
        assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
        assert client.ApisApi(api_client).get_api_versions().groups == []
        resources = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
        assert resources["pods"].namespaced
        assert "watch" in resources["pods"].verbs
        assert {"pods/log", "pods/status", "secrets", "configmaps", "namespaces", "nodes"} <= set(resources)
    finally:
        api_client.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_endpoints_answer_ok(api_server: ApiServer, path: str) -> None:
    assert _raw(api_server, "GET", path)[::2] == (200, b"ok")


@pytest.mark.parametrize("path", ["/version", "/api", "/apis", "/api/v1"])
def test_discovery_is_served_with_and_without_trailing_slash(api_server: ApiServer, path: str) -> None:
    bare = _raw(api_server, "GET", path)
    slashed = _raw(api_server, "GET", path + "/")
    assert bare[0] == slashed[0] == 200
    assert bare[1]["content-type"] == "application/json"
    assert json.loads(bare[2]) == json.loads(slashed[2])


def test_api_discovery_names_the_served_address_even_during_stop(api_server: ApiServer) -> None:
    url = urlsplit(api_server.url)
    expected = [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{url.hostname}:{url.port}"}]
    status, _, body = _raw(api_server, "GET", "/api")
    assert (status, json.loads(body)["serverAddressByClientCIDRs"]) == (200, expected)

    api_server.stop()  # a request still in flight when stop() gives up waiting is answered after this
    late_answer = api_server._discovery("/api")

    assert late_answer is not None
    assert late_answer["serverAddressByClientCIDRs"] == expected


def test_post_without_content_type_is_json(api_server: ApiServer, pod_manifest: PodManifest) -> None:
    body = json.dumps(pod_manifest("raw")).encode()
    status, headers, payload = _raw(api_server, "POST", "/api/v1/namespaces/default/pods", body=body)
    assert status == 201
    assert headers["content-type"] == "application/json"
    created = json.loads(payload)
    assert created["metadata"]["name"] == "raw"
    assert isinstance(created["metadata"]["resourceVersion"], str)
    assert created["metadata"]["creationTimestamp"].endswith("Z")


def test_a_body_in_an_unknown_format_is_415(api_server: ApiServer, pod_manifest: PodManifest) -> None:
    body = json.dumps(pod_manifest("raw")).encode()
    status, _headers, payload = _raw(
        api_server, "POST", "/api/v1/namespaces/default/pods", body=body, headers={"Content-Type": "text/csv"}
    )
    assert status == 415
    assert json.loads(payload)["reason"] == "UnsupportedMediaType"


@pytest.mark.parametrize(
    ("method", "path", "code", "reason"),
    [
        ("GET", "/api/v1/namespaces/default/pods/missing", 404, "NotFound"),
        ("GET", "/api/v1/namespaces/default/widgets", 404, "NotFound"),
        ("GET", "/api/v1/namespaces/default/pods?labelSelector=a%20in%20()", 400, "BadRequest"),
        ("POST", "/api/v1/nodes", 405, "MethodNotAllowed"),
    ],
)
def test_every_error_is_a_status_object(
    api_server: ApiServer, method: str, path: str, code: int, reason: str
) -> None:
    body = b"{}" if method == "POST" else None
    status, headers, payload = _raw(api_server, method, path, body=body)
    assert status == code
    assert headers["content-type"] == "application/json"
    document = json.loads(payload)
    assert document["kind"] == "Status"
    assert document["apiVersion"] == "v1"
    assert document["status"] == "Failure"
    assert (document["code"], document["reason"]) == (code, reason)
    assert document["message"]


def test_not_found_status_matches_the_real_server_field_for_field(core_v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod("missing", "default")
    assert caught.value.status == 404
    assert json.loads(str(caught.value.body)) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "kind": "pods"},
        "code": 404,
    }


def test_keep_alive_requests_cost_well_under_nagle_delays(core_v1: Any, pod_manifest: PodManifest) -> None:
    """Without TCP_NODELAY each response waits ~40 ms for a delayed ACK; the bench measures precisely."""
    core_v1.create_namespaced_pod("default", pod_manifest("timed"))
    calls = 200
    started = time.perf_counter()
    for _ in range(calls):
        core_v1.read_namespaced_pod("timed", "default")
    mean_ms = (time.perf_counter() - started) / calls * 1000
    assert mean_ms < 5, f"mean GET took {mean_ms:.2f} ms"


def test_per_request_overhead_on_loopback_is_under_two_milliseconds(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    """The server's share of a call (§7.12), measured without the official client's own encoding costs."""
    core_v1.create_namespaced_pod("default", pod_manifest("timed"))
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    durations = []
    try:
        for _ in range(300):  # one keep-alive connection, like the client's pool
            started = time.perf_counter()
            connection.request("GET", "/api/v1/namespaces/default/pods/timed")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            durations.append(time.perf_counter() - started)
    finally:
        connection.close()
    median_ms = sorted(durations)[len(durations) // 2] * 1000
    assert median_ms < 2, f"median GET round trip {median_ms:.2f} ms"


def test_a_stopped_server_refuses_connections_and_restarts_on_the_same_port(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("survivor"))
    api_server.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Connection refused"):
        core_v1.list_namespaced_pod("default", _request_timeout=2)
    api_server.start()
    assert [pod.metadata.name for pod in core_v1.list_namespaced_pod("default").items] == ["survivor"]


def test_a_chunked_body_is_read_and_the_connection_stays_in_step(
    api_server: ApiServer, pod_manifest: PodManifest
) -> None:
    body = json.dumps(pod_manifest("chunky")).encode()
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:  # what `curl -T` sends: no Content-Length, the body in chunks
        connection.request(
            "POST", "/api/v1/namespaces/default/pods", body=iter([body[:7], body[7:]]), encode_chunked=True
        )
        created = connection.getresponse()
        assert (created.status, json.loads(created.read())["metadata"]["name"]) == (201, "chunky")
        connection.request("GET", "/api/v1/namespaces/default/pods/chunky")  # same connection
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_body_over_the_apiserver_limit_is_413(api_server: ApiServer) -> None:
    status, headers, payload = _raw(
        api_server, "POST", "/api/v1/namespaces/default/configmaps", body=b" " * (3 * 1024 * 1024 + 1)
    )
    assert status == 413
    assert json.loads(payload)["reason"] == "RequestEntityTooLarge"
    assert "connection" not in headers  # the body was read away: the connection stays usable
