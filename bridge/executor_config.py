"""A task's ``executor_config``: per-task pod settings from a DAG file, checked before anything is launched.

``executor_config`` is written by DAG authors, so a mistake in it must fail that one task with a message
naming the field, the bad value and the fix, instead of surfacing later as a 422 from the API server or a pod
stuck in Pending. Three forms are accepted, as in Airflow:

* ``{"KubernetesExecutor": {...}}``, the Airflow 1.10 settings (:class:`KubernetesExecutorConfig`);
* ``{"pod_override": V1Pod | dict}``, a partial pod that wins over everything else;
* ``{"pod_template_file": "/path/pod.yaml"}``, a whole pod template, usable with ``pod_override``.

This module only parses and validates. Merging template → legacy settings → override, and checking that the
template file exists, is the pod builder's job (``bridge.worker_pod``), at pod-build time on the worker that
reads the file. Everything here is plain JSON data, so a :class:`TaskPodConfig` travels through Redis as is.
Rules shared with the ``[kubernetes]`` section come from ``bridge.config`` (pull policies) and
``bridge.pod_template`` (affinity, tolerations, pod shape), and name rules from ``bridge.naming``, so a
setting is judged the same wherever it is set.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bridge.config import IMAGE_PULL_POLICIES
from bridge.errors import UserInputError
from bridge.naming import (
    DNS1123_SUBDOMAIN_RULE,
    LABEL_VALUE_RULE,
    QUALIFIED_NAME_RULE,
    check_known_keys,
    did_you_mean,
    is_dns1123_subdomain,
    is_qualified_name,
    is_valid_label_value,
)
from bridge.pod_template import check_affinity, check_pod_shape, check_tolerations

LEGACY_KEY = "KubernetesExecutor"
POD_OVERRIDE_KEY = "pod_override"
POD_TEMPLATE_FILE_KEY = "pod_template_file"
EXECUTOR_CONFIG_KEYS = (LEGACY_KEY, POD_OVERRIDE_KEY, POD_TEMPLATE_FILE_KEY)

GPU_RESOURCE = "nvidia.com/gpu"

# The Kubernetes quantity grammar without a sign: resource amounts cannot be negative.
_QUANTITY_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[eE][+-]?[0-9]{1,2}|[KMGTPE]i|[numkMGTPE])?"
)
_BINARY_SUFFIX_POWERS = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIX_EXPONENTS = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY_EXAMPLES = "e.g. '500m', '0.5' or '2' for CPU and '128Mi' or '1Gi' for memory"

# Top-level pod fields an override may set; "status" is written by Kubernetes, never by a client.
_POD_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_POD_V1POD_HINT = (
    "pass the kubernetes.client.V1Pod itself, or its API form "
    "kubernetes.client.ApiClient().sanitize_for_serialization(pod) (camelCase keys), not pod.to_dict()"
)


class ExecutorConfigError(UserInputError):
    """An ``executor_config`` is malformed; the message names the field, the value and the fix."""


def _legacy_field(name: str) -> str:
    return f"executor_config[{LEGACY_KEY!r}][{name!r}]"


def _client_model_as_api_json(value: object) -> object:
    """``json.dumps`` fallback: Kubernetes client models (V1Pod, V1Toleration, ...) become API JSON."""
    if not hasattr(type(value), "openapi_types"):
        raise TypeError(f"a {type(value).__name__} is not JSON data")
    from kubernetes.client import ApiClient  # lazy: the client is heavy and most configs never need it

    to_api_json: Callable[[object], object] = ApiClient().sanitize_for_serialization
    return to_api_json(value)


def _api_json(where: str, value: object) -> Any:
    """A deep JSON copy of ``value``, with any Kubernetes client models turned into API JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_client_model_as_api_json))
    except (TypeError, ValueError) as error:
        raise ExecutorConfigError(
            f"{where} = {value!r} must hold only JSON data (dicts, lists, strings, numbers, booleans, null) "
            f"or Kubernetes client objects: {error}"
        ) from None


