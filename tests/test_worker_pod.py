"""Worker pods: every option reaches the pod, layers merge in order, tracking fields survive, pods are valid.

Validity is checked three ways: the Kubernetes 1.37 JSON schema in strict mode (``kubernetes_validate``; no
unknown or misspelt field), a lossless round trip through the real client's ``V1Pod`` model, and one create
through the real client over HTTP against the pod-API simulator.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiClient, V1Pod
from kubernetes.client.exceptions import ApiException

from bridge.config import OPTIONS, POD_BUILDER, KubeConfig
from bridge.executor_config import KubernetesExecutorConfig, parse_executor_config
from bridge.pod_template import PodTemplateError
from bridge.task_key import TaskKey
from bridge.worker_pod import (
    INSTANCE_LABEL,
    LAUNCH_SECRET_ANNOTATION,
    WorkerPodError,
    build_launch_secret,
    build_worker_pod,
    instance_selector,
    launch_secret_of,
    reconcile_pods,
)
from tests.test_config import SAMPLE_VALUES, sample_files, sample_settings

Pod = dict[str, Any]
KEY = TaskKey("etl", "load", "manual__2026-01-01T00:00:00+00:00", 2, -1)
COMMAND = ["airflow", "tasks", "run", "etl", "load", "manual__2026-01-01T00:00:00+00:00", "--local"]
IMAGE = {"worker_container_repository": "apache/airflow", "worker_container_tag": "3.0.2"}
# Kubernetes' own patterns (apimachinery validation), written out here independently of bridge.naming.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@pytest.fixture(scope="module")
def api_client() -> Iterator[ApiClient]:
    client = ApiClient()
    yield client
    close: Callable[[], None] = client.close
    close()


def kube_config(**sections: dict[str, str]) -> KubeConfig:
    """A configuration with an image plus ``sections`` (``kubernetes`` entries join the image ones)."""
    return KubeConfig({**sections, "kubernetes": {**IMAGE, **sections.get("kubernetes", {})}})


def build(executor_config: object = None, config: KubeConfig | None = None, key: TaskKey = KEY) -> Pod:
    return build_worker_pod(key, COMMAND, parse_executor_config(executor_config), config or kube_config())


def assert_valid(pod: Pod, api_client: ApiClient) -> None:
    """Schema-valid (strict) and understood field for field by the real client's V1Pod model."""
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    deserialize: Callable[[object, str], V1Pod] = api_client._ApiClient__deserialize  # type: ignore[attr-defined]
    serialize: Callable[[object], object] = api_client.sanitize_for_serialization
    assert serialize(deserialize(pod, "V1Pod")) == pod


def base(pod: Pod) -> dict[str, Any]:
    containers = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def env_of(pod: Pod) -> dict[str, dict[str, Any]]:
    entries = base(pod).get("env", [])
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env names are rejected by the API: {names}"
    return {entry["name"]: entry for entry in entries}


def write_template(tmp_path: Path, pod: Pod, name: str = "pod.yaml") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(pod), encoding="utf-8")  # JSON is YAML
    return str(path)


# --- every option reaches the pod -------------------------------------------------------------------------

Getter = Callable[[Pod], Any]


