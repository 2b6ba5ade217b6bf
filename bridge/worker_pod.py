"""The pod that runs one task try, built as API JSON ready for ``CoreV1Api.create_namespaced_pod``.

Three layers are merged, later ones winning, as Airflow's ``PodGenerator.construct_pod`` does since #35185:

1. the base pod from a ``pod_template_file`` (the task's ``executor_config`` one, else ``[kubernetes]``'s);
2. the dynamic pod: the ``[kubernetes]`` settings and free-form sections, then the task's legacy
   ``KubernetesExecutor`` settings on top;
3. the task's ``pod_override``.

Merge rules (:func:`reconcile_pods`): dicts (labels, annotations, nodeSelector, resources, ...) merge key by
key; containers pair up by name (in every layer the container named ``base``, else the first one, is the task
container); env, volumes, volumeMounts, ports, imagePullSecrets and initContainers are concatenated, and a
later entry with the same name (mountPath for mounts) replaces the earlier one, because the API rejects
duplicates; envFrom and tolerations are concatenated; any other value is replaced by a later one unless the
later one is unset (None, "", [] or {}).

What no layer can change, because the bridge's tracking depends on it: the pod name (one deterministic name
per try, so a redelivered launch is a harmless 409), the namespace (the watcher watches only
``[kubernetes] namespace``; an override naming another one is an error, a template's is replaced), the
task-key labels and annotations and the ``kbridge/instance`` label (how the watcher finds and identifies
pods), the ``base`` container's ``args`` (the task command; the image ENTRYPOINT is kept, as in Airflow 2+,
#12766) and ``restartPolicy: Never`` (a restarted pod never reaches a final phase).

The ``base`` container also gets ``AIRFLOW_IS_K8S_EXECUTOR_POD=True``, as Airflow's executor sets it.
Secrets reach the pod only by reference (``secretKeyRef`` or a Secret volume), never by value. That holds
for a try's own secret values too (``execute_async(secret_env=...)``): the dispatcher puts them in a Secret
named like the pod (:func:`build_launch_secret`), and the ``base`` container gets one ``secretKeyRef`` per
name, replacing any same-named variable of the layers; the pod is annotated ``kbridge/launch-secret`` with
the Secret's name, and no layer can set or change that annotation (the watcher deletes the Secret it names).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from functools import reduce
from typing import Any

from bridge.config import KubeConfig
from bridge.errors import UserInputError
from bridge.executor_config import KubernetesExecutorConfig, TaskPodConfig
from bridge.naming import create_pod_id, task_key_annotations, task_key_from_annotations, task_key_labels
from bridge.pod_template import BASE_CONTAINER, base_container, load_pod_template
from bridge.task_key import TaskKey, TaskKeyError

INSTANCE_LABEL = "kbridge/instance"
# On a pod whose try has secret env values: the name of the Secret holding them (the pod's own name).
LAUNCH_SECRET_ANNOTATION = "kbridge/launch-secret"  # noqa: S105 - a key, not a secret
# Where a legacy ``gcp_service_account_key`` Secret is mounted; the Secret must hold the key as key.json.
GCP_KEY_VOLUME = "gcp-service-account-key"
GCP_KEY_DIRECTORY = "/var/secrets/google"
GCP_KEY_FILE = "key.json"

Pod = dict[str, Any]

# List fields whose entries have an identity field: a later entry replaces an earlier one with the same id.
_KEYED_LISTS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
# List fields whose entries have no identity: concatenated, exact duplicates dropped.
_CONCATENATED_LISTS = {"envFrom", "tolerations", "hostAliases", "topologySpreadConstraints", "readinessGates"}
# Set by the API server: a template saved by ``kubectl get pod -o yaml`` has them, and create rejects some.
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "generation",
    "managedFields",
    "selfLink",
)


class WorkerPodError(UserInputError):
    """The pod for a task cannot be built; the message names the field and the fix."""


def instance_labels(kube_config: KubeConfig) -> dict[str, str]:
    """The label that marks pods of this bridge, so bridges sharing a namespace ignore each other's pods."""
    return {INSTANCE_LABEL: kube_config.key_prefix}


