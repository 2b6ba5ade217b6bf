"""Pod CRUD via the real client: system fields, admission, conflicts, updates, deletes (§1.3-8, §7.2-5)."""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from bridge.sim import store as store_module
from bridge.sim.api import ApiServer

PodManifest = Callable[..., dict[str, Any]]

_GENERATED_SUFFIX = re.compile(r"^job-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def _status(exception: client.ApiException) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(str(exception.body))
    return document


def test_create_fills_system_fields(core_v1: Any, pod_manifest: PodManifest) -> None:
    response = core_v1.create_namespaced_pod("default", pod_manifest("first"), _preload_content=False)
    assert response.status == 201
    created = json.loads(response.data)
    metadata = created["metadata"]
    assert uuid.UUID(metadata["uid"]).version == 4
    assert metadata["resourceVersion"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", metadata["creationTimestamp"])
    assert (metadata["namespace"], metadata["generation"]) == ("default", 1)
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert created["spec"]["terminationGracePeriodSeconds"] == 30
    assert created["spec"]["containers"][0]["imagePullPolicy"] == "Always"  # untagged image


def test_client_supplied_status_and_uid_are_discarded(core_v1: Any, pod_manifest: PodManifest) -> None:
    body = pod_manifest("sneaky")
    body["metadata"]["uid"] = "not-a-uuid"
    body["status"] = {"phase": "Running"}
    created = core_v1.create_namespaced_pod("default", body)
    assert created.metadata.uid != "not-a-uuid"
    assert created.status.phase == "Pending"


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ({"limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
        (
            {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "Guaranteed",
        ),
        ({"requests": {"cpu": "100m"}}, "Burstable"),
        ({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}, "Burstable"),
    ],
)
def test_qos_class_follows_requests_and_limits(
    core_v1: Any, pod_manifest: PodManifest, resources: dict[str, Any], qos: str
) -> None:
    body = pod_manifest("q")
    body["spec"]["containers"][0]["resources"] = resources
    assert core_v1.create_namespaced_pod("default", body).status.qos_class == qos


def test_one_resource_version_counter_spans_all_resources(core_v1: Any, pod_manifest: PodManifest) -> None:
    first = core_v1.create_namespaced_pod("default", pod_manifest("a"))
    config_map = core_v1.create_namespaced_config_map(
        "default", {"metadata": {"name": "cm"}, "data": {"k": "v"}}
    )
    second = core_v1.create_namespaced_pod("default", pod_manifest("b"))
    versions = [int(obj.metadata.resource_version) for obj in (first, config_map, second)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3
    assert (
        core_v1.list_namespaced_pod("default").metadata.resource_version == second.metadata.resource_version
    )


def test_generate_name_appends_five_restricted_characters(core_v1: Any, pod_manifest: PodManifest) -> None:
    body = pod_manifest(None)
    body["metadata"] = {"generateName": "job-"}
    names = {core_v1.create_namespaced_pod("default", body).metadata.name for _ in range(20)}
    assert len(names) == 20
    assert all(_GENERATED_SUFFIX.match(name) for name in names), names


def test_dry_run_persists_nothing_and_emits_no_event(
    new_watch: Callable[[], Any], core_v1: Any, pod_manifest: PodManifest
) -> None:
    before = core_v1.list_namespaced_pod("default").metadata.resource_version
    dry = core_v1.create_namespaced_pod("default", pod_manifest("ghost"), dry_run="All")
    assert dry.metadata.name == "ghost"
    assert dry.status.phase == "Pending"
    core_v1.create_namespaced_pod("default", pod_manifest("real"))
    events = new_watch().stream(
        core_v1.list_namespaced_pod, "default", resource_version=before, timeout_seconds=1
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "real")]
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod("ghost", "default")
    assert caught.value.status == 404


def test_creating_in_a_missing_namespace_is_404(core_v1: Any, pod_manifest: PodManifest) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("nowhere", pod_manifest("p"))
    assert caught.value.status == 404
    assert _status(caught.value)["message"] == 'namespaces "nowhere" not found'


def test_invalid_name_gives_the_exact_422_of_the_real_server(core_v1: Any, pod_manifest: PodManifest) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", pod_manifest("Bad_Name"))
    assert caught.value.status == 422
    detail = (
        'Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
        "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
        "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
    assert _status(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'Pod "Bad_Name" is invalid: metadata.name: {detail}',
        "reason": "Invalid",
        "details": {
            "name": "Bad_Name",
            "kind": "Pod",
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": "metadata.name"}],
        },
        "code": 422,
    }


def _with(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "base", "image": "busybox", **(container or {})}
    return {"metadata": {"name": "p"}, "spec": {"containers": [base], **spec}}


@pytest.mark.parametrize(
    ("body", "field", "reason", "message_part"),
    [
        (_with(containers=[]), "spec.containers", "FieldValueRequired", "Required value"),
        (_with({"image": ""}), "spec.containers[0].image", "FieldValueRequired", "Required value"),
        (_with({"name": "Base"}), "spec.containers[0].name", "FieldValueInvalid", 'Invalid value: "Base"'),
        (
            _with(containers=[{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]),
            "spec.containers[1].name",
            "FieldValueDuplicate",
            'Duplicate value: "a"',
        ),
        (
            _with(restartPolicy="Sometimes"),
            "spec.restartPolicy",
            "FieldValueNotSupported",
            'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"',
        ),
        (
            _with({"env": [{"name": "1BAD", "value": "x"}]}),
            "spec.containers[0].env[0].name",
            "FieldValueInvalid",
            'Invalid value: "1BAD"',
        ),
        (
            _with({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": ""}}}]}),
            "spec.containers[0].env[0].valueFrom.secretKeyRef.key",
            "FieldValueRequired",
            "Required value",
        ),
        (
            _with({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
            "spec.containers[0].resources.requests",
            "FieldValueInvalid",
            "must be less than or equal to cpu limit of 1",
        ),
        (
            _with({"resources": {"limits": {"memory": "lots"}}}),
            "spec.containers[0].resources.limits[memory]",
            "FieldValueInvalid",
            'Invalid value: "lots"',
        ),
        (
            _with({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
            "spec.containers[0].volumeMounts[0].name",
            "FieldValueNotFound",
            'Not found: "data"',
        ),
        (
            {"metadata": {"name": "p", "labels": {"app": "bad value"}}, "spec": _with()["spec"]},
            "metadata.labels",
            "FieldValueInvalid",
            'Invalid value: "bad value": a valid label must be an empty string',
        ),
        (
            {"metadata": {"name": "p", "labels": {"a/b/c": "v"}}, "spec": _with()["spec"]},
            "metadata.labels",
            "FieldValueInvalid",
            'Invalid value: "a/b/c"',
        ),
        (
            {"metadata": {"name": "p", "annotations": {"big": "x" * 262_145}}, "spec": _with()["spec"]},
            "metadata.annotations",
            "FieldValueTooLong",
            "Too long: may not be more than 262144 bytes",
        ),
        (
            {"metadata": {}, "spec": _with()["spec"]},
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        ),
    ],
)
def test_invalid_pods_get_422_naming_field_and_fix(
    core_v1: Any, body: dict[str, Any], field: str, reason: str, message_part: str
) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", body)
    assert caught.value.status == 422
    status = _status(caught.value)
    assert status["reason"] == "Invalid"
    assert status["details"]["kind"] == "Pod"
    causes = [cause for cause in status["details"]["causes"] if cause["field"] == field]
    assert causes, status["details"]["causes"]
    assert causes[0]["reason"] == reason
    assert message_part in causes[0]["message"]
    assert status["message"].startswith(f'Pod "{body["metadata"].get("name", "")}" is invalid: ')
    assert f"{field}: {causes[0]['message']}" in status["message"]


def test_all_errors_are_reported_together(core_v1: Any) -> None:
    body = {"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}], "restartPolicy": "No"}}
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", body)
    status = _status(caught.value)
    fields = [cause["field"] for cause in status["details"]["causes"]]
    assert fields == ["metadata.name", "spec.containers[0].image", "spec.restartPolicy"]
    assert status["message"].startswith('Pod "Bad_Name" is invalid: [metadata.name: ')
    assert status["message"].endswith("]")


def test_duplicate_create_is_409_already_exists(core_v1: Any, pod_manifest: PodManifest) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("twice"))
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", pod_manifest("twice"))
    assert caught.value.status == 409
    status = _status(caught.value)
    assert (status["reason"], status["message"]) == ("AlreadyExists", 'pods "twice" already exists')
    assert status["details"] == {"name": "twice", "kind": "pods"}


def test_put_with_a_stale_resource_version_is_409_conflict(core_v1: Any, pod_manifest: PodManifest) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("p", labels={"v": "1"}))
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"v": "2"}}})
    pod.metadata.labels = {"v": "3"}
    with pytest.raises(client.ApiException) as caught:
        core_v1.replace_namespaced_pod("p", "default", pod)
    assert caught.value.status == 409
    assert _status(caught.value)["message"] == (
        'Operation cannot be fulfilled on pods "p": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert core_v1.read_namespaced_pod("p", "default").metadata.labels == {"v": "2"}


def test_put_may_change_image_and_labels_but_not_the_rest_of_the_spec(
    core_v1: Any, pod_manifest: PodManifest
) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    pod.spec.containers[0].image = "busybox:1.36"
    pod.metadata.labels = {"tier": "batch"}
    pod.status = client.V1PodStatus(phase="Running")  # main-resource writes ignore status
    replaced = core_v1.replace_namespaced_pod("p", "default", pod)
    assert replaced.spec.containers[0].image == "busybox:1.36"
    assert replaced.metadata.labels == {"tier": "batch"}
    assert replaced.metadata.generation == 2
    assert replaced.status.phase == "Pending"
    replaced.spec.containers[0].command = ["sh", "-c", "echo changed"]
    with pytest.raises(client.ApiException) as caught:
        core_v1.replace_namespaced_pod("p", "default", replaced)
    assert caught.value.status == 422
    cause = _status(caught.value)["details"]["causes"][0]
    assert cause["field"] == "spec"
    assert cause["reason"] == "FieldValueForbidden"
    assert "pod updates may not change fields other than" in cause["message"]


def test_status_subresource_writes_only_status(core_v1: Any, pod_manifest: PodManifest) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p", labels={"a": "1"}))
    patched = core_v1.patch_namespaced_pod_status(
        "p",
        "default",
        {"metadata": {"labels": {"a": "2"}}, "status": {"phase": "Running", "podIP": "10.0.0.9"}},
    )
    assert patched.status.phase == "Running"
    assert patched.status.pod_ip == "10.0.0.9"
    assert patched.metadata.labels == {"a": "1"}
    read = core_v1.read_namespaced_pod_status("p", "default")
    assert read.status.pod_ip == "10.0.0.9"
    read.status.phase = "Succeeded"
    read.spec.containers[0].image = "ignored:1"  # a /status write changes nothing but status
    replaced = core_v1.replace_namespaced_pod_status("p", "default", read)
    assert replaced.status.phase == "Succeeded"
    assert replaced.spec.containers[0].image == "busybox"


def test_patch_media_types(core_v1: Any, pod_manifest: PodManifest) -> None:
    body = pod_manifest("p", labels={"keep": "1", "drop": "1"})
    body["spec"]["containers"].append({"name": "side", "image": "busybox"})
    core_v1.create_namespaced_pod("default", body)
    # A dict body goes out as a strategic merge patch: containers merge by name.
    smp = core_v1.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "side", "image": "alpine"}]}}
    )
    assert [(c.name, c.image) for c in smp.spec.containers] == [("base", "busybox"), ("side", "alpine")]
    merge = core_v1.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"drop": None}}}, _content_type="application/merge-patch+json"
    )
    assert merge.metadata.labels == {"keep": "1"}
    ops = [
        {"op": "test", "path": "/metadata/labels/keep", "value": "1"},
        {"op": "add", "path": "/metadata/labels/new", "value": "x"},
    ]
    assert core_v1.patch_namespaced_pod("p", "default", ops).metadata.labels == {"keep": "1", "new": "x"}
    with pytest.raises(client.ApiException) as caught:
        core_v1.patch_namespaced_pod(
            "p", "default", [{"op": "test", "path": "/metadata/labels/keep", "value": "2"}]
        )
    assert caught.value.status == 422


