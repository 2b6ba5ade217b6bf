"""Admission of objects: the defaults and validation rules kube-apiserver applies before it persists.

Why: the bridge builds pod specs from user input (executor_config, pod templates). A simulator that accepts
any dict would let a bad spec pass every test and fail on the first real cluster. These rules reproduce the
real server's 422 ``Invalid`` answers (same field paths, same message wording, all errors of an object
collected together) for the parts of Pod, Secret, ConfigMap, Namespace and Node that the bridge touches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from bridge.sim.selectors import label_key_error, label_value_error

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>[eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$"
)
_SUFFIX_SCALE = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    **{suffix: Decimal(1024**power) for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}

_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_ENV_HELP = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and "
    "must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for "
    "validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"
)
_MUTABLE_POD_FIELDS = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)
_ANNOTATIONS_MAX_BYTES = 262_144
# Admission (DefaultTolerationSeconds) gives every pod these two tolerations.
_DEFAULT_TOLERATIONS = [
    {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
]


@dataclass(frozen=True)
class FieldError:
    """One invalid field: becomes a Status ``cause`` and a part of the 422 message."""

    reason: str
    field: str
    body: str

    @property
    def text(self) -> str:
        return f"{self.field}: {self.body}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body, "field": self.field}


def _quote(value: Any) -> str:
    """Go's %q for strings, bare numbers and booleans: how the API server prints a bad value."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else json.dumps(value)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", field, f"Invalid value: {_quote(value)}: {detail}")