def _quantity_amount(name: str, value: object) -> tuple[str, Decimal]:
    """A quantity as the string Kubernetes expects (JSON numbers like ``0.5`` too), and its amount."""
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    match = _QUANTITY_RE.fullmatch(text) if isinstance(text, str) else None
    if not isinstance(text, str) or match is None:
        raise ExecutorConfigError(
            f"{_legacy_field(name)} = {value!r} is not a Kubernetes quantity; "
            f"use a non-negative number with an optional unit, {_QUANTITY_EXAMPLES}"
        )
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY_SUFFIX_POWERS:
        return text, number * 1024 ** _BINARY_SUFFIX_POWERS[suffix]
    if suffix in _DECIMAL_SUFFIX_EXPONENTS:
        return text, number.scaleb(_DECIMAL_SUFFIX_EXPONENTS[suffix])
    return text, number.scaleb(int(suffix[1:])) if suffix else number


def _quantity(name: str, value: object) -> str:
    return _quantity_amount(name, value)[0]


def _gpu_count(name: str, value: object) -> str:
    text, amount = _quantity_amount(name, value)
    if amount % 1 != 0:
        raise ExecutorConfigError(
            f"{_legacy_field(name)} = {value!r} is not a whole number; "
            "GPUs are allocated whole, e.g. '1' or '2'"
        )
    return text


