"""Owner references through the real client: validated like the real API, and collected with their owner."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from bridge.sim.api import ApiServer

PodManifest = Callable[..., dict[str, Any]]


def _owner(obj: Any) -> dict[str, str]:
    return {"apiVersion": "v1", "kind": obj.kind, "name": obj.metadata.name, "uid": obj.metadata.uid}


def _secret(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": list(owners)}, "stringData": {"token": "t"}}


def _secrets(core_v1: Any, namespace: str = "default") -> set[str]:
    return {secret.metadata.name for secret in core_v1.list_namespaced_secret(namespace).items}


def test_removing_an_owner_deletes_what_it_alone_owned_with_a_deleted_event(
    core_v1: Any, pod_manifest: PodManifest, new_watch: Callable[[], Any]
) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("owner"))
    config_map = core_v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    core_v1.create_namespaced_secret("default", _secret("only-pod", _owner(pod)))
    core_v1.create_namespaced_secret("default", _secret("pod-and-cm", _owner(pod), _owner(config_map)))
    core_v1.create_namespaced_secret("default", _secret("unowned"))
    core_v1.create_namespace({"metadata": {"name": "other"}})
    core_v1.create_namespaced_secret("other", _secret("elsewhere", _owner(pod)))  # owners share a namespace
    version = core_v1.list_namespaced_secret("default").metadata.resource_version

    core_v1.delete_namespaced_pod("owner", "default")  # unbound: removed at once
    assert _secrets(core_v1) == {"pod-and-cm", "unowned"}  # the config map still owns the other one
    core_v1.delete_namespaced_config_map("cm", "default")
    assert _secrets(core_v1) == {"unowned"}
    assert _secrets(core_v1, "other") == {"elsewhere"}

    events = new_watch().stream(
        core_v1.list_namespaced_secret, "default", resource_version=version, timeout_seconds=1
    )
    assert [(event["type"], event["object"].metadata.name) for event in events] == [
        ("DELETED", "only-pod"),
        ("DELETED", "pod-and-cm"),
    ]


def test_a_running_pod_takes_its_dependents_along_only_once_it_is_gone(
    api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest, bind: Callable[[str], None]
) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("runner"))
    bind("runner")  # bound and not finished: deletion is graceful, the kubelet removes it later
    core_v1.create_namespaced_secret("default", _secret("token", _owner(pod)))
    core_v1.delete_namespaced_pod("runner", "default", grace_period_seconds=30)
    assert core_v1.read_namespaced_pod("runner", "default").metadata.deletion_timestamp is not None
    assert _secrets(core_v1) == {"token"}
    api_server.store.remove("pods", "default", "runner")  # what the kubelet does once it stopped
    assert _secrets(core_v1) == set()


def test_dependents_are_collected_in_chains_and_a_namespace_deletion_still_succeeds(
    core_v1: Any, pod_manifest: PodManifest
) -> None:
    core_v1.create_namespace({"metadata": {"name": "team"}})
    pod = core_v1.create_namespaced_pod("team", pod_manifest("root"))
    middle = core_v1.create_namespaced_config_map(
        "team", {"metadata": {"name": "middle", "ownerReferences": [_owner(pod)]}}
    )
    core_v1.create_namespaced_secret("team", _secret("leaf", _owner(middle)))
    core_v1.delete_namespaced_pod("root", "team")
    assert core_v1.list_namespaced_config_map("team").items == []
    assert _secrets(core_v1, "team") == set()

    parent = core_v1.create_namespaced_pod("team", pod_manifest("parent"))
    child = pod_manifest("child")
    child["metadata"]["ownerReferences"] = [_owner(parent)]
    core_v1.create_namespaced_pod("team", child)
    core_v1.create_namespaced_secret("team", _secret("owned", _owner(parent)))
    core_v1.delete_namespace("team")  # removing the parent collects the child it was about to remove
    assert core_v1.list_pod_for_all_namespaces(field_selector="metadata.namespace=team").items == []
    assert core_v1.list_secret_for_all_namespaces(field_selector="metadata.namespace=team").items == []


def _causes(exception: client.ApiException) -> list[tuple[str, str, str]]:
    status = json.loads(str(exception.body))
    return [(cause["field"], cause["reason"], cause["message"]) for cause in status["details"]["causes"]]


def test_owner_references_are_validated_on_create_update_and_patch(
    core_v1: Any, pod_manifest: PodManifest
) -> None:
    pod = core_v1.create_namespaced_pod("default", pod_manifest("owner"))
    without_uid = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "owner",
        "uid": "",
    }  # the client requires the key
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_secret("default", _secret("s", without_uid))
    assert caught.value.status == 422
    assert json.loads(str(caught.value.body))["message"] == (
        'Secret "s" is invalid: metadata.ownerReferences.uid: Invalid value: "": uid must not be empty'
    )
    assert _causes(caught.value) == [
        ("metadata.ownerReferences.uid", "FieldValueInvalid", 'Invalid value: "": uid must not be empty')
    ]
    with pytest.raises(client.ApiException) as caught:
        core_v1.create_namespaced_secret(
            "default", _secret("s", {"apiVersion": "apps/", "kind": "", "name": "", "uid": ""})
        )
    assert [field for field, _, _ in _causes(caught.value)] == [
        "metadata.ownerReferences.apiVersion",
        "metadata.ownerReferences.kind",
        "metadata.ownerReferences.name",
        "metadata.ownerReferences.uid",
    ]

    core_v1.create_namespaced_secret("default", _secret("s", _owner(pod)))
    broken = [{"op": "add", "path": "/metadata/ownerReferences", "value": [without_uid]}]
    with pytest.raises(client.ApiException) as caught:
        core_v1.patch_namespaced_secret("s", "default", broken)  # a list body: a JSON patch
    assert caught.value.status == 422
    replaced = core_v1.api_client.sanitize_for_serialization(core_v1.read_namespaced_secret("s", "default"))
    replaced["metadata"]["ownerReferences"] = [without_uid]
    with pytest.raises(client.ApiException) as caught:
        core_v1.replace_namespaced_secret("s", "default", replaced)
    assert caught.value.status == 422
    assert core_v1.read_namespaced_secret("s", "default").metadata.owner_references[0].uid == pod.metadata.uid


def test_a_watch_sees_no_event_for_an_owner_whose_dependents_have_other_owners(
    core_v1: Any, pod_manifest: PodManifest, new_watch: Callable[[], Any]
) -> None:
    first = core_v1.create_namespaced_pod("default", pod_manifest("first"))
    second = core_v1.create_namespaced_pod("default", pod_manifest("second"))
    core_v1.create_namespaced_secret("default", _secret("shared", _owner(first), _owner(second)))
    version = core_v1.list_namespaced_secret("default").metadata.resource_version
    core_v1.delete_namespaced_pod("first", "default")
    events = new_watch().stream(
        core_v1.list_namespaced_secret, "default", resource_version=version, timeout_seconds=1
    )
    assert list(events) == []
    assert _secrets(core_v1) == {"shared"}