def walk(value: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def in_spec(*path: str) -> Getter:
    return lambda pod: walk(pod["spec"], path)


def in_meta(*path: str) -> Getter:
    return lambda pod: walk(pod["metadata"], path)


def in_base(*path: str) -> Getter:
    return lambda pod: walk(base(pod), path)


def env_entry(name: str) -> Getter:
    return lambda pod: env_of(pod)[name]


AFFINITY = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
    {"weight": 1, "preference": {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}},
]}}  # fmt: skip
TOLERATION = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
SECRET_ENV = {"name": "SQL", "valueFrom": {"secretKeyRef": {"name": "airflow-db", "key": "sql_alchemy_conn"}}}
CONFIG_CASES: list[tuple[str, dict[str, dict[str, str]], Getter, Any]] = [
    ("namespace", {"kubernetes": {"namespace": "team-a"}}, in_meta("namespace"), "team-a"),
    (
        "worker_container_repository",
        {"kubernetes": {"worker_container_repository": "r.example/w", "worker_container_tag": "7"}},
        in_base("image"),
        "r.example/w:7",
    ),
    (
        "worker_container_image_pull_policy",
        {"kubernetes": {"worker_container_image_pull_policy": "Always"}},
        in_base("imagePullPolicy"),
        "Always",
    ),
    (
        "worker_service_account_name",
        {"kubernetes": {"worker_service_account_name": "airflow-worker"}},
        in_spec("serviceAccountName"),
        "airflow-worker",
    ),
    (
        "image_pull_secrets",
        {"kubernetes": {"image_pull_secrets": "regcred,mirror"}},
        in_spec("imagePullSecrets"),
        [{"name": "regcred"}, {"name": "mirror"}],
    ),
    (
        "run_as_user",
        {"kubernetes": {"run_as_user": "50000"}},
        in_spec("securityContext"),
        {"runAsUser": 50000},
    ),
    ("run_as_group", {"kubernetes": {"run_as_group": "0"}}, in_spec("securityContext"), {"runAsGroup": 0}),
    ("fs_group", {"kubernetes": {"fs_group": "2000"}}, in_spec("securityContext"), {"fsGroup": 2000}),
    ("affinity", {"kubernetes": {"affinity": json.dumps(AFFINITY)}}, in_spec("affinity"), AFFINITY),
    (
        "tolerations",
        {"kubernetes": {"tolerations": json.dumps([TOLERATION])}},
        in_spec("tolerations"),
        [TOLERATION],
    ),
    ("kubernetes_labels", {"kubernetes_labels": {"team": "data"}}, in_meta("labels", "team"), "data"),
    (
        "kubernetes_annotations",
        {"kubernetes_annotations": {"example.com/owner": "data team"}},
        in_meta("annotations", "example.com/owner"),
        "data team",
    ),
    (
        "kubernetes_node_selectors",
        {"kubernetes_node_selectors": {"disktype": "ssd"}},
        in_spec("nodeSelector"),
        {"disktype": "ssd"},
    ),
    (
        "kubernetes_environment_variables",
        {"kubernetes_environment_variables": {"DEBUG": "100%"}},
        env_entry("DEBUG"),
        {"name": "DEBUG", "value": "100%"},
    ),
    (
        "kubernetes_secrets",
        {"kubernetes_secrets": {"SQL": "airflow-db=sql_alchemy_conn"}},
        env_entry("SQL"),
        SECRET_ENV,
    ),
    ("key_prefix", {"bridge": {"key_prefix": "blue"}}, in_meta("labels", INSTANCE_LABEL), "blue"),
]
# The options the table says the pod builder reads; pod_template_file has its own tests below and
# worker_container_tag is covered by the worker_container_repository case.
POD_SHAPING = {option.key for option in OPTIONS if POD_BUILDER in option.read_by}
FREE_FORM = {
    "kubernetes_labels",
    "kubernetes_annotations",
    "kubernetes_node_selectors",
    "kubernetes_environment_variables",
    "kubernetes_secrets",
}


def test_every_pod_shaping_option_has_a_case() -> None:
    covered = POD_SHAPING - {"pod_template_file", "worker_container_tag"} | FREE_FORM
    assert covered == {case[0] for case in CONFIG_CASES}


@pytest.mark.parametrize("key", sorted(set(SAMPLE_VALUES) - POD_SHAPING))
def test_options_the_pod_builder_does_not_read_leave_the_pod_alone(key: str, tmp_path: Path) -> None:
    settings = sample_settings(key, sample_files(tmp_path))
    assert build(config=kube_config(**settings)) == build()