def _image(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(character.isspace() for character in value):
        raise ExecutorConfigError(
            f"{_legacy_field(name)} = {value!r} is not an image reference; "
            "use a non-empty string without spaces, e.g. 'apache/airflow:2.10.5'"
        )
    return value


def _image_pull_policy(name: str, value: object) -> str:
    if value not in IMAGE_PULL_POLICIES:
        raise ExecutorConfigError(
            f"{_legacy_field(name)} = {value!r} is not an image pull policy"
            f"{did_you_mean(str(value), IMAGE_PULL_POLICIES)}; "
            f"use one of {', '.join(IMAGE_PULL_POLICIES)}"
        )
    return str(value)


def _secret_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not is_dns1123_subdomain(value):
        # Someone may have pasted the key itself: never echo that into logs and task failure reasons.
        maybe_key = isinstance(value, str) and (len(value) > 253 or any(c in value for c in "{}\n"))
        shown = f"<{len(str(value))} characters, not shown>" if maybe_key else repr(value)
        raise ExecutorConfigError(
            f"{_legacy_field(name)} = {shown} is not the name of a Kubernetes Secret; put the key file in a "
            f"Secret and give its name ({DNS1123_SUBDOMAIN_RULE}), never the key itself"
        )
    return value


def _string_map(where: str, value: object, *, labels: bool) -> dict[str, str]:
    """A map of strings with valid label/annotation keys, and valid label values if ``labels``."""
    if not isinstance(value, Mapping):
        raise ExecutorConfigError(f"{where} = {value!r} must be a dict of strings, e.g. {{'team': 'data'}}")
    for key, item in value.items():
        if not isinstance(key, str) or not is_qualified_name(key):
            raise ExecutorConfigError(f"{where} has an invalid key {key!r}; use a key {QUALIFIED_NAME_RULE}")
        if not isinstance(item, str):
            raise ExecutorConfigError(
                f"{where}[{key!r}] = {item!r} must be a string; quote it, e.g. {str(item)!r}"
            )
        if labels and not is_valid_label_value(item):
            raise ExecutorConfigError(
                f"{where}[{key!r}] = {item!r} is not a valid label value; use {LABEL_VALUE_RULE}"
            )
    return dict(value)


def _label_map(name: str, value: object) -> dict[str, str]:
    return _string_map(_legacy_field(name), value, labels=True)


def _annotation_map(name: str, value: object) -> dict[str, str]:
    return _string_map(_legacy_field(name), value, labels=False)


def _checked_by_config(check: Callable[[object], Any], example: str) -> Callable[[str, object], Any]:
    """A field check that applies the rule ``[kubernetes]`` uses for the same setting (one rule, one home)."""

    def checked(name: str, value: object) -> Any:
        try:
            return check(_api_json(_legacy_field(name), value))
        except ValueError as error:
            raise ExecutorConfigError(
                f"{_legacy_field(name)} = {value!r} is not valid in Kubernetes API form: {error}; {example}"
            ) from None

    return checked


def _object_list(where: str, value: object, required_keys: tuple[str, ...], example: str) -> list[Any]:
    data = _api_json(where, value)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ExecutorConfigError(
            f"{where} = {value!r} must be a list of dicts in Kubernetes API form, {example}"
        )
    for index, item in enumerate(data):
        missing = [key for key in required_keys if not isinstance(item.get(key), str) or not item[key]]
        if missing:
            raise ExecutorConfigError(
                f"{where}[{index}] = {item!r} lacks {', '.join(map(repr, missing))}; {example}"
            )
    return data


def _volumes(name: str, value: object) -> list[Any]:
    example = "e.g. [{'name': 'data', 'persistentVolumeClaim': {'claimName': 'data'}}]"
    return _object_list(_legacy_field(name), value, ("name",), example)


def _volume_mounts(name: str, value: object) -> list[Any]:
    example = "e.g. [{'name': 'data', 'mountPath': '/data'}]"
    return _object_list(_legacy_field(name), value, ("name", "mountPath"), example)


_affinity = _checked_by_config(check_affinity, "e.g. {'nodeAffinity': {...}}")
_tolerations = _checked_by_config(
    check_tolerations, "e.g. [{'key': 'gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}]"
)


_FIELD_CHECKS: dict[str, Callable[[str, object], object]] = {
    "image": _image,
    "image_pull_policy": _image_pull_policy,
    "request_memory": _quantity,
    "request_cpu": _quantity,
    "limit_memory": _quantity,
    "limit_cpu": _quantity,
    "limit_gpu": _gpu_count,
    "gcp_service_account_key": _secret_name,
    "node_selectors": _label_map,
    "affinity": _affinity,
    "annotations": _annotation_map,
    "volumes": _volumes,
    "volume_mounts": _volume_mounts,
    "tolerations": _tolerations,
    "labels": _label_map,
}


def _executor_config(obj: object, valid_keys: tuple[str, ...]) -> Mapping[str, Any]:
    """``obj`` as the top-level ``executor_config`` mapping with only ``valid_keys``; None counts as {}."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ExecutorConfigError(
            f"executor_config = {obj!r} must be a dict with any of the keys {', '.join(valid_keys)}, "
            f"e.g. {{{LEGACY_KEY!r}: {{'request_cpu': '500m'}}}}"
        )
    check_known_keys("executor_config", obj, valid_keys, ExecutorConfigError)
    return obj


def _legacy_settings(executor_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The checked ``{"KubernetesExecutor": {...}}`` settings of ``executor_config``; None counts as {}."""
    settings = executor_config.get(LEGACY_KEY)
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ExecutorConfigError(
            f"executor_config[{LEGACY_KEY!r}] = {settings!r} must be a dict, e.g. {{'request_cpu': '500m'}}"
        )
    check_known_keys(f"executor_config[{LEGACY_KEY!r}]", settings, _FIELD_CHECKS, ExecutorConfigError)
    return settings


@dataclass(frozen=True)
class KubernetesExecutorConfig:
    """Airflow 1.10's per-task settings: ``executor_config={"KubernetesExecutor": {...}}``.

    Every field is optional; None means "not set, keep what the pod template says". Values are validated and
    normalised on construction: quantities become strings (``0.5`` → ``"0.5"``), Kubernetes client objects
    (``V1Toleration``, ...) become API JSON, and dicts and lists are copied so that later edits by the caller
    do not leak in.

    ``gcp_service_account_key`` is kept for API compatibility. It must be the *name* of a Kubernetes Secret
    holding the key file, never key material: the pod builder mounts that Secret by reference
    (``bridge.worker_pod``), so the key never passes through Redis, logs or the pod spec.
    """

    image: str | None = None
    image_pull_policy: str | None = None
    request_memory: str | None = None
    request_cpu: str | None = None
    limit_memory: str | None = None
    limit_cpu: str | None = None
    limit_gpu: str | None = None
    gcp_service_account_key: str | None = None
    node_selectors: dict[str, str] | None = None
    affinity: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    volumes: list[dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None
    tolerations: list[dict[str, Any]] | None = None
    labels: dict[str, str] | None = None

    def __post_init__(self) -> None:
        for name, check in _FIELD_CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(name, value))
        for resource in ("cpu", "memory"):
            request_field, limit_field = f"request_{resource}", f"limit_{resource}"
            request, limit = getattr(self, request_field), getattr(self, limit_field)
            if request is None or limit is None:
                continue
            if _quantity_amount(request_field, request)[1] > _quantity_amount(limit_field, limit)[1]:
                raise ExecutorConfigError(
                    f"{_legacy_field(request_field)} = {request!r} is more than "
                    f"{_legacy_field(limit_field)} = {limit!r}; "
                    "a request must not exceed its limit, so lower the request or raise the limit"
                )

    @staticmethod
    def from_dict(obj: object) -> KubernetesExecutorConfig:
        """Build from an ``executor_config`` like ``{"KubernetesExecutor": {...}}``; None or {} mean empty."""
        return KubernetesExecutorConfig(**_legacy_settings(_executor_config(obj, (LEGACY_KEY,))))

    def as_dict(self) -> dict[str, Any]:
        """All fields by name (None when unset) as JSON data, in the flat form of Airflow 1.10.

        ``KubernetesExecutorConfig.from_dict({"KubernetesExecutor": config.as_dict()}) == config``.
        """
        return dataclasses.asdict(self)

    def resources(self) -> dict[str, dict[str, str]]:
        """The container ``resources`` these settings ask for, in API form; unset amounts are left out."""
        requests = {"cpu": self.request_cpu, "memory": self.request_memory}
        limits = {"cpu": self.limit_cpu, "memory": self.limit_memory, GPU_RESOURCE: self.limit_gpu}
        return {
            "requests": {name: amount for name, amount in requests.items() if amount is not None},
            "limits": {name: amount for name, amount in limits.items() if amount is not None},
        }


def _check_field_names(where: str, fields: Mapping[str, Any]) -> None:
    """Kubernetes API field names are camelCase; an underscore means a snake_case ``V1Pod.to_dict()``."""
    for name in fields:
        if "_" in name:
            raise ExecutorConfigError(
                f"{where} has the field {name!r}, which is not Kubernetes API form; {_POD_V1POD_HINT}"
            )


def _check_containers(where: str, containers: object) -> None:
    if not isinstance(containers, list) or not all(isinstance(item, dict) for item in containers):
        raise ExecutorConfigError(
            f"{where} = {containers!r} must be a list of container dicts, "
            "e.g. [{'name': 'base', 'image': '...'}]"
        )
    for index, container in enumerate(containers):
        _check_field_names(f"{where}[{index}]", container)


def _pod_override(value: object) -> dict[str, Any]:
    """Check that ``value`` is a partial pod in API form, and return a private JSON copy of it."""
    where = f"executor_config[{POD_OVERRIDE_KEY!r}]"
    model = type(value)
    if hasattr(model, "openapi_types") and model.__name__ != "V1Pod":
        raise ExecutorConfigError(
            f"{where} is a {model.__name__}; it must be a whole V1Pod, e.g. V1Pod(spec=...)"
        )
    if isinstance(value, str) and "api_version" in value and "spec" in value:
        # The text form of a V1Pod (str() of the model): what Airflow 3.2 stores when it cannot serialize one.
        raise ExecutorConfigError(
            f"{where} reached the executor as the text of a V1Pod, not a pod: Airflow before 3.3 serializes "
            "a V1Pod only with apache-airflow-providers-cncf-kubernetes installed next to the scheduler and "
            "the dag-processor; install it, or give pod_override as a dict in API form "
            "({'spec': {'containers': [{'name': 'base', ...}]}})"
        )
    pod = check_pod_shape(_api_json(where, value), where, ExecutorConfigError)
    # Beyond the shape every pod needs: an override is written by hand, so catch the usual mistakes.
    _check_field_names(where, pod)
    check_known_keys(where, pod, _POD_FIELDS, ExecutorConfigError)
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    _check_field_names(f"{where}['metadata']", metadata)
    _check_field_names(f"{where}['spec']", spec)
    for field in ("labels", "annotations"):
        if field in metadata:
            _string_map(f"{where}['metadata'][{field!r}]", metadata[field], labels=field == "labels")
    for field in ("containers", "initContainers"):
        if field in spec:
            _check_containers(f"{where}['spec'][{field!r}]", spec[field])
    return pod


@dataclass(frozen=True)
class TaskPodConfig:
    """Everything a task's ``executor_config`` says about its pod, validated; the pod builder merges it.

    ``pod_override`` is a pod in Kubernetes API form (camelCase JSON). ``pod_template_file`` is only checked
    to be a usable path string here; whether the file exists is checked when the pod is built.
    """

    legacy: KubernetesExecutorConfig | None = None
    pod_override: dict[str, Any] | None = None
    pod_template_file: str | None = None

    def __post_init__(self) -> None:
        if self.legacy is not None and not isinstance(self.legacy, KubernetesExecutorConfig):
            raise ExecutorConfigError(
                f"TaskPodConfig.legacy = {self.legacy!r} must be a KubernetesExecutorConfig or None"
            )
        if self.pod_override is not None:
            if self.legacy is not None:
                raise ExecutorConfigError(
                    f"executor_config sets both {LEGACY_KEY!r} and {POD_OVERRIDE_KEY!r}, "
                    f"which Airflow rejects too; move the {LEGACY_KEY!r} settings into the pod_override pod "
                    "(e.g. resources on its 'base' container) or drop pod_override"
                )
            object.__setattr__(self, "pod_override", _pod_override(self.pod_override))
        template = self.pod_template_file
        if template is not None and (
            not isinstance(template, str) or not template.strip() or "\0" in template
        ):
            raise ExecutorConfigError(
                f"executor_config[{POD_TEMPLATE_FILE_KEY!r}] = {template!r} is not a file path; "
                "give the path of a pod YAML file readable by the bridge workers, "
                "e.g. '/opt/pod_templates/gpu.yaml'"
            )

    def as_dict(self) -> dict[str, Any]:
        """This config as ``executor_config`` JSON; ``parse_executor_config(as_dict())`` rebuilds it."""
        config: dict[str, Any] = {}
        if self.legacy is not None:
            config[LEGACY_KEY] = self.legacy.as_dict()
        if self.pod_override is not None:
            config[POD_OVERRIDE_KEY] = copy.deepcopy(self.pod_override)
        if self.pod_template_file is not None:
            config[POD_TEMPLATE_FILE_KEY] = self.pod_template_file
        return config


def parse_executor_config(obj: object) -> TaskPodConfig:
    """Validate a task's ``executor_config`` in any accepted form; None or {} give an all-None config.

    An empty ``{"KubernetesExecutor": {}}`` counts as absent (so it may accompany ``pod_override``, as in
    Airflow); a key whose value is None counts as absent too.
    """
    executor_config = _executor_config(obj, EXECUTOR_CONFIG_KEYS)
    settings = _legacy_settings(executor_config)
    return TaskPodConfig(
        legacy=KubernetesExecutorConfig(**settings) if settings else None,
        pod_override=executor_config.get(POD_OVERRIDE_KEY),
        pod_template_file=executor_config.get(POD_TEMPLATE_FILE_KEY),
    )
