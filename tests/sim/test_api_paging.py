"""List paging (§1.5, §7.7): limit/continue over one snapshot, remainingItemCount, expiry, RV rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from bridge.sim.api import ApiServer

PodManifest = Callable[..., dict[str, Any]]


@pytest.fixture
def five_pods(core_v1: Any, pod_manifest: PodManifest) -> list[str]:
    names = ["e", "c", "a", "d", "b"]
    for name in names:
        core_v1.create_namespaced_pod("default", pod_manifest(name, labels={"batch": "1"}))
    return sorted(names)


def test_limit_two_over_five_pods_is_three_pages_of_one_snapshot(
    core_v1: Any, pod_manifest: PodManifest, five_pods: list[str]
) -> None:
    pages = [core_v1.list_namespaced_pod("default", limit=2)]
    # Writes between pages do not show up: every page reads the first page's snapshot.
    core_v1.create_namespaced_pod("default", pod_manifest("aa"))
    core_v1.delete_namespaced_pod("e", "default")
    while pages[-1].metadata._continue:
        pages.append(core_v1.list_namespaced_pod("default", limit=2, _continue=pages[-1].metadata._continue))
    assert [[pod.metadata.name for pod in page.items] for page in pages] == [
        five_pods[0:2],
        five_pods[2:4],
        five_pods[4:],
    ]
    assert {page.metadata.resource_version for page in pages} == {pages[0].metadata.resource_version}
    assert [page.metadata.remaining_item_count for page in pages] == [3, 1, None]
    assert pages[-1].metadata._continue is None


def test_remaining_item_count_is_omitted_with_a_selector(core_v1: Any, five_pods: list[str]) -> None:
    page = core_v1.list_namespaced_pod("default", limit=2, label_selector="batch=1")
    assert page.metadata._continue
    assert page.metadata.remaining_item_count is None


def test_a_compacted_continue_token_is_410_expired(
    api_server: ApiServer, core_v1: Any, five_pods: list[str]
) -> None:
    first = core_v1.list_namespaced_pod("default", limit=2)
    api_server.store.compact()  # (the /_sim/compact endpoint is tested with the other admin calls)
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    assert caught.value.status == 410
    status = json.loads(str(caught.value.body))
    assert status["reason"] == "Expired"
    assert status["message"].startswith("The provided continue parameter is too old")


def test_a_malformed_continue_token_is_400(core_v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", limit=2, _continue="not-a-token")
    assert caught.value.status == 400
    assert json.loads(str(caught.value.body))["message"].startswith("invalid continue token")


@pytest.mark.parametrize(
    ("options", "code", "text"),
    [
        (
            {"resource_version_match": "NotOlderThan"},
            422,
            "resourceVersionMatch is forbidden unless resourceVersion",
        ),
        ({"resource_version": "0", "resource_version_match": "Exact"}, 422, '"exact" is forbidden'),
        (
            {"resource_version": "1", "resource_version_match": "Sometimes"},
            422,
            'Unsupported value: "Sometimes"',
        ),
        ({"send_initial_events": True}, 422, "sendInitialEvents is forbidden for list"),
        ({"resource_version": "1", "resource_version_match": "Exact"}, 410, "too old"),
        ({"resource_version": "999999999"}, 504, "Too large resource version"),
        ({"resource_version": "abc"}, 500, 'parsing "abc": invalid syntax'),
    ],
)
def test_list_resource_version_rules(core_v1: Any, options: dict[str, object], code: int, text: str) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", **options)
    assert caught.value.status == code
    assert text in json.loads(str(caught.value.body))["message"]


def test_not_older_than_a_past_version_serves_the_current_state(core_v1: Any, five_pods: list[str]) -> None:
    current = core_v1.list_namespaced_pod("default")
    older = core_v1.list_namespaced_pod(
        "default", resource_version="1001", resource_version_match="NotOlderThan"
    )
    assert [pod.metadata.name for pod in older.items] == five_pods
    assert older.metadata.resource_version == current.metadata.resource_version
