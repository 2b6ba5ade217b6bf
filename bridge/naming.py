"""Kubernetes-safe names, label values and pod metadata for one task try.

Airflow ids are free text, while Kubernetes names and label values have a strict syntax and a 63-character
limit. This module is the one place that knows those syntax rules (the ``is_*`` checks and the ``*_RULE``
texts that explain them, used by the configuration and executor_config checks too) and the one place that
bridges ids to them, with three promises:

* The pod name is a pure function of the task key, so a queue message delivered twice asks Kubernetes for the
  same pod twice and the second request fails with 409 AlreadyExists instead of starting the task again.
* Label values are those of Airflow's ``make_safe_label_value`` wherever Airflow's value is valid, so label
  selectors written for Airflow's KubernetesExecutor keep finding the bridge's pods.
* Annotations carry the raw ids, because labels are lossy (hashed); the task key is rebuilt from annotations.

It also holds the one check for keys of a hand-written mapping (:func:`check_known_keys`), so an unknown key
in a config option, an affinity or an executor_config is reported in one way, with a suggestion.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from bridge.task_key import TaskKey, TaskKeyError

MAX_LABEL_VALUE_LENGTH = 63
# A pod name becomes the pod's hostname, which Linux caps at 63 characters (HOST_NAME_MAX minus one).
MAX_POD_NAME_LENGTH = 63
MAX_DNS1123_LABEL_LENGTH = 63
MAX_DNS1123_SUBDOMAIN_LENGTH = 253
MAX_QUALIFIED_NAME_LENGTH = 63  # the part after the optional "prefix/" of a label or annotation key
MAX_CONFIG_KEY_LENGTH = 253  # a key of a Secret or ConfigMap

# The rules above in words, for error messages, so every module explains a rule the same way.
LABEL_VALUE_RULE = "at most 63 letters, digits, '-', '_', '.', alphanumeric at both ends"
QUALIFIED_NAME_RULE = (
    "like team or example.com/team, the part after '/' being a label value of 1-63 characters"
)
DNS1123_LABEL_RULE = "at most 63 lowercase letters, digits and '-', alphanumeric at both ends"
DNS1123_SUBDOMAIN_RULE = "lowercase letters, digits, '-' and '.', like airflow-secrets"
ENV_VAR_NAME_RULE = "letters, digits, '_', '-', '.', not starting with a digit"
CONFIG_KEY_RULE = "letters, digits, '-', '_', '.'"

# Label and annotation keys, as Airflow's KubernetesExecutor names them.
DAG_ID_KEY = "dag_id"
TASK_ID_KEY = "task_id"
RUN_ID_KEY = "run_id"
TRY_NUMBER_KEY = "try_number"
MAP_INDEX_KEY = "map_index"
KUBERNETES_EXECUTOR_LABEL = "kubernetes_executor"
KUBERNETES_EXECUTOR_LABEL_VALUE = "True"

_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_NAME_RE = re.compile(_LABEL_NAME)
_LABEL_VALUE_RE = re.compile(f"({_LABEL_NAME})?")  # a label value is a label name or empty
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
# The portable rule: Kubernetes before 1.34 rejects anything wider, so a name works on every cluster version.
_ENV_VAR_NAME_RE = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
# Airflow's character class, spelled out in ASCII: Python's \w and str.isalnum() would also keep "é" or "٣".
_NOT_LABEL_CHARACTER_RE = re.compile(r"[^A-Za-z0-9_.-]")
_LABEL_PUNCTUATION = "-_."
_LABEL_HASH_LENGTH = 9
# Where Airflow would emit "-<hash>" (an invalid value), the bridge puts this letter first.
_HASHED_LABEL_FALLBACK = "x"

_POD_NAME_CHARACTERS = frozenset(string.ascii_lowercase + string.digits)
_POD_NAME_HASH_LENGTH = 16  # hex digits: 64 bits, so 100 000 tries collide with odds of about 3e-10
_POD_NAME_FALLBACK = "task"
_INTEGER_RE = re.compile(r"-?[0-9]+")


def is_valid_label_value(value: str) -> bool:
    """True if Kubernetes accepts ``value`` as a label value (may be empty)."""
    return len(value) <= MAX_LABEL_VALUE_LENGTH and _LABEL_VALUE_RE.fullmatch(value) is not None


def is_dns1123_label(name: str) -> bool:
    """True if ``name`` is valid where Kubernetes wants a DNS label (namespaces, pod hostnames)."""
    return len(name) <= MAX_DNS1123_LABEL_LENGTH and _DNS1123_LABEL_RE.fullmatch(name) is not None


def is_dns1123_subdomain(name: str) -> bool:
    """True if ``name`` is a valid name for most Kubernetes objects (Secrets, ConfigMaps, ...)."""
    return len(name) <= MAX_DNS1123_SUBDOMAIN_LENGTH and _DNS1123_SUBDOMAIN_RE.fullmatch(name) is not None


def is_qualified_name(key: str) -> bool:
    """True if ``key`` is a valid label or annotation key, e.g. ``team`` or ``app.kubernetes.io/name``."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= MAX_QUALIFIED_NAME_LENGTH and _LABEL_NAME_RE.fullmatch(name) is not None


