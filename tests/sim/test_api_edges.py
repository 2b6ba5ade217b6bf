"""Edge cases a real cluster gets right and a hand-written server easily gets wrong, through the real client.

List+watch consistency (the informer contract), watches across a compaction, deletecollection with both
selector kinds, dry runs of every write verb, a log follow whose pod is deleted mid-stream, faults switched
from another process, and DynamicClient discovery as kubectl-style callers do it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, dynamic

from bridge.sim.api import ApiServer
from bridge.sim.cluster import Simulator

PodManifest = Callable[..., dict[str, Any]]


def _events_until(stream: Any, events: Any, count: int) -> list[tuple[str, str]]:
    """(type, name) of the first ``count`` events, then stop the watch."""
    seen = []
    for event in events:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == count:
            stream.stop()
    return seen


def test_a_watch_from_the_list_version_turns_the_list_into_the_current_state(
    core_v1: Any, new_watch: Callable[[], Any], pod_manifest: PodManifest
) -> None:
    for name in ("a", "b", "c"):
        core_v1.create_namespaced_pod("default", pod_manifest(name))
    listed = core_v1.list_namespaced_pod("default")
    core_v1.create_namespaced_pod("default", pod_manifest("d"))
    core_v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"seen": "yes"}}})
    core_v1.delete_namespaced_pod("b", "default")  # unbound: MODIFIED (deletionTimestamp), then DELETED

    state = {pod.metadata.name: pod.metadata.resource_version for pod in listed.items}
    stream = new_watch()
    events = stream.stream(
        core_v1.list_namespaced_pod,
        "default",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=5,
    )
    for event in events:  # exactly what an informer does with list + watch
        pod = event["object"]
        if event["type"] == "DELETED":
            del state[pod.metadata.name]
        else:
            state[pod.metadata.name] = pod.metadata.resource_version
        if "b" not in state:
            stream.stop()

    now = core_v1.list_namespaced_pod("default")
    assert state == {pod.metadata.name: pod.metadata.resource_version for pod in now.items}
    assert sorted(state) == ["a", "c", "d"]


def test_a_compaction_expires_old_versions_but_not_open_watches_or_the_relist_pattern(
    api_server: ApiServer, core_v1: Any, new_watch: Callable[[], Any], pod_manifest: PodManifest
) -> None:
    old = core_v1.create_namespaced_pod("default", pod_manifest("before")).metadata.resource_version
    core_v1.create_namespaced_pod("default", pod_manifest("during"))
    open_stream = new_watch()
    live = iter(
        open_stream.stream(core_v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=5)
    )
    assert next(live)["object"].metadata.name == "during"  # the watch is open now
    api_server.store.compact()
    core_v1.create_namespaced_pod("default", pod_manifest("after"))
    assert next(live)["object"].metadata.name == "after"  # an open watch is unaffected
    open_stream.stop()

    with pytest.raises(client.ApiException) as caught:
        next(iter(new_watch().stream(core_v1.list_namespaced_pod, "default", resource_version=old)))
    assert caught.value.status == 410

    relisted = core_v1.list_namespaced_pod("default")  # the documented recovery: re-list, watch from there
    core_v1.create_namespaced_pod("default", pod_manifest("later"))
    resumed = new_watch()
    events = resumed.stream(
        core_v1.list_namespaced_pod,
        "default",
        resource_version=relisted.metadata.resource_version,
        timeout_seconds=5,
    )
    assert _events_until(resumed, events, 1) == [("ADDED", "later")]


def test_delete_collection_honours_label_and_field_selectors_together(
    core_v1: Any, pod_manifest: PodManifest
) -> None:
    for name, app in (("web-1", "web"), ("web-2", "web"), ("db-1", "db"), ("keep", "web")):
        core_v1.create_namespaced_pod("default", pod_manifest(name, labels={"app": app}))

    with pytest.raises(client.ApiException) as caught:
        core_v1.delete_collection_namespaced_pod("default", label_selector="app in (web")
    assert caught.value.status == 400
    assert len(core_v1.list_namespaced_pod("default").items) == 4  # a bad selector deletes nothing

    core_v1.delete_collection_namespaced_pod(
        "default", label_selector="app notin (db)", field_selector="metadata.name!=keep"
    )

    assert sorted(pod.metadata.name for pod in core_v1.list_namespaced_pod("default").items) == [
        "db-1",
        "keep",
    ]


def test_dry_run_of_patch_replace_and_delete_answers_but_changes_nothing(
    core_v1: Any, pod_manifest: PodManifest
) -> None:
    created = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    version = core_v1.list_namespaced_pod("default").metadata.resource_version

    patched = core_v1.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"x": "1"}}}, dry_run="All"
    )
    body = core_v1.read_namespaced_pod("p", "default")
    body.metadata.labels = {"y": "2"}
    replaced = core_v1.replace_namespaced_pod("p", "default", body, dry_run="All")
    core_v1.delete_namespaced_pod("p", "default", dry_run="All")
    with pytest.raises(client.ApiException) as caught:
        core_v1.delete_namespaced_pod("p", "default", dry_run="Some")

    assert patched.metadata.labels == {"x": "1"}
    assert replaced.metadata.labels == {"y": "2"}
    assert caught.value.status == 422
    assert 'dryRun: Unsupported value: "Some"' in json.loads(str(caught.value.body))["message"]
    stored = core_v1.read_namespaced_pod("p", "default")
    assert stored.metadata.labels is None
    assert stored.metadata.deletion_timestamp is None
    assert stored.metadata.resource_version == created.metadata.resource_version
    assert core_v1.list_namespaced_pod("default").metadata.resource_version == version


def test_a_follow_stream_ends_when_its_pod_is_force_deleted(
    process_cluster: Simulator, new_watch: Callable[[], Any]
) -> None:
    core_v1: Any = process_cluster.core_v1()
    code = "import time; print('started', flush=True); time.sleep(60)"
    manifest = {
        "metadata": {"name": "sleeper"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "python", "command": [sys.executable, "-c", code]}],
        },
    }
    core_v1.create_namespaced_pod("default", manifest)
    running = new_watch()
    names = _events_until(
        running,
        running.stream(
            core_v1.list_namespaced_pod, "default", field_selector="status.phase=Running", timeout_seconds=10
        ),
        1,
    )
    assert names == [("ADDED", "sleeper")]

    lines = []
    for line in new_watch().stream(
        core_v1.read_namespaced_pod_log, "sleeper", "default", _request_timeout=20
    ):
        lines.append(line)  # the first line: now delete the pod under the open stream
        core_v1.delete_namespaced_pod("sleeper", "default", grace_period_seconds=0)

    assert lines == ["started"]
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod("sleeper", "default")
    assert caught.value.status == 404


_INJECT_FROM_ANOTHER_PROCESS = """
import sys, urllib.request
# No Content-Type header given: urllib sends form-urlencoded, as `curl -d` does.
request = urllib.request.Request(sys.argv[1] + "/_sim/faults", data=sys.argv[2].encode(), method="POST")
print(urllib.request.urlopen(request).read().decode())
"""


def test_faults_are_switched_on_and_off_from_another_process(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    fault = '{"verb": "create", "status": 500, "count": null}'
    injected = subprocess.run(
        [sys.executable, "-c", _INJECT_FROM_ANOTHER_PROCESS, api_server.url, fault],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(injected.stdout)["status"] == 500

    for attempt in range(2):  # count null: every create fails until the fault is cleared
        with pytest.raises(client.ApiException) as caught:
            core_v1.create_namespaced_pod("default", pod_manifest(f"p{attempt}"))
        assert caught.value.status == 500
        assert json.loads(str(caught.value.body))["reason"] == "InternalError"
    clear = urllib.request.Request(api_server.url + "/_sim/faults", method="DELETE")  # noqa: S310 - http
    with urllib.request.urlopen(clear, timeout=5) as response:  # noqa: S310 - the test server's URL
        assert json.loads(response.read()) == {"faults": []}
    assert core_v1.create_namespaced_pod("default", pod_manifest("p")).metadata.name == "p"


def test_dynamic_client_discovers_and_drives_pods(core_v1: Any, pod_manifest: PodManifest) -> None:
    # Discovery through /version, /apis and /api/v1, as kubectl-style callers do it.
    discovery = dynamic.DynamicClient(core_v1.api_client)  # type: ignore[no-untyped-call]
    pods = discovery.resources.get(api_version="v1", kind="Pod")

    pods.create(body=pod_manifest("dyn", labels={"via": "dynamic"}), namespace="default")
    listed = pods.get(namespace="default", label_selector="via=dynamic")

    assert (pods.namespaced, pods.name) == (True, "pods")
    assert [item.metadata.name for item in listed.items] == ["dyn"]
    assert core_v1.read_namespaced_pod("dyn", "default").metadata.labels == {"via": "dynamic"}


def test_concurrent_list_and_writes_never_show_a_torn_page(core_v1: Any, pod_manifest: PodManifest) -> None:
    for index in range(6):
        core_v1.create_namespaced_pod("default", pod_manifest(f"p{index}"))
    first = core_v1.list_namespaced_pod("default", limit=2)
    writer = threading.Thread(
        target=lambda: [core_v1.delete_namespaced_pod(f"p{index}", "default") for index in range(6)]
    )
    writer.start()
    writer.join(10)
    pages = [first]
    while pages[-1].metadata._continue:
        pages.append(core_v1.list_namespaced_pod("default", limit=2, _continue=pages[-1].metadata._continue))

    # Every page reads the snapshot of the first one, although all pods are gone by now.
    assert [pod.metadata.name for page in pages for pod in page.items] == [f"p{index}" for index in range(6)]
    assert {page.metadata.resource_version for page in pages} == {first.metadata.resource_version}
    assert core_v1.list_namespaced_pod("default").items == []