def instance_selector(kube_config: KubeConfig) -> str:
    """A label selector for all worker pods of this bridge (for the watcher's list and watch calls)."""
    return ",".join(f"{name}={value}" for name, value in instance_labels(kube_config).items())


def build_worker_pod(
    key: TaskKey,
    command: Sequence[str],
    pod_config: TaskPodConfig | None,
    kube_config: KubeConfig,
    *,
    secret_env: Sequence[str] = (),
) -> Pod:
    """The pod (API JSON, camelCase) that runs ``command`` for one task try; see the module doc for the rules.

    ``secret_env`` names variables the ``base`` container reads from the try's launch Secret (see
    :func:`build_launch_secret`). Raises :class:`WorkerPodError` (or ``PodTemplateError``) for a bad
    command, template or override.
    """
    argv = _argv(command)
    pod_config = pod_config or TaskPodConfig()
    layers = [
        _template_pod(pod_config, kube_config),
        _config_pod(kube_config),
        _legacy_pod(pod_config.legacy),
        _override_pod(pod_config.pod_override, kube_config),
    ]
    empty: Pod = {}
    pod = reduce(reconcile_pods, [_normalized(layer) for layer in layers if layer is not None], empty)
    pod = {"apiVersion": "v1", "kind": "Pod", **pod}
    _apply_identity(pod, key, argv, kube_config, tuple(secret_env))
    if not (base_container(pod) or {}).get("image"):
        raise WorkerPodError(
            f"no image for the {BASE_CONTAINER!r} container of task {key.dag_id}.{key.task_id}: set "
            "[kubernetes] worker_container_repository and worker_container_tag, give the pod template an "
            "image, or set an image in executor_config"
        )
    return pod


def build_launch_secret(key: TaskKey, values: Mapping[str, bytes], kube_config: KubeConfig) -> dict[str, Any]:
    """The Secret (API JSON) holding a try's secret env values: named like its pod, labelled like it
    (``kubectl get secret -l kbridge/instance=...`` finds them), annotated with the try's key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": create_pod_id(key),
            "namespace": kube_config.namespace,
            "labels": {**task_key_labels(key), **instance_labels(kube_config)},
            "annotations": task_key_annotations(key),
        },
        "data": {name: base64.b64encode(value).decode("ascii") for name, value in values.items()},
    }


def launch_secret_of(pod: Mapping[str, Any]) -> str | None:
    """The name of the pod's launch Secret, if it has one. It is always the pod's own name: an annotation
    naming any other Secret was not written by the bridge, and is ignored."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name")
    named = (metadata.get("annotations") or {}).get(LAUNCH_SECRET_ANNOTATION)
    return name if isinstance(name, str) and name and named == name else None


def key_text(key: TaskKey) -> str:
    """A try's key as log lines and messages show it."""
    mapped = f" map={key.map_index}" if key.map_index >= 0 else ""
    return f"{key.dag_id}.{key.task_id} run={key.run_id} try={key.try_number}{mapped}"


def ownership_problem(obj: Any, key: TaskKey, instance: str, *, kind: str = "pod") -> str | None:
    """Why the pod (or Secret) holding this try's name is not this try's of this bridge, or None if it is.

    ``instance`` is the bridge's ``key_prefix`` (its instance label). Checked before the bridge touches an
    object by name: a 409, and every delete of a launch Secret.
    """
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name", create_pod_id(key))
    try:
        owner = task_key_from_annotations(metadata.get("annotations"))
    except TaskKeyError as exc:
        return (
            f"{kind} {name} already exists but is not a task {kind} ({exc}); delete it or rename it, then "
            "retry the task"
        )
    if owner != key:
        return (
            f"{kind} {name} already exists for another try ({key_text(owner)}), not {key_text(key)}: a "
            f"{kind} name collision; delete that {kind} or retry the task"
        )
    label = (metadata.get("labels") or {}).get(INSTANCE_LABEL)
    if label != instance:
        return (
            f"{kind} {name} belongs to bridge instance {label!r} ({INSTANCE_LABEL} label), not {instance!r}; "
            "bridges sharing a namespace must run different DAGs or use different namespaces"
        )
    return None


