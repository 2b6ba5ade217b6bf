"""All three executor_config forms: accepted, normalised to JSON that round-trips, or rejected with advice."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from kubernetes.utils.quantity import parse_quantity

from bridge.config import ConfigError, KubeConfig
from bridge.errors import UserInputError
from bridge.executor_config import (
    ExecutorConfigError,
    KubernetesExecutorConfig,
    TaskPodConfig,
    parse_executor_config,
)

FULL_LEGACY_SETTINGS: dict[str, Any] = {
    "image": "apache/airflow:2.10.5",
    "image_pull_policy": "IfNotPresent",
    "request_memory": "128Mi",
    "request_cpu": "100m",
    "limit_memory": "1Gi",
    "limit_cpu": "2",
    "limit_gpu": "1",
    "gcp_service_account_key": "gcp-key",
    "node_selectors": {"disktype": "ssd"},
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    },
    "annotations": {"example.com/owner": "data team"},
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    "volume_mounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "labels": {"team": "data"},
}


def base_pod(**container: Any) -> k8s.V1Pod:
    return k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", **container)]))


def error_of(executor_config: object) -> str:
    with pytest.raises(ExecutorConfigError) as caught:
        parse_executor_config(executor_config)
    return str(caught.value)


# --- the legacy KubernetesExecutor form ---------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, {}, {"KubernetesExecutor": None}, {"KubernetesExecutor": {}}])
def test_from_dict_of_nothing_is_an_empty_config(empty: object) -> None:
    config = KubernetesExecutorConfig.from_dict(empty)
    assert config == KubernetesExecutorConfig()
    assert all(value is None for value in config.as_dict().values())


def test_from_dict_reads_every_field_and_as_dict_gives_them_back_flat() -> None:
    config = KubernetesExecutorConfig.from_dict({"KubernetesExecutor": FULL_LEGACY_SETTINGS})
    assert config.limit_gpu == "1"
    assert config.volume_mounts == [{"name": "data", "mountPath": "/data", "readOnly": True}]
    assert config.as_dict() == FULL_LEGACY_SETTINGS
    assert KubernetesExecutorConfig.from_dict({"KubernetesExecutor": config.as_dict()}) == config
    via_json = json.loads(json.dumps({"KubernetesExecutor": config.as_dict()}))
    assert KubernetesExecutorConfig.from_dict(via_json) == config


# The seed's signature, copied from Airflow 1.10's API reference.
SEED_SIGNATURE = (
    "image, image_pull_policy, request_memory, request_cpu, limit_memory, limit_cpu, limit_gpu, "
    "gcp_service_account_key, node_selectors, affinity, annotations, volumes, volume_mounts, "
    "tolerations, labels"
)


def test_constructor_signature_is_the_seeds_with_every_default_none() -> None:
    parameters = inspect.signature(KubernetesExecutorConfig).parameters.values()
    assert ", ".join(parameter.name for parameter in parameters) == SEED_SIGNATURE
    assert all(parameter.default is None for parameter in parameters)
    assert all(parameter.kind is parameter.POSITIONAL_OR_KEYWORD for parameter in parameters)
    assert isinstance(inspect.getattr_static(KubernetesExecutorConfig, "from_dict"), staticmethod)


def test_constructor_has_the_airflow_1_10_signature_in_order() -> None:
    positional = KubernetesExecutorConfig("img", "Always", "1Gi", "1", "2Gi", "2", "1", "key", {"a": "b"})
    assert (positional.image, positional.image_pull_policy, positional.request_memory) == (
        "img",
        "Always",
        "1Gi",
    )
    assert (positional.limit_gpu, positional.gcp_service_account_key) == ("1", "key")
    assert positional.node_selectors == {"a": "b"}
    assert list(KubernetesExecutorConfig().as_dict())[-1] == "labels"


def test_repr_shows_the_class_and_the_values() -> None:
    text = repr(KubernetesExecutorConfig(image="img:1", request_cpu="500m"))
    assert text.startswith("KubernetesExecutorConfig(")
    assert "image='img:1'" in text
    assert "request_cpu='500m'" in text
    assert "labels=None" in text


def test_json_numbers_become_quantity_strings() -> None:
    config = KubernetesExecutorConfig.from_dict(
        {"KubernetesExecutor": {"request_cpu": 0.5, "limit_cpu": 2, "limit_gpu": 1}}
    )
    assert (config.request_cpu, config.limit_cpu, config.limit_gpu) == ("0.5", "2", "1")


def test_resources_are_in_container_api_form() -> None:
    config = KubernetesExecutorConfig(
        request_cpu="100m", request_memory="128Mi", limit_memory="1Gi", limit_gpu="2"
    )
    assert config.resources() == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "1Gi", "nvidia.com/gpu": "2"},
    }
    assert KubernetesExecutorConfig().resources() == {"requests": {}, "limits": {}}


def test_kubernetes_client_objects_become_api_json() -> None:
    toleration = k8s.V1Toleration(key="spot", operator="Exists", toleration_seconds=30)
    config = KubernetesExecutorConfig(tolerations=[toleration])  # type: ignore[list-item]
    assert config.tolerations == [{"key": "spot", "operator": "Exists", "tolerationSeconds": 30}]


def test_config_is_a_copy_of_the_callers_dicts() -> None:
    labels = {"team": "data"}
    config = KubernetesExecutorConfig(labels=labels)
    labels["team"] = "changed"
    exported = config.as_dict()
    exported["labels"]["team"] = "changed too"
    assert config.labels == {"team": "data"}


# A quantity generator following the Kubernetes grammar, so that amounts can be checked against the
# kubernetes client's own parser.
quantities = st.builds(
    lambda digits, fraction, suffix: digits + fraction + suffix,
    st.from_regex(r"[0-9]{1,4}", fullmatch=True),
    st.sampled_from(["", ".", ".5", ".25"]),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "n", "u", "e3", "E", "e-2"]),
)


@settings(max_examples=200, deadline=None)
@given(quantities, quantities)
def test_request_above_limit_is_rejected_exactly_when_kubernetes_says_it_is_larger(
    request: str, limit: str
) -> None:
    kubernetes_amount: Callable[[str], Decimal] = parse_quantity
    larger = kubernetes_amount(request) > kubernetes_amount(limit)
    if larger:
        with pytest.raises(ExecutorConfigError, match="must not exceed its limit"):
            KubernetesExecutorConfig(request_memory=request, limit_memory=limit)
    else:
        config = KubernetesExecutorConfig(request_memory=request, limit_memory=limit)
        assert config.resources()["limits"] == {"memory": limit}


@pytest.mark.parametrize(
    ("field", "value", "offending", "fix"),
    [
        ("request_cpu", "abc", "abc", "'500m', '0.5' or '2'"),
        ("request_memory", "1GB", "1GB", "'128Mi' or '1Gi'"),
        ("limit_cpu", -1, -1, "non-negative number"),
        ("limit_memory", "1.2.3Gi", "1.2.3Gi", "non-negative number"),
        ("request_cpu", True, True, "non-negative number"),
        ("limit_gpu", "0.5", "0.5", "GPUs are allocated whole"),
        ("image_pull_policy", "always", "always", "did you mean 'Always'"),
        ("image_pull_policy", "Sometimes", "Sometimes", "use one of Always, IfNotPresent, Never"),
        ("image", "", "", "non-empty string without spaces"),
        ("image", "my image", "my image", "non-empty string without spaces"),
        ("gcp_service_account_key", "/var/secrets/key.json", "/var/secrets/key.json", "give its name"),
        ("node_selectors", ["ssd"], ["ssd"], "must be a dict of strings"),
        ("labels", {"team": "data team"}, "data team", "not a valid label value"),
        ("labels", {"bad key!": "x"}, "bad key!", "invalid key"),
        ("annotations", {"owner": 7}, 7, "quote it, e.g. '7'"),
        ("affinity", ["zone-a"], ["zone-a"], "expected a JSON object, got JSON list"),
        ("affinity", {"node_affinity": {}}, {"node_affinity": {}}, "did you mean 'nodeAffinity'"),
        ("volumes", [{"hostPath": {"path": "/tmp"}}], {"hostPath": {"path": "/tmp"}}, "lacks 'name'"),
        ("volume_mounts", [{"name": "data"}], {"name": "data"}, "lacks 'mountPath'"),
        ("tolerations", "gpu", "gpu", "expected a JSON list of toleration objects"),
        ("tolerations", [{"operator": "Sometimes"}], [{"operator": "Sometimes"}], "operator Equal or Exists"),
        ("tolerations", [{"tolerationSeconds": float("nan")}], [{"tolerationSeconds": float("nan")}], "JSON"),
        ("affinity", {"since": object}, {"since": object}, "a type is not JSON data"),
    ],
)
def test_bad_legacy_values_are_named_with_the_fix(
    field: str, value: object, offending: object, fix: str
) -> None:
    message = error_of({"KubernetesExecutor": {field: value}})
    assert f"executor_config['KubernetesExecutor']['{field}']" in message
    assert repr(offending) in message
    assert fix in message


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("affinity", {"nodeaffinity": {}}),
        ("affinity", []),
        ("tolerations", [{"key": "gpu", "effect": "NoScheduling"}]),
        ("tolerations", [{"toleration_seconds": 30}]),
        ("tolerations", [["gpu"]]),
    ],
)
def test_executor_config_and_kubernetes_section_reject_the_same_affinity_and_tolerations(
    field: str, bad: object
) -> None:
    with pytest.raises(ExecutorConfigError):
        KubernetesExecutorConfig.from_dict({"KubernetesExecutor": {field: bad}})
    with pytest.raises(ConfigError):
        KubeConfig({"kubernetes": {field: json.dumps(bad)}})


def test_request_above_limit_names_both_fields() -> None:
    message = error_of({"KubernetesExecutor": {"request_cpu": "2", "limit_cpu": "500m"}})
    assert "['request_cpu'] = '2'" in message
    assert "['limit_cpu'] = '500m'" in message
    assert "lower the request or raise the limit" in message


def test_key_material_in_gcp_service_account_key_is_not_echoed() -> None:
    key = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE..."}'
    message = error_of({"KubernetesExecutor": {"gcp_service_account_key": key}})
    assert "private_key" not in message
    assert "BEGIN" not in message
    assert "never the key itself" in message


def test_unknown_legacy_key_gets_the_close_one_or_else_the_valid_ones() -> None:
    typo = error_of({"KubernetesExecutor": {"imagee": "x"}})
    assert "unknown key 'imagee' (did you mean 'image'?)" in typo
    unrelated = error_of({"KubernetesExecutor": {"priority": 1}})
    assert "unknown key 'priority'; valid keys are: affinity, annotations" in unrelated
    assert "volume_mounts" in unrelated


def test_from_dict_accepts_only_the_legacy_form() -> None:
    with pytest.raises(
        ExecutorConfigError, match="unknown key 'pod_override'; valid keys are: KubernetesExecutor"
    ):
        KubernetesExecutorConfig.from_dict({"pod_override": {}})
    with pytest.raises(ExecutorConfigError, match="must be a dict"):
        KubernetesExecutorConfig.from_dict(["KubernetesExecutor"])


# --- pod_override and pod_template_file -------------------------------------------------------------------


def test_empty_executor_config_parses_to_nothing() -> None:
    assert parse_executor_config(None) == parse_executor_config({}) == TaskPodConfig(None, None, None)


def test_v1pod_override_becomes_camel_case_api_json() -> None:
    pod = base_pod(
        image="custom:1",
        image_pull_policy="Always",
        resources=k8s.V1ResourceRequirements(limits={"memory": "2Gi"}),
    )
    pod.metadata = k8s.V1ObjectMeta(labels={"team": "data"})
    pod.spec.node_selector = {"disktype": "ssd"}  # type: ignore[union-attr]
    config = parse_executor_config({"pod_override": pod})
    assert config.pod_override == {
        "metadata": {"labels": {"team": "data"}},
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "image": "custom:1",
                    "imagePullPolicy": "Always",
                    "resources": {"limits": {"memory": "2Gi"}},
                }
            ],
            "nodeSelector": {"disktype": "ssd"},
        },
    }
    assert config.legacy is None


@pytest.mark.parametrize(
    "executor_config",
    [
        {"KubernetesExecutor": FULL_LEGACY_SETTINGS},
        {"KubernetesExecutor": {"request_cpu": 1}},
        {"pod_override": base_pod(image="custom:1"), "pod_template_file": "/templates/gpu.yaml"},
        {"pod_override": {"metadata": {"annotations": {"a": "b"}}}},
        {"pod_template_file": "templates/pod.yaml"},
        {"KubernetesExecutor": {"image": "img"}, "pod_template_file": "/t.yaml"},
    ],
)
def test_task_pod_config_round_trips_through_json(executor_config: dict[str, Any]) -> None:
    config = parse_executor_config(executor_config)
    wire = json.dumps(config.as_dict(), allow_nan=False)
    assert parse_executor_config(json.loads(wire)) == config


def test_task_pod_config_with_an_all_default_legacy_part_round_trips() -> None:
    config = TaskPodConfig(legacy=KubernetesExecutorConfig(), pod_template_file="/t.yaml")
    assert parse_executor_config(json.loads(json.dumps(config.as_dict()))) == config


def test_empty_legacy_section_may_accompany_pod_override_as_in_airflow() -> None:
    config = parse_executor_config({"KubernetesExecutor": {}, "pod_override": base_pod()})
    assert config.legacy is None
    assert config.pod_override == {"spec": {"containers": [{"name": "base"}]}}


def test_legacy_settings_and_pod_override_together_are_rejected() -> None:
    message = error_of({"KubernetesExecutor": {"request_cpu": "1"}, "pod_override": base_pod()})
    assert "sets both 'KubernetesExecutor' and 'pod_override'" in message
    assert "move the 'KubernetesExecutor' settings into the pod_override pod" in message
    with pytest.raises(ExecutorConfigError, match="sets both"):
        TaskPodConfig(legacy=KubernetesExecutorConfig(), pod_override={})


@pytest.mark.parametrize(
    ("pod_override", "fix"),
    [
        (base_pod(image_pull_policy="Always").to_dict(), "not pod.to_dict()"),
        ({"spec": {"containers": [{"name": "base", "image_pull_policy": "Always"}]}}, "'image_pull_policy'"),
        (k8s.V1PodSpec(containers=[]), "it must be a whole V1Pod"),
        (["not", "a", "pod"], "is a list, not a pod"),
        ({"kind": "Deployment", "apiVersion": "apps/v1"}, "has kind 'Deployment', apiVersion 'apps/v1'"),
        ({"status": {"phase": "Running"}}, "unknown key 'status'"),
        ({"metadata": {"labels": {"team": "data team"}}}, "'data team' is not a valid label value"),
        ({"metadata": []}, "field 'metadata' must be a mapping, got a list"),
        ({"spec": {"containers": {"name": "base"}}}, "field 'containers' must be a list of mappings"),
        ({"spec": {"initContainers": {"name": "init"}}}, "must be a list of container dicts"),
    ],
)
def test_bad_pod_override_is_explained(pod_override: object, fix: str) -> None:
    message = error_of({"pod_override": pod_override})
    assert message.startswith("executor_config['pod_override']")
    assert fix in message


@pytest.mark.parametrize("path", ["", "   ", 3, "pod\0.yaml"])
def test_bad_pod_template_file_is_explained(path: object) -> None:
    message = error_of({"pod_template_file": path})
    assert f"executor_config['pod_template_file'] = {path!r} is not a file path" in message
    assert "give the path of a pod YAML file" in message


def test_unknown_top_level_key_gets_the_close_one_or_else_the_accepted_ones() -> None:
    typo = error_of({"pod_overide": {}})
    assert "unknown key 'pod_overide' (did you mean 'pod_override'?)" in typo
    unrelated = error_of({"resources": {}})
    assert "unknown key 'resources'; valid keys are: KubernetesExecutor, pod_override, pod_template_file" in (
        unrelated
    )


def test_non_dict_executor_config_is_explained() -> None:
    assert "must be a dict with any of the keys KubernetesExecutor" in error_of("KubernetesExecutor")


def test_pod_override_is_a_private_copy() -> None:
    override = {"metadata": {"labels": {"team": "data"}}}
    config = parse_executor_config({"pod_override": override})
    override["metadata"]["labels"]["team"] = "changed"
    config.as_dict()["pod_override"]["metadata"]["labels"]["team"] = "changed too"
    assert config.pod_override == {"metadata": {"labels": {"team": "data"}}}


def test_executor_config_error_is_a_user_input_error() -> None:
    assert issubclass(ExecutorConfigError, UserInputError)


def test_a_v1pod_that_airflow_stored_as_text_gets_a_fix_not_a_shape_error() -> None:
    text = str(k8s.V1Pod(metadata=k8s.V1ObjectMeta(labels={"team": "a"})))  # what Airflow 3.2 stores
    with pytest.raises(ExecutorConfigError, match="apache-airflow-providers-cncf-kubernetes") as raised:
        parse_executor_config({"pod_override": text})
    assert "give pod_override as a dict" in str(raised.value)