def test_a_patch_that_changes_nothing_is_not_a_write(core_v1: Any, pod_manifest: PodManifest) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("p", labels={"a": "1"}))
    same = core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}})
    assert same.metadata.resource_version == pod.metadata.resource_version


def _events(core_v1: Any, new_watch: Callable[[], Any], since: str) -> list[tuple[str, str | None, int]]:
    return [
        (
            event["type"],
            event["object"].metadata.deletion_timestamp and "marked",
            int(event["object"].metadata.resource_version),
        )
        for event in new_watch().stream(
            core_v1.list_namespaced_pod, "default", resource_version=since, timeout_seconds=1
        )
    ]


def test_deleting_an_unbound_pod_marks_then_removes_it(
    core_v1: Any, pod_manifest: PodManifest, new_watch: Callable[[], Any]
) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    deleted = core_v1.delete_namespaced_pod("p", "default")
    assert deleted.metadata.deletion_grace_period_seconds == 0
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod("p", "default")
    assert caught.value.status == 404
    events = _events(core_v1, new_watch, pod.metadata.resource_version)
    assert [(kind, marked) for kind, marked, _ in events] == [("MODIFIED", "marked"), ("DELETED", "marked")]
    assert events[0][2] < events[1][2]


def test_deleting_a_bound_pod_is_graceful_and_only_shortens(
    core_v1: Any, pod_manifest: PodManifest, bind: Callable[[str], None]
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    bind("p")
    marked = core_v1.delete_namespaced_pod("p", "default")
    assert marked.metadata.deletion_grace_period_seconds == 30
    assert marked.metadata.deletion_timestamp is not None
    assert (
        core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp
        == marked.metadata.deletion_timestamp
    )
    longer = core_v1.delete_namespaced_pod("p", "default", grace_period_seconds=60)
    assert longer.metadata.resource_version == marked.metadata.resource_version
    shorter = core_v1.delete_namespaced_pod("p", "default", grace_period_seconds=5)
    assert shorter.metadata.deletion_grace_period_seconds == 5
    core_v1.delete_namespaced_pod("p", "default", body=client.V1DeleteOptions(grace_period_seconds=0))
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_pod("p", "default")
    assert caught.value.status == 404


def test_delete_preconditions(core_v1: Any, pod_manifest: PodManifest) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    wrong = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid="00000000-0000-4000-8000-000000000000")
    )
    with pytest.raises(client.ApiException) as caught:
        core_v1.delete_namespaced_pod("p", "default", body=wrong)
    assert caught.value.status == 409
    assert "the UID in the precondition" in _status(caught.value)["message"]
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    with pytest.raises(client.ApiException) as caught:
        core_v1.delete_namespaced_pod("p", "default", body=stale)
    assert caught.value.status == 409
    right = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=pod.metadata.uid))
    core_v1.delete_namespaced_pod("p", "default", body=right)
    assert core_v1.list_namespaced_pod("default").items == []


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"propagation_policy": "Everything"}, 'propagationPolicy: Unsupported value: "Everything"'),
        (
            {"propagation_policy": "Background", "orphan_dependents": True},
            "orphanDependents and deletionPropagation cannot be both set",
        ),
    ],
)
def test_bad_delete_options_are_422_and_delete_nothing(
    core_v1: Any, pod_manifest: PodManifest, options: dict[str, Any], complaint: str
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    with pytest.raises(client.ApiException) as caught:
        core_v1.delete_namespaced_pod("p", "default", **options)
    assert caught.value.status == 422
    assert complaint in _status(caught.value)["message"]
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp is None


def _raw_json(api_server: ApiServer, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """One JSON request over plain http.client: the typed client refuses to send a mistyped body at all,
    but kubectl --raw, curl and other clients can."""
    url = urlsplit(api_server.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"gracePeriodSeconds": "soon"}, 'gracePeriodSeconds: Invalid value: "soon": must be an integer'),
        ({"gracePeriodSeconds": True}, "gracePeriodSeconds: Invalid value: true: must be an integer"),
        ({"preconditions": ["uid"]}, 'preconditions: Invalid value: ["uid"]: must be an object'),
        ({"preconditions": {"uid": 7}}, "preconditions.uid: Invalid value: 7: must be a string"),
        ({"dryRun": "All"}, 'dryRun: Invalid value: "All": must be a list'),
        ({"orphanDependents": "yes"}, 'orphanDependents: Invalid value: "yes": must be true or false'),
        ([1], "the DELETE body: Invalid value: [1]: must be DeleteOptions"),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/namespaces/default/pods/p", "/api/v1/namespaces/default/pods"])
def test_mistyped_delete_options_are_400_naming_the_field(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest, path: str, body: Any, complaint: str
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))

    code, status = _raw_json(api_server, "DELETE", path, body)

    assert (code, status["reason"]) == (400, "BadRequest")
    assert complaint in status["message"]
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp is None