def reconcile_pods(base: Pod, override: Pod) -> Pod:
    """``override`` merged onto ``base`` by the module's rules; neither argument is modified."""
    merged: Pod = _merge(copy.deepcopy(base), copy.deepcopy(override), field="")
    return merged


def _argv(command: Sequence[str]) -> list[str]:
    if isinstance(command, str | bytes):
        raise WorkerPodError(
            f"command must be a list of arguments, got the string {command[:80]!r}; the bridge never runs "
            "shell strings, so split it, e.g. ['airflow', 'tasks', 'run', 'dag', 'task', 'run_id']"
        )
    argv = list(command)
    if not argv or not all(isinstance(argument, str) for argument in argv):
        raise WorkerPodError(f"command must be a non-empty list of strings, got {argv[:10]!r}")
    return argv


def _template_pod(pod_config: TaskPodConfig, kube_config: KubeConfig) -> Pod | None:
    if pod_config.pod_template_file is not None:
        return load_pod_template(pod_config.pod_template_file, "executor_config['pod_template_file']")
    return kube_config.pod_template  # read and checked once, when the configuration was loaded


def _config_pod(kube_config: KubeConfig) -> Pod:
    """The dynamic pod from the ``[kubernetes]`` section and the free-form sections."""
    env: list[dict[str, Any]] = [{"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"}]
    env += [
        {"name": name, "value": value} for name, value in kube_config.kubernetes_environment_variables.items()
    ]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}}
        for name, ref in kube_config.kubernetes_secrets.items()
    ]
    container = _compact(
        name=BASE_CONTAINER,
        image=kube_config.kube_image,
        imagePullPolicy=kube_config.worker_container_image_pull_policy,
        env=env,
    )
    return {
        "metadata": _compact(
            labels=kube_config.kubernetes_labels, annotations=kube_config.kubernetes_annotations
        ),
        "spec": _compact(
            containers=[container],
            serviceAccountName=kube_config.worker_service_account_name,
            imagePullSecrets=[{"name": name} for name in kube_config.image_pull_secrets],
            securityContext=kube_config.security_context(),
            nodeSelector=kube_config.kubernetes_node_selectors,
            affinity=kube_config.affinity,
            tolerations=kube_config.tolerations,
        ),
    }


def _legacy_pod(legacy: KubernetesExecutorConfig | None) -> Pod | None:
    """Airflow 1.10's ``executor_config={"KubernetesExecutor": {...}}`` as a partial pod."""
    if legacy is None:
        return None
    volumes, mounts, env = list(legacy.volumes or []), list(legacy.volume_mounts or []), []
    if legacy.gcp_service_account_key is not None:  # the name of a Secret holding key.json, never the key
        volumes.append({"name": GCP_KEY_VOLUME, "secret": {"secretName": legacy.gcp_service_account_key}})
        mounts.append({"name": GCP_KEY_VOLUME, "mountPath": GCP_KEY_DIRECTORY, "readOnly": True})
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCP_KEY_DIRECTORY}/{GCP_KEY_FILE}"})
    container = _compact(
        name=BASE_CONTAINER,
        image=legacy.image,
        imagePullPolicy=legacy.image_pull_policy,
        resources=_compact(**legacy.resources()),
        volumeMounts=mounts,
        env=env,
    )
    return {
        "metadata": _compact(labels=legacy.labels, annotations=legacy.annotations),
        "spec": _compact(
            containers=[container],
            volumes=volumes,
            nodeSelector=legacy.node_selectors,
            affinity=legacy.affinity,
            tolerations=legacy.tolerations,
        ),
    }


def _compact(**fields: Any) -> dict[str, Any]:
    """The fields that are set, copied: how the bridge builds its own layers (user data is never pruned)."""
    return {name: copy.deepcopy(value) for name, value in fields.items() if not _unset(value)}


