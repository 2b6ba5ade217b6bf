"""Label and field selectors (§1.5, §7.6) through the real client, plus the algebra of the label grammar."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from bridge.sim.api import ApiServer
from bridge.sim.selectors import SelectorError, parse_label_selector

PodManifest = Callable[..., dict[str, Any]]

# name → labels; chosen so that every operator separates the pods differently.
_LABELLED = {
    "web-1": {"app": "web", "tier": "front", "replicas": "3"},
    "web-2": {"app": "web", "tier": "back", "replicas": "10"},
    "db": {"app": "db", "replicas": "1"},
    "bare": {},
}


@pytest.fixture
def labelled_pods(core_v1: Any, pod_manifest: PodManifest) -> Any:
    for name, labels in _LABELLED.items():
        core_v1.create_namespaced_pod("default", pod_manifest(name, labels=labels))
    return core_v1


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", {"web-1", "web-2"}),
        ("app==web", {"web-1", "web-2"}),
        ("app!=web", {"db", "bare"}),  # a missing key matches !=
        ("app in (web,db)", {"web-1", "web-2", "db"}),
        ("tier notin (front)", {"web-2", "db", "bare"}),  # ... and notin
        ("tier", {"web-1", "web-2"}),
        ("!tier", {"db", "bare"}),
        ("replicas>2", {"web-1", "web-2"}),
        ("replicas<3", {"db"}),
        ("app=web,tier=back", {"web-2"}),
        (" app = web , !tier ", set()),
        ("", {"web-1", "web-2", "db", "bare"}),
    ],
)
def test_label_selector_operators(labelled_pods: Any, selector: str, expected: set[str]) -> None:
    items = labelled_pods.list_namespaced_pod("default", label_selector=selector).items
    assert {pod.metadata.name for pod in items} == expected


@pytest.mark.parametrize(
    "selector", ["app in ()", "app=(x)", "=web", "app in (a", "replicas>x", "a b", "app,,x"]
)
def test_malformed_label_selectors_are_400(core_v1: Any, selector: str) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", label_selector=selector)
    assert caught.value.status == 400
    status = json.loads(str(caught.value.body))
    assert status["reason"] == "BadRequest"
    assert "unable to parse requirement" in status["message"] or "invalid" in status["message"]


@pytest.fixture
def placed_pods(api_server: ApiServer, core_v1: Any, pod_manifest: PodManifest) -> None:
    """Three pods with the fields the scheduler/kubelet would set, written straight into the store."""
    core_v1.create_namespaced_pod("default", pod_manifest("running", restartPolicy="Always"))
    core_v1.create_namespaced_pod("default", pod_manifest("pending"))
    core_v1.create_namespace({"metadata": {"name": "other"}})
    core_v1.create_namespaced_pod("other", pod_manifest("done", hostNetwork=True, schedulerName="custom"))

    def run(pod: dict[str, Any]) -> None:
        pod["spec"]["nodeName"] = "node-1"
        pod["status"].update(phase="Running", podIP="10.0.0.5", podIPs=[{"ip": "10.0.0.5"}])

    def finish(pod: dict[str, Any]) -> None:
        pod["spec"]["nodeName"] = "node-2"
        pod["spec"]["serviceAccountName"] = "robot"
        pod["status"].update(phase="Succeeded", nominatedNodeName="node-2")

    api_server.store.update("pods", "default", "running", run)
    api_server.store.update("pods", "other", "done", finish)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=running", {"running"}),
        ("metadata.namespace=other", {"done"}),
        ("metadata.namespace!=other", {"running", "pending"}),
        ("spec.nodeName=node-1", {"running"}),
        ("spec.nodeName=", {"pending"}),  # empty value: unscheduled pods
        ("spec.host==node-2", {"done"}),
        ("spec.restartPolicy=Always", {"running"}),
        ("spec.schedulerName=custom", {"done"}),
        ("spec.serviceAccountName=robot", {"done"}),
        ("spec.hostNetwork=true", {"done"}),
        ("status.phase=Pending", {"pending"}),
        ("status.phase!=Pending,status.phase!=Succeeded", {"running"}),
        ("status.podIP=10.0.0.5", {"running"}),
        ("status.podIPs=10.0.0.5", {"running"}),
        ("status.nominatedNodeName=node-2", {"done"}),
    ],
)
@pytest.mark.usefixtures("placed_pods")
def test_field_selectors_on_every_supported_pod_field(
    core_v1: Any, selector: str, expected: set[str]
) -> None:
    items = core_v1.list_pod_for_all_namespaces(field_selector=selector).items
    assert {pod.metadata.name for pod in items} == expected


def test_unsupported_field_is_400_naming_it(core_v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        core_v1.list_namespaced_pod("default", field_selector="spec.containers=base")
    assert caught.value.status == 400
    assert json.loads(str(caught.value.body))["message"] == "field label not supported: spec.containers"


_keys = st.sampled_from(["app", "tier", "example.com/team"])
_values = st.sampled_from(["a", "b", "c-1", ""])
_label_sets = st.dictionaries(_keys, _values, max_size=3)


@settings(max_examples=150, deadline=None)
@given(labels=_label_sets, key=_keys, value=_values.filter(bool), other=_values.filter(bool))
def test_label_operators_are_consistent_with_each_other(
    labels: dict[str, str], key: str, value: str, other: str
) -> None:
    def matches(selector: str) -> bool:
        return parse_label_selector(selector)(labels)

    assert matches(f"{key}={value}") != matches(f"{key}!={value}")
    assert matches(f"{key}={value}") == matches(f"{key}=={value}")
    assert matches(f"{key} in ({value},{other})") == (matches(f"{key}={value}") or matches(f"{key}={other}"))
    assert matches(f"{key} notin ({value},{other})") != matches(f"{key} in ({value},{other})")
    assert matches(key) != matches(f"!{key}")
    assert matches(f"{key},{key}={value}") == matches(f"{key}={value}")


def test_selector_errors_are_value_errors_with_the_bad_term() -> None:
    with pytest.raises(SelectorError, match="values set can't be empty"):
        parse_label_selector("app in ()")