def is_env_var_name(name: str) -> bool:
    """True if every Kubernetes version accepts ``name`` as a container environment variable name."""
    return _ENV_VAR_NAME_RE.fullmatch(name) is not None


def is_config_key(key: str) -> bool:
    """True if ``key`` is valid as a key of a Secret or ConfigMap (what ``secretKeyRef.key`` names)."""
    return len(key) <= MAX_CONFIG_KEY_LENGTH and _CONFIG_KEY_RE.fullmatch(key) is not None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates``, or empty when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(
    where: str,
    mapping: Mapping[Any, Any],
    valid_keys: Iterable[str],
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` naming the first key of ``mapping`` not in ``valid_keys`` and the likely fix.

    The fix is the closest valid key when one is close (a typo), else the list of valid keys: one of the
    two keeps the message to a line even for long lists such as the V1DeleteOptions arguments.
    """
    valid = sorted(valid_keys)
    for key in mapping:
        if key not in valid:
            fix = did_you_mean(str(key), valid) or f"; valid keys are: {', '.join(valid)}"
            raise error(f"{where} has an unknown key {key!r}{fix}")


def strip_unsafe_kubernetes_special_chars(text: str) -> str:
    """Keep only the alphanumeric characters of ``text``, lowercased (Airflow 1.10 behaviour).

    Like Airflow, this keeps non-ASCII letters and digits ("Ünï" → "ünï"), which Kubernetes names reject;
    :func:`make_safe_pod_id` therefore filters its result down to ASCII.
    """
    return "".join(character.lower() for character in text if character.isalnum())


def make_safe_label_value(value: str) -> str:
    """Turn any string into a valid label value, exactly as Airflow does wherever Airflow's result is valid.

    The value loses every character outside ``[A-Za-z0-9_.-]`` and any leading or trailing ``-``, ``_`` or
    ``.``. If that changed it or it is longer than 63 characters, the result is its first 53 characters,
    ``-`` and the first 9 hex digits of the md5 of the original, so distinct ids keep distinct labels
    (barring a 36-bit hash collision).

    Deviation from Airflow: when nothing alphanumeric survives ("!!!", "日本"), Airflow returns ``-<hash>``,
    which Kubernetes rejects; the bridge returns ``x-<hash>``. In every other case the outputs are identical.
    """
    safe = _NOT_LABEL_CHARACTER_RE.sub("", value).strip(_LABEL_PUNCTUATION)
    if safe == value and len(safe) <= MAX_LABEL_VALUE_LENGTH:
        return safe
    # surrogatepass: a lone surrogate (possible in Python strings, impossible in JSON) must not crash us.
    original = value.encode("utf-8", "surrogatepass")
    digest = hashlib.md5(original, usedforsecurity=False).hexdigest()[:_LABEL_HASH_LENGTH]
    head = safe[: MAX_LABEL_VALUE_LENGTH - _LABEL_HASH_LENGTH - 1] or _HASHED_LABEL_FALLBACK
    return f"{head}-{digest}"


def datetime_to_label_safe_datestring(moment: datetime) -> str:
    """Encode a datetime as a label value: ISO 8601 with ``:`` → ``_`` and ``+`` → ``_plus_`` (Airflow 1.10).

    A negative UTC offset keeps its ``-``, which is already label-safe: ``...T00_00_00-05_00``.
    """
    return moment.isoformat().replace(":", "_").replace("+", "_plus_")


def label_safe_datestring_to_datetime(text: str) -> datetime:
    """Exact inverse of :func:`datetime_to_label_safe_datestring`: same wall time, microseconds, UTC offset.

    ``_plus_`` is restored before the remaining ``_`` become ``:``, which is why negative offsets need no
    special case. A naive datetime comes back naive; any zone comes back as a fixed UTC offset.
    """
    iso_text = text.replace("_plus_", "+").replace("_", ":")
    try:
        return datetime.fromisoformat(iso_text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a label-safe datestring; expected the output of "
            "datetime_to_label_safe_datestring, e.g. '2019-01-01T00_00_00_plus_00_00'"
        ) from None


def _pod_name_part(text: str) -> str:
    """Lowercase ASCII letters and digits only: the characters every position of a DNS label accepts."""
    return "".join(ch for ch in strip_unsafe_kubernetes_special_chars(text) if ch in _POD_NAME_CHARACTERS)


def make_safe_pod_id(safe_dag_id: str, safe_task_id: str, suffix: str) -> str:
    """A valid pod name of at most 63 characters: ``<dag>-<task>`` cut to fit, then ``-<suffix>``.

    The ids are reduced to lowercase ASCII letters and digits (a no-op for already stripped ids); if nothing
    is left of either, the readable part is ``task``. The suffix is what makes the name unique, so it must
    already be lowercase ASCII letters and digits and leave room for at least one readable character.
    """
    if not suffix or not set(suffix) <= _POD_NAME_CHARACTERS or len(suffix) > MAX_POD_NAME_LENGTH - 2:
        raise ValueError(
            f"pod name suffix {suffix!r} must be 1 to {MAX_POD_NAME_LENGTH - 2} lowercase ASCII letters "
            "or digits, e.g. a hex digest"
        )
    room = MAX_POD_NAME_LENGTH - len(suffix) - 1
    readable = "-".join(part for part in (_pod_name_part(safe_dag_id), _pod_name_part(safe_task_id)) if part)
    prefix = readable[:room].rstrip("-") or _POD_NAME_FALLBACK[:room]
    return f"{prefix}-{suffix}"


def create_pod_id(key: TaskKey) -> str:
    """The pod name of one task try: readable dag and task ids plus a 64-bit hash of the whole key.

    The hash covers every field, JSON-encoded so field boundaries stay unambiguous (("a-b", "c") and
    ("a", "b-c") differ), which makes the name deterministic per try and distinct across tries.
    """
    identity = json.dumps(list(key), separators=(",", ":"))  # ensure_ascii: always encodable, even surrogates
    digest = hashlib.sha256(identity.encode("ascii")).hexdigest()[:_POD_NAME_HASH_LENGTH]
    return make_safe_pod_id(key.dag_id, key.task_id, digest)


def task_key_labels(key: TaskKey) -> dict[str, str]:
    """The labels that identify a task try, with the keys and values Airflow's KubernetesExecutor uses.

    As in Airflow, ``map_index`` is present only for a mapped task (``map_index >= 0``): "-1" is not a valid
    label value. :func:`task_key_selector` therefore asks for the label to be absent for an unmapped task.
    """
    labels = {
        DAG_ID_KEY: make_safe_label_value(key.dag_id),
        TASK_ID_KEY: make_safe_label_value(key.task_id),
        RUN_ID_KEY: make_safe_label_value(key.run_id),
        TRY_NUMBER_KEY: make_safe_label_value(str(key.try_number)),
        KUBERNETES_EXECUTOR_LABEL: KUBERNETES_EXECUTOR_LABEL_VALUE,
    }
    if key.map_index >= 0:
        labels[MAP_INDEX_KEY] = make_safe_label_value(str(key.map_index))
    return labels


def task_key_annotations(key: TaskKey) -> dict[str, str]:
    """The raw ids of a task try, held verbatim; ``map_index`` only for a mapped task, as in Airflow."""
    annotations = {
        DAG_ID_KEY: key.dag_id,
        TASK_ID_KEY: key.task_id,
        RUN_ID_KEY: key.run_id,
        TRY_NUMBER_KEY: str(key.try_number),
    }
    if key.map_index >= 0:
        annotations[MAP_INDEX_KEY] = str(key.map_index)
    return annotations


def _required_annotation(annotations: Mapping[str, str], name: str) -> str:
    value = annotations.get(name)
    if not isinstance(value, str) or not value:
        raise TaskKeyError(
            f"pod annotation {name!r} must be a non-empty string, got {value!r}; "
            "only pods created by the bridge (or Airflow's KubernetesExecutor) carry a task key"
        )
    return value


def _integer_annotation(annotations: Mapping[str, str], name: str, minimum: int) -> int:
    text = _required_annotation(annotations, name)
    if _INTEGER_RE.fullmatch(text) is None or int(text) < minimum:
        raise TaskKeyError(f"pod annotation {name!r} must be a decimal integer >= {minimum}, got {text!r}")
    return int(text)


def task_key_from_annotations(annotations: Mapping[str, str] | None) -> TaskKey:
    """Rebuild the exact task key from a pod's annotations; no ``map_index`` means an unmapped task (-1).

    Raises :class:`TaskKeyError` naming the missing or malformed annotation.
    """
    if not isinstance(annotations, Mapping):
        raise TaskKeyError(
            f"pod annotations must be a mapping holding {DAG_ID_KEY!r}, {TASK_ID_KEY!r}, {RUN_ID_KEY!r} and "
            f"{TRY_NUMBER_KEY!r}, got {annotations!r}"
        )
    map_index = _integer_annotation(annotations, MAP_INDEX_KEY, -1) if MAP_INDEX_KEY in annotations else -1
    return TaskKey(
        dag_id=_required_annotation(annotations, DAG_ID_KEY),
        task_id=_required_annotation(annotations, TASK_ID_KEY),
        run_id=_required_annotation(annotations, RUN_ID_KEY),
        try_number=_integer_annotation(annotations, TRY_NUMBER_KEY, 0),
        map_index=map_index,
    )


def task_key_selector(key: TaskKey) -> str:
    """A label selector (``k=v`` terms sorted by key) matching the pods of exactly this try.

    For an unmapped task it includes ``!map_index`` (label absent), so it does not also match the pods of a
    mapped task with the same ids. Labels are hashed when ids are not label-safe, so confirm a match with
    :func:`task_key_from_annotations` if a 36-bit md5 collision matters to the caller.
    """
    terms = {name: f"{name}={value}" for name, value in task_key_labels(key).items()}
    if key.map_index < 0:
        terms[MAP_INDEX_KEY] = f"!{MAP_INDEX_KEY}"
    return ",".join(terms[name] for name in sorted(terms))