def _override_pod(override: Pod | None, kube_config: KubeConfig) -> Pod | None:
    """The task's ``pod_override`` (shape-checked by ``TaskPodConfig``) if it stays in our namespace."""
    if override is None:
        return None
    namespace = override.get("metadata", {}).get("namespace")
    if namespace not in (None, "", kube_config.namespace):
        raise WorkerPodError(
            f"executor_config['pod_override'] metadata.namespace = {namespace!r}, but this bridge launches "
            f"and watches pods only in [kubernetes] namespace = {kube_config.namespace!r}; remove the "
            "namespace from the override, or run a bridge for that namespace"
        )
    return override


def _normalized(layer: Pod) -> Pod:
    """A copy of one layer with its task container named ``base`` and server-set fields removed."""
    pod = copy.deepcopy(layer)
    pod.pop("status", None)
    for field in _SERVER_METADATA:
        pod.get("metadata", {}).pop(field, None)
    containers = pod.get("spec", {}).get("containers") or []
    if containers and not any(container.get("name") == BASE_CONTAINER for container in containers):
        containers[0]["name"] = BASE_CONTAINER
    return pod


def _unset(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _merge(base: Any, override: Any, field: str) -> Any:
    if _unset(override):
        return base
    if _unset(base):
        return override
    if isinstance(base, dict) and isinstance(override, dict):
        for name, value in override.items():
            if not _unset(value):
                base[name] = _merge(base.get(name), value, name)
        return base
    if isinstance(base, list) and isinstance(override, list):
        if field in _KEYED_LISTS:
            return _merge_keyed(base, override, _KEYED_LISTS[field], merge_entries=field == "containers")
        if field in _CONCATENATED_LISTS:
            return base + [entry for entry in override if entry not in base]
    return override


def _merge_keyed(base: list[Any], override: list[Any], identity: str, *, merge_entries: bool) -> list[Any]:
    """Concatenate; an entry with the id of an earlier one merges into it or replaces it, in place."""
    merged = list(base)
    positions = {_identity(entry, identity): index for index, entry in enumerate(merged)}
    positions.pop(None, None)  # entries without an id are never matched
    for entry in override:
        entry_id = _identity(entry, identity)
        if entry_id in positions:
            old = merged[positions[entry_id]]
            merged[positions[entry_id]] = _merge(old, entry, "") if merge_entries else entry
        else:
            if entry_id is not None:
                positions[entry_id] = len(merged)
            merged.append(entry)
    return merged


def _identity(entry: object, field: str) -> object:
    return entry.get(field) if isinstance(entry, Mapping) else None


def _apply_identity(
    pod: Pod, key: TaskKey, argv: list[str], kube_config: KubeConfig, secret_env: tuple[str, ...]
) -> None:
    """Write the fields the bridge's tracking relies on, whatever the layers said."""
    name = create_pod_id(key)
    metadata = pod.setdefault("metadata", {})
    metadata["name"] = name
    metadata["namespace"] = kube_config.namespace
    metadata.pop("generateName", None)
    metadata["labels"] = {
        **metadata.get("labels", {}),
        **task_key_labels(key),
        **instance_labels(kube_config),
    }
    annotations = {**metadata.get("annotations", {}), **task_key_annotations(key)}
    # The watcher deletes the Secret this names: a layer naming another Secret must not survive.
    annotations.pop(LAUNCH_SECRET_ANNOTATION, None)
    if secret_env:
        annotations[LAUNCH_SECRET_ANNOTATION] = name
    metadata["annotations"] = annotations
    spec = pod.setdefault("spec", {})
    spec["restartPolicy"] = "Never"
    container = base_container(pod)
    if container is None:
        container = {"name": BASE_CONTAINER}
        spec["containers"] = [container]
    container["args"] = argv
    if secret_env:
        env = [entry for entry in container.get("env") or [] if _identity(entry, "name") not in secret_env]
        env += [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": name, "key": variable}}}
            for variable in secret_env
        ]
        container["env"] = env