def test_mistyped_eviction_delete_options_are_400_naming_the_field(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    eviction = {"metadata": {"name": "p"}, "deleteOptions": {"gracePeriodSeconds": "soon"}}

    code, status = _raw_json(api_server, "POST", "/api/v1/namespaces/default/pods/p/eviction", eviction)

    assert code == 400
    assert 'deleteOptions.gracePeriodSeconds: Invalid value: "soon"' in status["message"]
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp is None


def test_delete_collection_by_label(core_v1: Any, pod_manifest: PodManifest) -> None:
    for name, app in (("a", "x"), ("b", "x"), ("c", "y")):
        core_v1.create_namespaced_pod("default", pod_manifest(name, labels={"app": app}))
    core_v1.delete_collection_namespaced_pod("default", label_selector="app=x")
    assert [pod.metadata.name for pod in core_v1.list_namespaced_pod("default").items] == ["c"]


def test_secrets_configmaps_and_namespaces(core_v1: Any, pod_manifest: PodManifest) -> None:
    secret = core_v1.create_namespaced_secret(
        "default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    )
    assert secret.data == {"token": "YWJj"}
    assert secret.type == "Opaque"
    assert core_v1.read_namespaced_secret("s", "default").data == {"token": "YWJj"}
    core_v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    core_v1.patch_namespaced_config_map("cm", "default", {"data": {"k": "w"}})
    assert core_v1.read_namespaced_config_map("cm", "default").data == {"k": "w"}
    core_v1.delete_namespaced_config_map("cm", "default")
    with pytest.raises(client.ApiException) as caught:
        core_v1.read_namespaced_config_map("cm", "default")
    assert _status(caught.value)["details"] == {"name": "cm", "kind": "configmaps"}

    core_v1.create_namespace({"metadata": {"name": "team"}})
    assert core_v1.read_namespace("team").status.phase == "Active"
    core_v1.create_namespaced_pod("team", pod_manifest("p"))
    names = {ns.metadata.name for ns in core_v1.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "team"} <= names
    core_v1.delete_namespace("team")
    assert core_v1.list_pod_for_all_namespaces(field_selector="metadata.namespace=team").items == []


def test_nodes_are_read_only_through_the_api(api_server: ApiServer, core_v1: Any) -> None:
    api_server.store.create("nodes", None, {"metadata": {"name": "node-1", "labels": {"zone": "a"}}})
    assert [node.metadata.name for node in core_v1.list_node(label_selector="zone=a").items] == ["node-1"]
    assert core_v1.read_node("node-1").metadata.uid
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_node({"metadata": {"name": "node-2"}})
    assert caught.value.status == 405


def test_generate_name_retries_a_colliding_suffix(
    core_v1: Any, pod_manifest: PodManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    suffixes = iter(["job-aaaaa", "job-aaaaa", "job-bbbbb"])
    monkeypatch.setattr(store_module, "_generate_name", lambda prefix: next(suffixes))
    body = pod_manifest(None)
    body["metadata"] = {"generateName": "job-"}
    assert core_v1.create_namespaced_pod("default", body).metadata.name == "job-aaaaa"
    assert core_v1.create_namespaced_pod("default", body).metadata.name == "job-bbbbb"  # collided once


def test_generate_name_gives_up_with_a_retryable_409(
    core_v1: Any, pod_manifest: PodManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_generate_name", lambda prefix: prefix + "zzzzz")
    body = pod_manifest(None)
    body["metadata"] = {"generateName": "job-"}
    core_v1.create_namespaced_pod("default", body)
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_pod("default", body)
    assert caught.value.status == 409
    assert (caught.value.headers or {})["Retry-After"] == "1"
    assert _status(caught.value)["message"].endswith(
        "the server was not able to generate a unique name for the object"
    )


def test_put_of_a_body_without_defaults_keeps_them(core_v1: Any, pod_manifest: PodManifest) -> None:
    created = core_v1.create_namespaced_pod("default", pod_manifest("p"))
    fresh = pod_manifest("p", labels={"updated": "yes"})
    replaced = core_v1.replace_namespaced_pod("p", "default", fresh)
    assert replaced.metadata.labels == {"updated": "yes"}
    assert replaced.spec == created.spec


def test_eviction_is_a_graceful_delete(
    core_v1: Any, pod_manifest: PodManifest, bind: Callable[[str], None]
) -> None:
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    bind("p")
    eviction = client.V1Eviction(
        metadata=client.V1ObjectMeta(name="p", namespace="default"),
        delete_options=client.V1DeleteOptions(grace_period_seconds=7),
    )
    core_v1.create_namespaced_pod_eviction("p", "default", eviction)
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_grace_period_seconds == 7


def test_server_side_apply_creates_then_patches(core_v1: Any, pod_manifest: PodManifest) -> None:
    body = {"apiVersion": "v1", "kind": "Pod", **pod_manifest("applied", labels={"v": "1"})}
    created = core_v1.patch_namespaced_pod(
        "applied", "default", body, field_manager="test", _content_type="application/apply-patch+yaml"
    )
    assert created.metadata.labels == {"v": "1"}
    body["metadata"]["labels"] = {"v": "2"}
    patched = core_v1.patch_namespaced_pod(
        "applied", "default", body, field_manager="test", _content_type="application/apply-patch+yaml"
    )
    assert patched.metadata.labels == {"v": "2"}
    with pytest.raises(client.ApiException) as caught:
        core_v1.patch_namespaced_pod("applied", "default", body, _content_type="application/apply-patch+yaml")
    assert caught.value.status == 422
    assert "fieldManager: Required value" in _status(caught.value)["message"]