@pytest.mark.parametrize(
    ("option", "settings", "get", "expected"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_config_option_reaches_the_pod(
    option: str, settings: dict[str, dict[str, str]], get: Getter, expected: Any, api_client: ApiClient
) -> None:
    pod = build(config=kube_config(**settings))
    assert get(pod) == expected
    try:
        default = get(build())
    except KeyError:
        default = "(absent)"
    assert default != expected, f"{option} must change the pod, not merely match the default"
    assert_valid(pod, api_client)


GCP_VOLUME = {"name": "gcp-service-account-key", "secret": {"secretName": "gcp-etl-key"}}
GCP_MOUNT = {"name": "gcp-service-account-key", "mountPath": "/var/secrets/google", "readOnly": True}
GCP_ENV = {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"}
SCRATCH = {
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "volume_mounts": [{"name": "scratch", "mountPath": "/s"}],
}
LEGACY_CASES: list[tuple[str, dict[str, Any], Getter, Any]] = [
    ("image", {"image": "example.com/etl:9"}, in_base("image"), "example.com/etl:9"),
    ("image_pull_policy", {"image_pull_policy": "Never"}, in_base("imagePullPolicy"), "Never"),
    ("request_memory", {"request_memory": "512Mi"}, in_base("resources"), {"requests": {"memory": "512Mi"}}),
    ("request_cpu", {"request_cpu": 0.5}, in_base("resources"), {"requests": {"cpu": "0.5"}}),
    ("limit_memory", {"limit_memory": "1Gi"}, in_base("resources"), {"limits": {"memory": "1Gi"}}),
    ("limit_cpu", {"limit_cpu": "2"}, in_base("resources"), {"limits": {"cpu": "2"}}),
    ("limit_gpu", {"limit_gpu": "1"}, in_base("resources"), {"limits": {"nvidia.com/gpu": "1"}}),
    (
        "gcp_service_account_key",
        {"gcp_service_account_key": "gcp-etl-key"},
        lambda p: (
            p["spec"]["volumes"],
            base(p)["volumeMounts"],
            env_of(p)["GOOGLE_APPLICATION_CREDENTIALS"],
        ),
        ([GCP_VOLUME], [GCP_MOUNT], GCP_ENV),
    ),
    ("node_selectors", {"node_selectors": {"pool": "etl"}}, in_spec("nodeSelector"), {"pool": "etl"}),
    ("affinity", {"affinity": AFFINITY}, in_spec("affinity"), AFFINITY),
    ("annotations", {"annotations": {"a.example/x": "1"}}, in_meta("annotations", "a.example/x"), "1"),
    ("volumes", SCRATCH, in_spec("volumes"), SCRATCH["volumes"]),
    ("volume_mounts", SCRATCH, in_base("volumeMounts"), SCRATCH["volume_mounts"]),
    ("tolerations", {"tolerations": [TOLERATION]}, in_spec("tolerations"), [TOLERATION]),
    ("labels", {"labels": {"tier": "batch"}}, in_meta("labels", "tier"), "batch"),
]


def test_every_legacy_field_has_a_case() -> None:
    fields = {field.name for field in dataclasses.fields(KubernetesExecutorConfig)}
    assert fields == {case[0] for case in LEGACY_CASES}


@pytest.mark.parametrize(
    ("field", "settings", "get", "expected"), LEGACY_CASES, ids=[c[0] for c in LEGACY_CASES]
)
def test_legacy_executor_config_field_reaches_the_pod(
    field: str, settings: dict[str, Any], get: Getter, expected: Any, api_client: ApiClient
) -> None:
    pod = build({"KubernetesExecutor": settings})
    assert get(pod) == expected
    assert_valid(pod, api_client)


def test_pod_override_reaches_the_pod(api_client: ApiClient) -> None:
    override = {
        "spec": {"priorityClassName": "high", "containers": [{"name": "base", "workingDir": "/work"}]}
    }
    pod = build({"pod_override": override})
    assert pod["spec"]["priorityClassName"] == "high"
    assert base(pod)["workingDir"] == "/work"
    assert base(pod)["image"] == "apache/airflow:3.0.2", "a partial override keeps everything it does not set"
    assert_valid(pod, api_client)


def test_minimal_pod_runs_the_command_as_args_and_never_restarts(api_client: ApiClient) -> None:
    pod = build()
    assert base(pod)["args"] == COMMAND
    assert "command" not in base(pod), "the image ENTRYPOINT is kept (Airflow #12766)"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert env_of(pod)["AIRFLOW_IS_K8S_EXECUTOR_POD"]["value"] == "True"
    assert_valid(pod, api_client)


# --- merge order: template -> config + legacy -> pod_override ---------------------------------------------

TEMPLATE: Pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"layer": "template", "from-template": "yes"}, "annotations": {"t": "1"}},
    "spec": {
        "containers": [
            {
                "name": "base",
                "image": "example.com/template:1",
                "env": [{"name": "LAYER", "value": "template"}, {"name": "ONLY_TEMPLATE", "value": "1"}],
                "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            },
            {"name": "sidecar", "image": "example.com/sidecar:1"},
        ],
        "volumes": [{"name": "logs", "emptyDir": {}}],
        "nodeSelector": {"disk": "hdd", "zone": "a"},
        "terminationGracePeriodSeconds": 30,
    },
}


def test_image_precedence_template_then_config_then_executor_config(tmp_path: Path) -> None:
    template = write_template(tmp_path, TEMPLATE)
    template_only = KubeConfig({"kubernetes": {"pod_template_file": template}})
    with_image = kube_config(kubernetes={"pod_template_file": template})
    assert base(build(config=template_only))["image"] == "example.com/template:1"
    assert base(build(config=with_image))["image"] == "apache/airflow:3.0.2"
    legacy = {"KubernetesExecutor": {"image": "example.com/legacy:2"}}
    assert base(build(legacy, config=with_image))["image"] == "example.com/legacy:2"
    override = {
        "pod_override": {"spec": {"containers": [{"name": "base", "image": "example.com/override:3"}]}}
    }
    assert base(build(override, config=with_image))["image"] == "example.com/override:3"


def test_layers_merge_in_order_with_later_values_winning(tmp_path: Path, api_client: ApiClient) -> None:
    config = kube_config(
        kubernetes={"pod_template_file": write_template(tmp_path, TEMPLATE)},
        kubernetes_labels={"layer": "config"},
        kubernetes_environment_variables={"LAYER": "config", "ONLY_CONFIG": "1"},
        kubernetes_node_selectors={"disk": "ssd"},
    )
    override = {
        "metadata": {"labels": {"layer": "override"}},
        "spec": {
            "nodeSelector": {"zone": "b"},
            "containers": [
                {
                    "name": "base",
                    "env": [{"name": "LAYER", "value": "override"}],
                    "resources": {"requests": {"cpu": "2"}},
                    "volumeMounts": [{"name": "logs", "mountPath": "/logs", "readOnly": True}],
                }
            ],
        },
    }
    pod = build({"pod_override": override}, config=config)

    labels = pod["metadata"]["labels"]
    assert (labels["layer"], labels["from-template"]) == ("override", "yes")
    assert pod["metadata"]["annotations"]["t"] == "1"
    env = env_of(pod)
    assert env["LAYER"]["value"] == "override"
    assert {"ONLY_TEMPLATE", "ONLY_CONFIG"} <= set(env)
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd", "zone": "b"}
    assert base(pod)["resources"] == {"requests": {"cpu": "2", "memory": "64Mi"}}
    assert base(pod)["volumeMounts"] == [{"name": "logs", "mountPath": "/logs", "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "logs", "emptyDir": {}}]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base", "sidecar"]
    assert "args" not in pod["spec"]["containers"][1], "only the base container runs the task"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30
    assert_valid(pod, api_client)


def test_task_template_replaces_the_configured_template(tmp_path: Path) -> None:
    config = kube_config(kubernetes={"pod_template_file": write_template(tmp_path, TEMPLATE)})
    task_template = {"spec": {"containers": [{"name": "base", "image": "x"}], "priorityClassName": "gpu"}}
    pod = build({"pod_template_file": write_template(tmp_path, task_template, "task.yaml")}, config=config)
    assert pod["spec"]["priorityClassName"] == "gpu"
    assert "from-template" not in pod["metadata"]["labels"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base"]


TASK_TEMPLATE: Pod = {
    "metadata": {"labels": {"layer": "task-template", "only-task-template": "yes"}},
    "spec": {
        "containers": [
            {
                "name": "base",
                "image": "example.com/task-template:1",
                "imagePullPolicy": "Always",
                "env": [{"name": "LAYER", "value": "task-template"}],
                "resources": {"limits": {"cpu": "4", "memory": "4Gi"}},
            }
        ],
        "nodeSelector": {"pool": "task-template"},
    },
}


def test_merge_order_with_a_task_template_then_legacy_settings(tmp_path: Path, api_client: ApiClient) -> None:
    task_template = write_template(tmp_path, TASK_TEMPLATE, "task.yaml")
    config = kube_config(
        kubernetes={"pod_template_file": write_template(tmp_path, TEMPLATE)},
        kubernetes_environment_variables={"LAYER": "config"},
    )
    legacy = {"image": "example.com/legacy:2", "limit_cpu": "2", "labels": {"layer": "legacy"}}
    pod = build({"pod_template_file": task_template, "KubernetesExecutor": legacy}, config=config)
    assert "from-template" not in pod["metadata"]["labels"], "the task's template replaces the configured one"
    assert pod["metadata"]["labels"]["only-task-template"] == "yes"
    assert pod["metadata"]["labels"]["layer"] == "legacy"
    assert base(pod)["image"] == "example.com/legacy:2"
    assert base(pod)["imagePullPolicy"] == "Always", "unset in config and legacy: the template's is kept"
    assert env_of(pod)["LAYER"]["value"] == "config", "the configuration comes after the template"
    assert base(pod)["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "task-template"}
    assert_valid(pod, api_client)


def test_merge_order_with_a_task_template_then_pod_override(tmp_path: Path, api_client: ApiClient) -> None:
    task_template = write_template(tmp_path, TASK_TEMPLATE, "task.yaml")
    config = kube_config(
        kubernetes={"worker_container_image_pull_policy": "IfNotPresent"},
        kubernetes_node_selectors={"pool": "config"},
    )
    override = {
        "metadata": {"labels": {"layer": "override"}},
        "spec": {
            "containers": [{"name": "base", "env": [{"name": "LAYER", "value": "override"}]}],
            "nodeSelector": {"pool": "override"},
        },
    }
    pod = build({"pod_template_file": task_template, "pod_override": override}, config=config)
    assert pod["metadata"]["labels"]["layer"] == "override"
    assert env_of(pod)["LAYER"]["value"] == "override"
    assert pod["spec"]["nodeSelector"] == {"pool": "override"}
    assert base(pod)["imagePullPolicy"] == "IfNotPresent", "a configured policy beats the template's"
    assert base(pod)["image"] == "apache/airflow:3.0.2", (
        "as in Airflow, a configured image beats a template's"
    )
    assert base(pod)["resources"] == {"limits": {"cpu": "4", "memory": "4Gi"}}
    assert_valid(pod, api_client)


def test_template_first_container_is_the_base_one_and_server_fields_are_dropped(
    tmp_path: Path, api_client: ApiClient
) -> None:
    server_fields = {"uid": "u-1", "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z"}
    exported = {
        "metadata": {"name": "old", **server_fields},
        "spec": {
            "containers": [
                {"name": "main", "image": "i", "command": ["/entry"]},
                {"name": "side", "image": "s"},
            ]
        },
        "status": {"phase": "Succeeded"},
    }
    config = KubeConfig({"kubernetes": {"pod_template_file": write_template(tmp_path, exported)}})
    pod = build(config=config)
    first, second = pod["spec"]["containers"]
    assert (first["name"], first["image"], first["command"], first["args"]) == (
        "base",
        "i",
        ["/entry"],
        COMMAND,
    )
    assert second == {"name": "side", "image": "s"}
    assert "status" not in pod
    assert not {"uid", "resourceVersion", "creationTimestamp"} & set(pod["metadata"])
    assert_valid(pod, api_client)


def test_tracking_fields_survive_a_hostile_template_and_override(tmp_path: Path) -> None:
    hostile: Pod = {
        "metadata": {
            "name": "other",
            "namespace": "default",
            "labels": {"dag_id": "evil", "try_number": "9", INSTANCE_LABEL: "other-bridge"},
            "annotations": {"dag_id": "evil", "run_id": "evil"},
        },
        "spec": {
            "restartPolicy": "Always",
            "containers": [{"name": "base", "image": "i", "args": ["sh", "-c", "x"]}],
        },
    }
    config = kube_config(kubernetes={"pod_template_file": write_template(tmp_path, hostile)})
    pod = build({"pod_override": hostile}, config=config)
    expected = build()
    assert pod["metadata"]["name"] == expected["metadata"]["name"]
    assert pod["metadata"]["labels"] == expected["metadata"]["labels"]
    assert pod["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert base(pod)["args"] == COMMAND


def test_override_in_another_namespace_is_refused() -> None:
    with pytest.raises(
        WorkerPodError, match=r"metadata.namespace = 'elsewhere'.*\[kubernetes\] namespace = 'default'"
    ):
        build({"pod_override": {"metadata": {"namespace": "elsewhere"}}})


def test_reconcile_pods_leaves_its_inputs_alone() -> None:
    first: Pod = {"spec": {"containers": [{"name": "base", "env": [{"name": "A", "value": "1"}]}]}}
    second: Pod = {"spec": {"containers": [{"name": "base", "env": [{"name": "A", "value": "2"}]}]}}
    snapshot = json.dumps([first, second])
    merged = reconcile_pods(first, second)
    assert merged["spec"]["containers"][0]["env"] == [{"name": "A", "value": "2"}]
    assert json.dumps([first, second]) == snapshot


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("airflow tasks run etl load now", "never runs shell strings"),
        ([], "non-empty list of strings"),
        (["airflow", 3], "non-empty list of strings"),
    ],
)
def test_command_must_be_an_argv_list(command: Any, expected: str) -> None:
    with pytest.raises(WorkerPodError, match=expected):
        build_worker_pod(KEY, command, None, kube_config())


def test_argv_is_passed_verbatim_without_shell_quoting() -> None:
    argv = ["python", "-c", "print('a; rm -rf /')", "$HOME", "two words"]
    assert base(build_worker_pod(KEY, argv, None, kube_config()))["args"] == argv


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "is not an existing file"),
        ("spec: [", "is not valid YAML"),
        ("42", "is a int, not a pod"),
        ("kind: Service\n", "has kind 'Service'"),
        ("metadata: {labels: [a, b]}\n", "'labels' must be a mapping"),
    ],
)
def test_bad_task_template_names_the_executor_config_field(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "task.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PodTemplateError, match=expected) as error:
        build({"pod_template_file": str(path)})
    assert "executor_config['pod_template_file']" in str(error.value)


def test_a_task_template_error_never_quotes_the_file(tmp_path: Path) -> None:
    """The message becomes the task's failure reason, which anyone reading task logs sees."""
    path = tmp_path / "task.yaml"
    path.write_text("spec:\n  containers: []\n password: hunter2\n", encoding="utf-8")
    with pytest.raises(PodTemplateError, match=r"is not valid YAML: .* at line 3, column 2") as error:
        build({"pod_template_file": str(path)})
    assert "hunter2" not in str(error.value)


def test_empty_yaml_keys_in_a_template_count_as_absent(tmp_path: Path, api_client: ApiClient) -> None:
    path = tmp_path / "sparse.yaml"
    path.write_text(
        "metadata:\n  labels:\n  annotations:\nspec:\n  containers:\n  - name: base\n", encoding="utf-8"
    )
    pod = build({"pod_template_file": str(path)})
    assert pod["metadata"]["labels"] == build()["metadata"]["labels"]
    assert_valid(pod, api_client)


def test_no_image_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    config = KubeConfig({"kubernetes": {"pod_template_file": write_template(tmp_path, TEMPLATE)}})
    imageless = write_template(tmp_path, {"spec": {"containers": [{"name": "base"}]}}, "imageless.yaml")
    with pytest.raises(WorkerPodError, match=r"no image for the 'base' container of task etl\.load"):
        build({"pod_template_file": imageless}, config=config)


# --- secrets go by reference ----------------------------------------------------------------------------


def test_secrets_are_referenced_never_copied_into_the_pod() -> None:
    signing_key = "signing-key-" + "s" * 32
    config = kube_config(
        bridge={"signing_key": signing_key, "redis_url": "redis://:redis-password@redis:6380/0"},
        kubernetes_secrets={"SQL_CONN": "airflow-db=sql_alchemy_conn", "FERNET": "airflow-fernet=key"},
    )
    pod = build({"KubernetesExecutor": {"gcp_service_account_key": "gcp-key"}}, config=config)
    serialized = json.dumps(pod)
    for secret in (signing_key, "redis-password"):
        assert secret not in serialized
    env = env_of(pod)
    references = {"SQL_CONN": ("airflow-db", "sql_alchemy_conn"), "FERNET": ("airflow-fernet", "key")}
    for name, (secret_name, key) in references.items():
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
    assert {"name": "gcp-service-account-key", "secret": {"secretName": "gcp-key"}} in pod["spec"]["volumes"]


def test_secret_env_becomes_references_to_the_pods_own_secret_and_wins_over_every_layer(
    tmp_path: Path, api_client: ApiClient
) -> None:
    template = {
        "spec": {"containers": [{"name": "base", "env": [{"name": "TOKEN", "value": "from-template"}]}]}
    }
    config = kube_config(
        kubernetes={"pod_template_file": write_template(tmp_path, template)},
        kubernetes_environment_variables={"PLAIN": "x"},
    )
    override = {
        "metadata": {
            "annotations": {LAUNCH_SECRET_ANNOTATION: "airflow-db"}
        },  # would make the watcher delete it
        "spec": {"containers": [{"name": "base", "env": [{"name": "WORKLOAD", "value": "from-override"}]}]},
    }
    pod = build_worker_pod(
        KEY,
        COMMAND,
        parse_executor_config({"pod_override": override}),
        config,
        secret_env=("TOKEN", "WORKLOAD"),
    )
    assert_valid(pod, api_client)
    name = pod["metadata"]["name"]
    env = env_of(pod)
    for variable in ("TOKEN", "WORKLOAD"):
        assert env[variable] == {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": name, "key": variable}},
        }
    assert env["PLAIN"] == {"name": "PLAIN", "value": "x"}
    assert "from-" not in json.dumps(pod)
    assert pod["metadata"]["annotations"][LAUNCH_SECRET_ANNOTATION] == name
    assert launch_secret_of(pod) == name

    without = build_worker_pod(KEY, COMMAND, parse_executor_config({"pod_override": override}), config)
    assert LAUNCH_SECRET_ANNOTATION not in without["metadata"]["annotations"]  # no layer can set it
    assert launch_secret_of(without) is None
    assert env_of(without)["TOKEN"] == {"name": "TOKEN", "value": "from-template"}
    forged = {"metadata": {"name": name, "annotations": {LAUNCH_SECRET_ANNOTATION: "airflow-db"}}}
    assert launch_secret_of(forged) is None  # only ever the pod's own name


def test_the_launch_secret_is_named_labelled_and_annotated_like_its_pod() -> None:
    config = kube_config()
    raw = "tökén\n".encode()
    secret = build_launch_secret(KEY, {"TOKEN": raw}, config)
    pod = build(config=config)
    assert secret["metadata"]["name"] == pod["metadata"]["name"]
    assert secret["metadata"]["namespace"] == pod["metadata"]["namespace"]
    assert secret["metadata"]["labels"] == pod["metadata"]["labels"]  # kubectl get secret -l ... finds them
    assert secret["metadata"]["annotations"] == pod["metadata"]["annotations"]
    assert (secret["kind"], secret["type"], list(secret["data"])) == ("Secret", "Opaque", ["TOKEN"])
    assert base64.b64decode(secret["data"]["TOKEN"], validate=True) == raw
    kubernetes_validate.validate(secret, "1.37.0", strict=True)


# --- any task key gives a valid pod -------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(
    dag_id=ids, task_id=ids, run_id=ids, try_number=st.integers(0, 10**6), map_index=st.integers(-1, 10**6)
)
def test_any_task_key_gives_a_valid_pod(
    dag_id: str, task_id: str, run_id: str, try_number: int, map_index: int, api_client: ApiClient
) -> None:
    key = TaskKey(dag_id, task_id, run_id, try_number, map_index)
    pod = build(key=key)
    assert_valid(pod, api_client)
    metadata = pod["metadata"]
    assert len(metadata["name"]) <= 63
    assert DNS_LABEL.fullmatch(metadata["name"])
    for value in metadata["labels"].values():
        assert len(value) <= 63
        assert LABEL_VALUE.fullmatch(value)
    assert (metadata["annotations"]["dag_id"], metadata["annotations"]["run_id"]) == (dag_id, run_id)
    assert metadata["name"] == build(key=key)["metadata"]["name"], "one try, one deterministic name"


