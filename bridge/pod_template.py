"""Pod templates: the rules a pod written by a person must follow before the bridge builds on it.

A pod reaches the bridge in API JSON from three places: ``[kubernetes] pod_template_file``, a task's
``executor_config`` (``pod_template_file`` or ``pod_override``) and the ``[kubernetes]`` affinity and
tolerations. Each is written by hand, often by a DAG author rather than the operator, so the same rules apply
to all of them here, and a mistake fails with a message that says where the pod came from and what to fix.

A template file's path may come from a DAG author and its error becomes the task's failure reason, which
anyone who can read task logs sees: messages therefore give line and column, never the file's text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import UserInputError
from bridge.naming import check_known_keys

BASE_CONTAINER = "base"  # the container that runs the task, as in Airflow
AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")

# PyYAML quotes what it stumbled on: a single character or a token kind like '<block end>' say what is
# wrong without revealing anything, while a longer quote (a tag, an anchor name) is file text, left out.
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_TOKEN_KIND = re.compile(r"<[a-z ]+>")


class PodTemplateError(UserInputError):
    """A pod template file is not a usable pod; the message names where its path came from and the fix."""


def check_affinity(value: object) -> dict[str, Any]:
    """``value`` if it is a pod affinity in API JSON, else ValueError saying what is expected.

    Shared by ``[kubernetes] affinity`` and a task's executor_config, so both follow one rule.
    """
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got JSON {type(value).__name__}")
    check_known_keys("the affinity", value, AFFINITY_KEYS)
    return value


def check_tolerations(value: object) -> list[dict[str, Any]]:
    """``value`` if it is a list of pod tolerations in API JSON, else ValueError saying what is expected."""
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list of toleration objects, got JSON {type(value).__name__}")
    for index, toleration in enumerate(value):
        where = f"toleration #{index}"
        if not isinstance(toleration, dict):
            raise ValueError(f"expected {where} to be a JSON object, got {toleration!r}")
        check_known_keys(where, toleration, TOLERATION_KEYS)
        if toleration.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ValueError(f"expected {where} operator Equal or Exists")
        if toleration.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"expected {where} effect NoSchedule, PreferNoSchedule or NoExecute")
    return value


def check_pod_shape(
    obj: object, source: str, error: type[UserInputError] = PodTemplateError
) -> dict[str, Any]:
    """Return ``obj`` if it looks like an API-JSON pod (camelCase, as ``kubectl get pod -o yaml`` shows).

    Raises ``error`` naming ``source`` otherwise; the message names fields and types, never values. Empty
    YAML keys (``labels:`` with nothing after it) load as None; they are dropped here, so that the pod
    builder only ever sees mappings and lists where the API expects them.
    """
    fix = "expected a Pod in API form: kind: Pod, metadata: {...}, spec: {containers: [{name: base, ...}]}"
    if not isinstance(obj, dict):
        raise error(f"{source} is a {type(obj).__name__}, not a pod; {fix}")
    if (obj.get("kind") or "Pod") != "Pod" or (obj.get("apiVersion") or "v1") != "v1":
        raise error(f"{source} has kind {obj.get('kind')!r}, apiVersion {obj.get('apiVersion')!r}; {fix}")
    shapes = (
        (obj, "metadata", dict, "a mapping"),
        (obj, "spec", dict, "a mapping"),
        (obj.get("metadata"), "labels", dict, "a mapping"),
        (obj.get("metadata"), "annotations", dict, "a mapping"),
        (obj.get("spec"), "containers", list, "a list of mappings"),
    )
    for parent, field, kind, expected in shapes:
        if not isinstance(parent, dict):
            continue
        if parent.get(field) is None:
            parent.pop(field, None)
        elif not isinstance(parent[field], kind):
            got = type(parent[field]).__name__
            raise error(f"{source} field {field!r} must be {expected}, got a {got}; {fix}")
    containers = obj.get("spec", {}).get("containers", [])
    if not all(isinstance(container, dict) for container in containers):
        raise error(f"{source} field 'containers' must be a list of mappings; {fix}")
    return obj


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, from PyYAML's error, without the file text PyYAML quotes."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return "is not valid YAML"
    problem = f"{_without_file_text(exc.problem or 'a syntax error')} at {_position(exc.problem_mark)}"
    if exc.context and exc.context_mark is not None:  # e.g. where an unclosed quote was opened
        problem += f", {_without_file_text(exc.context)} from {_position(exc.context_mark)}"
    return f"is not valid YAML: {problem}"


def _without_file_text(message: str) -> str:
    def keep_if_harmless(quote: re.Match[str]) -> str:
        quoted = quote[1] if quote[1] is not None else quote[2]
        return quote[0] if len(quoted) <= 1 or _TOKEN_KIND.fullmatch(quoted) else "…"

    return _QUOTED.sub(keep_if_harmless, message)


def _position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def load_pod_template(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    """Read a YAML pod template; ``source`` names where the path came from, for the error message."""
    where = f"{source} {os.fspath(path)!r}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, RuntimeError):
        # RuntimeError: "~user" of an unknown user, or no home directory.
        raise PodTemplateError(f"{where} is not an existing file; give the path of a YAML pod file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise PodTemplateError(
            f"{where} cannot be read ({reason}); give the path of a UTF-8 YAML pod file"
        ) from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PodTemplateError(f"{where} {_yaml_problem(exc)}") from None
    return check_pod_shape(obj, where)


def base_container(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The container that runs the task: the one named ``base``, else the first (Airflow's rule)."""
    containers: list[dict[str, Any]] = pod.get("spec", {}).get("containers", [])
    named = [container for container in containers if container.get("name") == BASE_CONTAINER]
    return next(iter(named or containers), None)