def not_supported(field: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    choices = ", ".join(_quote(choice) for choice in supported)
    return FieldError(
        "FieldValueNotSupported", field, f"Unsupported value: {_quote(value)}: supported values: {choices}"
    )


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", field, f"Duplicate value: {_quote(value)}")


def not_found(field: str, value: Any) -> FieldError:
    return FieldError("FieldValueNotFound", field, f"Not found: {_quote(value)}")


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", field, f"Forbidden: {detail}")


def too_long(field: str, limit: int) -> FieldError:
    return FieldError("FieldValueTooLong", field, f"Too long: may not be more than {limit} bytes")


def parse_quantity(text: str) -> Decimal:
    """The value of a resource quantity (``100m``, ``1.5Gi``, ``2e3``); ValueError if it does not parse."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(text)
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        if suffix[:1] in ("e", "E") and len(suffix) > 1:
            return number * Decimal(10) ** int(suffix[1:])
        return number * _SUFFIX_SCALE[suffix]
    except (InvalidOperation, KeyError):
        raise ValueError(text) from None


def _name_errors(resource: str, metadata: dict[str, Any]) -> list[FieldError]:
    name = metadata.get("name") or ""
    if not name:
        if metadata.get("generateName"):
            return []
        return [required("metadata.name", "name or generateName is required")]
    if resource == "namespaces":
        if len(name) > 63:
            return [invalid("metadata.name", name, "must be no more than 63 characters")]
        return [] if _DNS_LABEL.match(name) else [invalid("metadata.name", name, _LABEL_HELP)]
    if len(name) > 253:
        return [invalid("metadata.name", name, "must be no more than 253 characters")]
    return [] if _DNS_SUBDOMAIN.match(name) else [invalid("metadata.name", name, _SUBDOMAIN_HELP)]


def _owner_reference_errors(owners: Any) -> list[FieldError]:
    """apimachinery's ValidateOwnerReferences. Its field paths carry no index, and a missing field is empty
    to the API server (Go's zero value): both read ``Invalid value: "": uid must not be empty``."""
    path = "metadata.ownerReferences"
    if not isinstance(owners, list) or not all(isinstance(owner, dict) for owner in owners):
        return [invalid(path, type(owners).__name__, "must be a list of owner references")]
    errors: list[FieldError] = []
    for owner in owners:
        api_version = owner.get("apiVersion") or ""
        parts = str(api_version).split("/")
        if not (parts[-1] if len(parts) <= 2 else ""):  # "v1" or "group/v1": the version must be there
            errors.append(invalid(f"{path}.apiVersion", api_version, "version must not be empty"))
        for field in ("kind", "name", "uid"):
            if not owner.get(field):
                errors.append(
                    invalid(f"{path}.{field}", owner.get(field) or "", f"{field} must not be empty")
                )
    return errors


def validate_metadata(resource: str, metadata: dict[str, Any]) -> list[FieldError]:
    """Name, labels, annotations and owner references rules shared by every resource."""
    errors = _name_errors(resource, metadata)
    for key, value in (metadata.get("labels") or {}).items():
        if key_error := label_key_error(key):
            errors.append(invalid("metadata.labels", key, key_error))
        if not isinstance(value, str):
            errors.append(invalid("metadata.labels", value, "label values must be strings"))
        elif value_error := label_value_error(value):
            errors.append(invalid("metadata.labels", value, value_error))
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        if key_error := label_key_error(key):
            errors.append(invalid("metadata.annotations", key, key_error))
    size = sum(len(key) + len(str(value)) for key, value in annotations.items())
    if size > _ANNOTATIONS_MAX_BYTES:
        errors.append(too_long("metadata.annotations", _ANNOTATIONS_MAX_BYTES))
    if metadata.get("ownerReferences") is not None:
        errors += _owner_reference_errors(metadata["ownerReferences"])
    return errors


def default_pod(pod: dict[str, Any]) -> None:
    """Fill in the defaults kube-apiserver (and its default admission plugins) give a new pod."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("priority", 0)
    tolerations = spec.setdefault("tolerations", [])
    for toleration in _DEFAULT_TOLERATIONS:
        if not any(existing.get("key") == toleration["key"] for existing in tolerations):
            tolerations.append(dict(toleration))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        image = container.get("image") or ""
        tag = image.rpartition("/")[2].partition("@")[0]
        untagged_or_latest = ":" not in tag or tag.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if untagged_or_latest else "IfNotPresent")


def validate_pod_spec(spec: dict[str, Any]) -> list[FieldError]:
    """The create-time rules of a pod spec (containers, enums, env, resources, volumes)."""
    errors: list[FieldError] = []
    volume_names: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        field = f"spec.volumes[{index}].name"
        name = volume.get("name") or ""
        if not name:
            errors.append(required(field))
        elif not _DNS_LABEL.match(name) or len(name) > 63:
            errors.append(invalid(field, name, _LABEL_HELP))
        elif name in volume_names:
            errors.append(duplicate(field, name))
        volume_names.add(name)
    containers = spec.get("containers") or []
    if not containers:
        errors.append(required("spec.containers"))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            errors += _container_errors(f"spec.{group}[{index}]", container, seen, volume_names)
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        errors.append(not_supported("spec.restartPolicy", policy, ("Always", "OnFailure", "Never")))
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0:
        errors.append(
            invalid("spec.terminationGracePeriodSeconds", grace, "must be greater than or equal to 0")
        )
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        errors.append(invalid("spec.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647"))
    return errors


def _container_errors(
    path: str, container: dict[str, Any], seen: set[str], volume_names: set[str]
) -> list[FieldError]:
    errors: list[FieldError] = []
    name = container.get("name") or ""
    if not name:
        errors.append(required(f"{path}.name"))
    elif len(name) > 63 or not _DNS_LABEL.match(name):
        errors.append(invalid(f"{path}.name", name, _LABEL_HELP))
    elif name in seen:
        errors.append(duplicate(f"{path}.name", name))
    seen.add(name)
    if not container.get("image"):
        errors.append(required(f"{path}.image"))
    pull = container.get("imagePullPolicy")
    if pull not in ("Always", "IfNotPresent", "Never"):
        errors.append(not_supported(f"{path}.imagePullPolicy", pull, ("Always", "IfNotPresent", "Never")))
    for index, variable in enumerate(container.get("env") or []):
        errors += _env_errors(f"{path}.env[{index}]", variable)
    errors += _resources_errors(f"{path}.resources", container.get("resources") or {})
    for index, mount in enumerate(container.get("volumeMounts") or []):
        mount_name = mount.get("name") or ""
        if not mount_name:
            errors.append(required(f"{path}.volumeMounts[{index}].name"))
        elif mount_name not in volume_names:
            errors.append(not_found(f"{path}.volumeMounts[{index}].name", mount_name))
        if not mount.get("mountPath"):
            errors.append(required(f"{path}.volumeMounts[{index}].mountPath"))
    return errors


def _env_errors(path: str, variable: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    name = variable.get("name") or ""
    if not name:
        errors.append(required(f"{path}.name"))
    elif not _ENV_NAME.match(name):
        errors.append(invalid(f"{path}.name", name, _ENV_HELP))
    source = variable.get("valueFrom")
    if source is None:
        return errors
    if variable.get("value"):
        errors.append(
            invalid(f"{path}.valueFrom", "", "may not be specified when `value` is not empty"),
        )
    kinds = [
        kind
        for kind in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
        if source.get(kind)
    ]
    if len(kinds) != 1:
        errors.append(
            invalid(
                f"{path}.valueFrom",
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            )
            if not kinds
            else forbidden(f"{path}.valueFrom", "may not have more than one field specified at a time")
        )
    for kind in ("secretKeyRef", "configMapKeyRef"):
        reference = source.get(kind)
        if not reference:
            continue
        for part in ("name", "key"):
            if not reference.get(part):
                errors.append(required(f"{path}.valueFrom.{kind}.{part}"))
    return errors


def _resources_errors(path: str, resources: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    parsed: dict[str, dict[str, Decimal]] = {"limits": {}, "requests": {}}
    for section in ("limits", "requests"):
        for resource, text in (resources.get(section) or {}).items():
            try:
                parsed[section][resource] = parse_quantity(str(text))
            except ValueError:
                errors.append(
                    invalid(
                        f"{path}.{section}[{resource}]",
                        text,
                        "quantities must match the regular expression "
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (e.g. '500m', '2', '1.5Gi')",
                    )
                )
    for resource, request in parsed["requests"].items():
        limit = parsed["limits"].get(resource)
        if limit is not None and request > limit:
            text = resources["requests"][resource]
            errors.append(
                invalid(
                    f"{path}.requests",
                    str(text),
                    f"must be less than or equal to {resource} limit of {resources['limits'][resource]}",
                )
            )
    return errors


def qos_class(spec: dict[str, Any]) -> str:
    """BestEffort (no requests/limits), Guaranteed (cpu+memory limits = requests everywhere) or Burstable."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = {**limits, **(resources.get("requests") or {})}
        any_set = any_set or bool(limits) or bool(requests)
        for resource in ("cpu", "memory"):
            if resource not in limits or parse_quantity(str(requests[resource])) != parse_quantity(
                str(limits[resource])
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def validate_object(resource: str, obj: dict[str, Any]) -> list[FieldError]:
    """Every create-time rule for ``obj`` of ``resource`` (defaults must already be applied)."""
    errors = validate_metadata(resource, obj.get("metadata") or {})
    if resource == "pods":
        errors += validate_pod_spec(obj.get("spec") or {})
    elif resource in ("secrets", "configmaps"):
        for section in ("data", "binaryData", "stringData"):
            for key in obj.get(section) or {}:
                if not _CONFIG_KEY.match(key) or len(key) > 253:
                    errors.append(
                        invalid(
                            f"{section}[{key}]",
                            key,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                            "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                            "'[-._a-zA-Z0-9]+')",
                        )
                    )
    return errors


def _without_mutable_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a pod spec with the fields an update may change blanked out."""
    blanked: dict[str, Any] = json.loads(json.dumps(spec))
    blanked.pop("activeDeadlineSeconds", None)
    blanked.pop("tolerations", None)
    for group in ("containers", "initContainers"):
        for container in blanked.get(group) or []:
            container.pop("image", None)
    return blanked


def validate_pod_update(old: dict[str, Any], new: dict[str, Any]) -> list[FieldError]:
    """The rules of a pod PUT/PATCH: metadata as on create, and the spec is immutable but for a few fields."""
    errors = validate_metadata("pods", new.get("metadata") or {})
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    old_tolerations = old_spec.get("tolerations") or []
    new_tolerations = new_spec.get("tolerations") or []
    dropped_toleration = any(toleration not in new_tolerations for toleration in old_tolerations)
    if dropped_toleration or _without_mutable_fields(old_spec) != _without_mutable_fields(new_spec):
        errors.append(forbidden("spec", _MUTABLE_POD_FIELDS))
    else:
        errors += [error for error in validate_pod_spec(new_spec) if error.field.endswith(".image")]
    return errors