# --- through the real client, over HTTP -----------------------------------------------------------------


def test_built_pod_is_accepted_by_the_api_and_found_by_the_instance_selector(tmp_path: Path) -> None:
    from bridge.sim.cluster import Simulator

    config = kube_config(
        kubernetes={"pod_template_file": write_template(tmp_path, TEMPLATE)},
        kubernetes_secrets={"SQL_CONN": "airflow-db=sql_alchemy_conn"},
        kubernetes_labels={"team": "data"},
    )
    pod = build({"KubernetesExecutor": {"request_cpu": "500m", "limit_cpu": "1"}}, config=config)
    with Simulator() as cluster:
        core_v1: Any = cluster.core_v1()  # Any: the client takes API-JSON dicts as well as V1Pod models
        created = core_v1.create_namespaced_pod("default", body=pod)
        assert created.spec.containers[0].args == COMMAND
        with pytest.raises(ApiException) as duplicate:
            core_v1.create_namespaced_pod("default", body=pod)
        assert duplicate.value.status == 409, "a redelivered launch cannot start the task twice"
        mine = core_v1.list_namespaced_pod("default", label_selector=instance_selector(config))
        other = core_v1.list_namespaced_pod("default", label_selector=f"{INSTANCE_LABEL}=another-bridge")
    assert [item.metadata.name for item in mine.items] == [pod["metadata"]["name"]]
    assert other.items == []
