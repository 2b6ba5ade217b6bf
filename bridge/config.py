"""Bridge configuration: one table of options drives parsing, validation, the shipped file and the docs.

Airflow 1.10's ``KubeConfig`` read its options one by one wherever they were needed, so the defaults, the
shipped ``airflow.cfg`` and the documentation drifted apart, and a bad value surfaced as a stack trace in
whichever process touched it first. Here :data:`OPTIONS` is the single source of truth: ``config/kbridge.cfg``
and the reference in ``docs/configuration.md`` are rendered from it (tests compare them byte for byte), and
:func:`load_config` checks *every* option up front and reports all problems in one :class:`ConfigError`.

Precedence, lowest first: the defaults in :data:`OPTIONS`, the INI file (``path`` argument, else
``$KBRIDGE_CONFIG``), then environment variables ``KBRIDGE__<SECTION>__<KEY>``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import socket
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

from bridge.errors import UserInputError
from bridge.naming import (
    CONFIG_KEY_RULE,
    DNS1123_LABEL_RULE,
    DNS1123_SUBDOMAIN_RULE,
    ENV_VAR_NAME_RULE,
    LABEL_VALUE_RULE,
    QUALIFIED_NAME_RULE,
    check_known_keys,
    did_you_mean,
    is_config_key,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_env_var_name,
    is_qualified_name,
    is_valid_label_value,
)
from bridge.pod_template import (
    AFFINITY_KEYS,
    PodTemplateError,
    check_affinity,
    check_tolerations,
    load_pod_template,
)

CONFIG_PATH_ENV = "KBRIDGE_CONFIG"
ENV_PREFIX = "KBRIDGE__"
REDACTED = "<redacted>"
MIN_SIGNING_KEY_LENGTH = 32
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# With the header, one 25-line terminal screen: past this, the remaining problems are only named.
MAX_ERROR_LINES = 24

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.:]*")
_URL_PASSWORD_PARAMETER = re.compile(r"(?i)(^|&)(password=)[^&]*")
# Plain environment variables named like these are refused: their values belong in a Secret.
# Whole words of a variable name (split at "_", "-", "."), so TOKENIZER_MODEL is fine but API_TOKEN is not.
_SECRET_NAME_WORDS = frozenset({"PASSWORD", "PASSWD", "SECRET", "TOKEN", "APIKEY", "CREDENTIALS"})
_NAME_WORD_SEPARATOR = re.compile(r"[-_.]+")


class Problem(NamedTuple):
    """One thing wrong with the configuration: what to fix (an option or section) and the whole story."""

    subject: str  # e.g. "[kubernetes] namespace"
    message: str  # one line: the subject, the bad value (redacted if secret) and what is expected


class ConfigError(UserInputError):
    """The configuration has problems; ``problems`` holds one line per problem, naming the option.

    The message fits one terminal screen (:data:`MAX_ERROR_LINES` lines under its header): problems are
    listed one per line while they fit; past that, the last lines name the options of the rest, and when even
    the names do not fit, the final line says how many more options were left unnamed.
    """

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = [problem.message for problem in problems]
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        listing = "\n".join(_screenful(problems))
        super().__init__(f"invalid configuration ({source}), {count}:\n{listing}")


def _screenful(problems: Sequence[Problem]) -> list[str]:
    lines = [f"  - {problem.message}" for problem in problems]
    if len(lines) <= MAX_ERROR_LINES:
        return lines
    for shown in range(MAX_ERROR_LINES - 1, 0, -1):
        overflow = _overflow(problems[shown:], named=len(problems) - shown)
        if len(overflow) <= MAX_ERROR_LINES - shown:
            return lines[:shown] + overflow
    # Not even the names of the rest fit: name as many as fit and count the others. A subject takes at
    # least 5 characters with its separator, which bounds how many names can possibly fit.
    rest = problems[1:]
    named = min(len(rest), (MAX_ERROR_LINES - 1) * 100 // 5)
    while len(overflow := _overflow(rest, named)) > MAX_ERROR_LINES - 1:
        named -= 1  # named = 0 gives a single line, so this ends
    return lines[:1] + overflow


def _overflow(rest: Sequence[Problem], named: int) -> list[str]:
    """``rest`` as wrapped lines naming the options of its first ``named`` problems, counting the others."""
    subjects = [problem.subject for problem in rest[:named]]
    if named < len(rest):
        subjects.append(f"… and {len(rest) - named} more not named")
    summary = f"  - and {len(rest)} more problems, in: " + ", ".join(subjects)
    return textwrap.wrap(summary, width=100, subsequent_indent="    ")


# --- value kinds ------------------------------------------------------------------------------------------
# A kind turns the text of one option into a typed value, or raises ValueError saying what was expected.


@dataclass(frozen=True)
class Kind:
    description: str
    parse: Callable[[str], Any]
    is_json: bool = False  # the option's text is JSON, so its value is printed back as JSON


def _expect(condition: bool, expected: str) -> None:
    if not condition:
        raise ValueError(expected)


def _parse_text(raw: str) -> str:
    return raw


def _parse_boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def integer(minimum: int, maximum: int, *, optional: bool = False) -> Kind:
    description = f"integer {minimum}..{maximum}" + (", or empty for unset" if optional else "")

    def parse(raw: str) -> int | None:
        if optional and not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected an {description}") from None
        _expect(minimum <= value <= maximum, f"expected an {description}")
        return value

    return Kind(description, parse)


def choice(*allowed: str, optional: bool = False) -> Kind:
    description = "one of " + ", ".join(allowed) + (", or empty for unset" if optional else "")

    def parse(raw: str) -> str:
        _expect(raw in allowed or (optional and not raw), f"expected {description} (case matters)")
        return raw

    return Kind(description, parse)


def _parse_dns_label(raw: str) -> str:
    _expect(is_dns1123_label(raw), f"expected a DNS-1123 label: {DNS1123_LABEL_RULE}")
    return raw


def _parse_optional_dns_subdomain(raw: str) -> str | None:
    if not raw:
        return None
    _expect(
        is_dns1123_subdomain(raw), f"expected a Kubernetes object name ({DNS1123_SUBDOMAIN_RULE}), or empty"
    )
    return raw


def existing_file(path: str | os.PathLike[str]) -> Path | None:
    """``path`` with ``~`` expanded if it names an existing file, else None (never raises)."""
    try:
        expanded = Path(path).expanduser()
    except RuntimeError:  # "~user" for an unknown user, or no home directory
        return None
    return expanded if expanded.is_file() else None


def _parse_optional_path(raw: str) -> Path | None:
    if not raw:
        return None
    path = existing_file(raw)
    _expect(path is not None, "expected the path of an existing, readable file, or empty")
    return path


def _parse_csv(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _parse_secret_names(raw: str) -> list[str]:
    names = _parse_csv(raw)
    bad = [name for name in names if not is_dns1123_subdomain(name)]
    _expect(not bad, f"expected comma-separated Secret names ({DNS1123_SUBDOMAIN_RULE}); bad: {bad}")
    return names


def _reject_placeholder(raw: str) -> None:
    # `kbridge config` prints secrets as the placeholder: loading that output back must not use it as one.
    _expect(
        REDACTED not in raw,
        f"{REDACTED} is the placeholder `kbridge config` prints instead of a secret; put the real one back",
    )


def _parse_secret(raw: str) -> str:
    _reject_placeholder(raw)
    return raw


def _parse_redis_url(raw: str) -> str:
    _reject_placeholder(raw)
    try:
        scheme = urlsplit(raw).scheme
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        scheme = ""
    _expect(
        scheme in ("redis", "rediss", "unix"),
        "expected a redis://, rediss:// (TLS) or unix:// URL, e.g. redis://redis.example:6380/0",
    )
    return raw


def _parse_queue_name(raw: str) -> str:
    _expect(
        _QUEUE_NAME.fullmatch(raw) is not None, "expected a name of letters, digits, '-', '_', '.' or ':'"
    )
    return raw


def _parse_key_prefix(raw: str) -> str:
    # The prefix doubles as the value of the pod label that tells bridges sharing a namespace apart.
    _expect(bool(raw) and is_valid_label_value(raw), f"expected a non-empty label value: {LABEL_VALUE_RULE}")
    return raw


def _json(raw: str, empty: object) -> Any:
    if not raw:
        return empty
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected JSON ({exc})") from None


def _parse_json_object(raw: str) -> dict[str, Any]:
    value = _json(raw, {})
    _expect(isinstance(value, dict), f"expected a JSON object, got JSON {type(value).__name__}")
    return dict(value)


def _parse_request_args(raw: str) -> dict[str, Any]:
    """Keyword arguments for every API call. A ``_request_timeout`` list becomes a tuple, as in Airflow:
    the client reads a 2-tuple as (connect, read) timeouts but silently ignores a list."""
    value = _parse_json_object(raw)
    if "_request_timeout" in value:
        timeout = value["_request_timeout"]
        seconds = timeout if isinstance(timeout, list) else [timeout]
        _expect(
            len(seconds) == (2 if isinstance(timeout, list) else 1)
            and all(isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in seconds),
            f"expected _request_timeout to be seconds > 0 or [connect, read] seconds, got {timeout!r}",
        )
        value["_request_timeout"] = tuple(timeout) if isinstance(timeout, list) else timeout
    return value


def _delete_option_keys() -> list[str]:
    from kubernetes.client import V1DeleteOptions  # heavy import, only when the option is set

    return sorted(V1DeleteOptions.openapi_types)


def _parse_delete_options(raw: str) -> dict[str, Any]:
    value = _parse_json_object(raw)
    if value:
        check_known_keys("V1DeleteOptions arguments (snake_case)", value, _delete_option_keys())
    return value


TEXT = Kind("string", _parse_text)
SECRET = Kind("string", _parse_secret)
BOOLEAN = Kind("true or false", _parse_boolean)
DNS_LABEL = Kind("DNS-1123 label", _parse_dns_label)
OBJECT_NAME = Kind("Kubernetes object name, or empty", _parse_optional_dns_subdomain)
FILE_PATH = Kind("file path, or empty", _parse_optional_path)
CSV = Kind("comma-separated list", _parse_csv)
SECRET_NAMES = Kind("comma-separated Secret names", _parse_secret_names)
REDIS_URL = Kind("redis://, rediss:// or unix:// URL", _parse_redis_url)
QUEUE_NAME = Kind("name", _parse_queue_name)
KEY_PREFIX = Kind("label value (1-63 chars)", _parse_key_prefix)
AFFINITY = Kind(
    "JSON object with keys among " + ", ".join(AFFINITY_KEYS),
    lambda raw: check_affinity(_json(raw, {})),
    is_json=True,
)
TOLERATIONS = Kind(
    "JSON list of toleration objects", lambda raw: check_tolerations(_json(raw, [])), is_json=True
)
DELETE_OPTIONS = Kind("JSON object of V1DeleteOptions arguments", _parse_delete_options, is_json=True)
REQUEST_ARGS = Kind("JSON object of API call arguments", _parse_request_args, is_json=True)
UID = integer(0, 2**31 - 1, optional=True)
PULL_POLICY = choice(*IMAGE_PULL_POLICIES, optional=True)


# --- the table -------------------------------------------------------------------------------------------


# Who reads an option: the docs list it, so an operator knows which processes need a restart after a change.
POD_BUILDER = "pod builder"
DISPATCHER = "dispatcher"
WATCHER = "watcher"
EXECUTOR = "executor"
KUBE_CLIENT = (DISPATCHER, WATCHER)  # the options that configure the Kubernetes API client
EVERY_PROCESS = (EXECUTOR, DISPATCHER, WATCHER)


@dataclass(frozen=True)
class Option:
    """One fixed option; its parsed value becomes the ``KubeConfig`` attribute of the same name as ``key``."""

    section: str
    key: str
    kind: Kind
    default: str
    help: str
    read_by: tuple[str, ...]
    secret: bool = False

    def shown(self, text: str) -> str:
        """``text`` as it may be printed or logged: a secret is redacted, a URL loses its password."""
        if self.secret:
            return REDACTED if text else ""
        return redact_url(text) if self.kind is REDIS_URL else text


CORE, KUBERNETES, BRIDGE = "core", "kubernetes", "bridge"
# Airflow's list plus ImagePullBackOff: a watcher that re-lists after the ErrImagePull event may only see
# the back-off, and should not then wait out the pending timeout.
FATAL_PENDING_REASONS = (
    "CreateContainerConfigError,ErrImagePull,ImagePullBackOff,CreateContainerError,ImageInspectError,"
    "InvalidImageName"
)

OPTIONS: tuple[Option, ...] = (
    Option(CORE, "log_level", choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO",
           "Log level of the bridge's own processes (executor, dispatchers, watcher).", EVERY_PROCESS),
    Option(KUBERNETES, "namespace", DNS_LABEL, "default",
           "Namespace the worker pods are created in and watched in.", (POD_BUILDER, *KUBE_CLIENT)),
    Option(KUBERNETES, "worker_container_repository", TEXT, "",
           "Worker image repository; with worker_container_tag it overrides the template's image.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "worker_container_tag", TEXT, "",
           "Image tag of the worker container; set together with worker_container_repository.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "worker_container_image_pull_policy", PULL_POLICY, "",
           "imagePullPolicy of the worker container; empty keeps the template's, else Kubernetes' default.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "pod_template_file", FILE_PATH, "",
           "YAML pod used as the base of every worker pod (a task's executor_config may name its own).",
           (POD_BUILDER,)),
    Option(KUBERNETES, "worker_service_account_name", OBJECT_NAME, "",
           "Service account of the worker pods; empty keeps the namespace default.", (POD_BUILDER,)),
    Option(KUBERNETES, "image_pull_secrets", SECRET_NAMES, "",
           "Secrets used to pull the worker image, comma-separated.", (POD_BUILDER,)),
    Option(KUBERNETES, "run_as_user", UID, "", "Pod securityContext.runAsUser; empty leaves it unset.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "run_as_group", UID, "", "Pod securityContext.runAsGroup; empty leaves it unset.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "fs_group", UID, "", "Pod securityContext.fsGroup; empty leaves it unset.",
           (POD_BUILDER,)),
    Option(KUBERNETES, "affinity", AFFINITY, "{}", "Pod affinity (API JSON, camelCase).", (POD_BUILDER,)),
    Option(KUBERNETES, "tolerations", TOLERATIONS, "[]",
           "Pod tolerations (API JSON list, camelCase).", (POD_BUILDER,)),
    Option(KUBERNETES, "delete_worker_pods", BOOLEAN, "True",
           "Delete a worker pod once its outcome is recorded; if False it is kept for inspection.",
           (WATCHER,)),
    Option(KUBERNETES, "delete_worker_pods_on_failure", BOOLEAN, "False",
           "With delete_worker_pods, also delete pods of failed tasks (False keeps them for debugging).",
           (WATCHER,)),
    Option(KUBERNETES, "worker_pods_pending_timeout", integer(0, 7 * 24 * 3600), "300",
           "Seconds a pod may stay Pending before its task is failed; 0 waits forever.", (WATCHER,)),
    Option(KUBERNETES, "worker_pod_pending_fatal_container_state_reasons", CSV, FATAL_PENDING_REASONS,
           "Container waiting reasons that fail a Pending pod at once instead of waiting for the timeout.",
           (WATCHER,)),
    Option(KUBERNETES, "task_publish_max_retries", integer(0, 100), "5",
           "Retries of a pod create after 429, 5xx or a connection error, within dispatch_deadline_seconds.",
           (DISPATCHER,)),
    Option(KUBERNETES, "in_cluster", BOOLEAN, "True",
           "Use the pod's service account to reach the API; False uses config_file and cluster_context.",
           KUBE_CLIENT),
    Option(KUBERNETES, "cluster_context", TEXT, "", "kubeconfig context to use when in_cluster is False.",
           KUBE_CLIENT),
    Option(KUBERNETES, "config_file", FILE_PATH, "", "kubeconfig file to use when in_cluster is False.",
           KUBE_CLIENT),
    Option(KUBERNETES, "verify_ssl", BOOLEAN, "True", "Verify the API server's TLS certificate.",
           KUBE_CLIENT),
    Option(KUBERNETES, "ssl_ca_cert", FILE_PATH, "", "CA bundle for the API server's certificate.",
           KUBE_CLIENT),
    Option(KUBERNETES, "kube_client_request_args", REQUEST_ARGS, "{}",
           'Extra keyword arguments for every API call, e.g. {"_request_timeout": [5, 60]}.', KUBE_CLIENT),
    Option(KUBERNETES, "delete_option_kwargs", DELETE_OPTIONS, "{}",
           'V1DeleteOptions arguments for pod deletion, e.g. {"grace_period_seconds": 10}.',
           (DISPATCHER, WATCHER)),
    Option(KUBERNETES, "request_timeout_seconds", integer(1, 3600), "30",
           "Client socket timeout of each API call and watch read, so a dropped connection is noticed.",
           KUBE_CLIENT),
    Option(KUBERNETES, "watch_timeout_seconds", integer(1, 86400), "3600",
           "Longest life of one pod watch request (the watcher also ends each after a 5 s sweep interval), "
           "then it resumes from the last resourceVersion.",
           (WATCHER,)),
    Option(KUBERNETES, "enable_tcp_keepalive", BOOLEAN, "True",
           "TCP keepalive on API connections, so idle watches survive load balancers and firewalls.",
           KUBE_CLIENT),
    Option(KUBERNETES, "tcp_keep_idle", integer(1, 32767), "120",
           "Idle seconds before the first keepalive probe.", KUBE_CLIENT),
    Option(KUBERNETES, "tcp_keep_intvl", integer(1, 32767), "30", "Seconds between keepalive probes.",
           KUBE_CLIENT),
    Option(KUBERNETES, "tcp_keep_cnt", integer(1, 127), "6",
           "Unanswered probes before the connection is dropped.", KUBE_CLIENT),
    Option(BRIDGE, "redis_url", REDIS_URL, "redis://localhost:6379/0",
           "Redis holding the queue and the result stream; a password in it is redacted in output.",
           EVERY_PROCESS),
    Option(BRIDGE, "queue_name", QUEUE_NAME, "kbridge", "rq queue the executor enqueues pod launches on.",
           (EXECUTOR, DISPATCHER)),
    Option(BRIDGE, "key_prefix", KEY_PREFIX, "kbridge",
           "Prefix of the Redis keys and value of the pod label kbridge/instance; unique per bridge.",
           (POD_BUILDER, *EVERY_PROCESS)),
    Option(BRIDGE, "result_stream", TEXT, "",
           "Redis stream of pod outcomes; empty means <key_prefix>:results.", (EXECUTOR, WATCHER)),
    Option(BRIDGE, "signing_key", SECRET, "",
           "Secret that signs queued messages; prefer signing_key_file or $KBRIDGE__BRIDGE__SIGNING_KEY.",
           (EXECUTOR, DISPATCHER), secret=True),
    Option(BRIDGE, "signing_key_file", FILE_PATH, "", "File whose content (stripped) is the signing key.",
           (EXECUTOR, DISPATCHER)),
    Option(BRIDGE, "consumer_group", QUEUE_NAME, "executor",
           "Consumer group the executor reads the result stream with.", (EXECUTOR,)),
    Option(BRIDGE, "consumer_name", TEXT, "",
           "Executor's consumer name, stable across restarts; empty means the host name.", (EXECUTOR,)),
    Option(BRIDGE, "result_batch_size", integer(1, 100_000), "500",
           "Outcomes read from the result stream per round trip in sync().", (EXECUTOR,)),
    Option(BRIDGE, "job_timeout_seconds", integer(10, 3600), "120",
           "rq job timeout of one pod launch; above dispatch_deadline_seconds.", (EXECUTOR, DISPATCHER)),
    Option(BRIDGE, "dispatch_deadline_seconds", integer(1, 3600), "60",
           "Time budget of one dispatcher job (API calls, retries, Redis waits); a pod create still failing "
           "by then fails the task.", (DISPATCHER,)),
    Option(BRIDGE, "dispatcher_lease_seconds", integer(2, 600), "10",
           "A dispatcher silent this long is dead: its jobs go back to the queue.", (DISPATCHER,)),
    Option(BRIDGE, "watcher_lease_seconds", integer(2, 600), "15",
           "Leader lease of the watcher of a namespace; a standby takes over within it.", (WATCHER,)),
    Option(BRIDGE, "record_ttl_seconds", integer(60, 90 * 24 * 3600), "604800",
           "How long a task try's record and a failed rq job are kept.", EVERY_PROCESS),
    Option(BRIDGE, "launch_secret_ttl_seconds", integer(1, 7 * 24 * 3600), "3600",
           "The most a launch secret (execute_async's secret_env values) may wait in Redis for a "
           "dispatcher (the executor sets it on the values it writes); a try still queued after that is "
           "failed with LaunchSecretExpired.",
           (EXECUTOR,)),
)  # fmt: skip


class SecretRef(NamedTuple):
    """An environment variable filled from one key of a Kubernetes Secret, by reference."""

    secret_name: str
    key: str


@dataclass(frozen=True)
class FreeFormSection:
    """A section whose keys the user chooses; each entry is checked by ``parse(key, value)``."""

    name: str
    key_rule: str
    value_rule: str
    example: str
    help: str
    parse: Callable[[str, str], Any]


def _label_entry(key: str, value: str) -> str:
    _expect(is_qualified_name(key), f"expected a label key {QUALIFIED_NAME_RULE}")
    _expect(is_valid_label_value(value), f"expected a label value: {LABEL_VALUE_RULE}")
    return value


def _annotation_entry(key: str, value: str) -> str:
    _expect(is_qualified_name(key), f"expected an annotation key {QUALIFIED_NAME_RULE}")
    return value


def _env_name(key: str) -> None:
    _expect(is_env_var_name(key), f"expected an environment variable name: {ENV_VAR_NAME_RULE}")


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return (
        not _SECRET_NAME_WORDS.isdisjoint(_NAME_WORD_SEPARATOR.split(upper))
        or upper.endswith("_CONN")
        or upper.startswith("AIRFLOW_CONN_")  # an Airflow connection URI, credentials included
    )


def _env_entry(key: str, value: str) -> str:
    _env_name(key)
    _expect(
        not _looks_secret(key),
        f"a variable named like a secret must not be a plain value (pod specs are readable by anyone who "
        f"can list pods); put it in a Kubernetes Secret and move it to [kubernetes_secrets] as "
        f"{key} = secret_name=key",
    )
    return value


def _secret_entry(key: str, value: str) -> SecretRef:
    _env_name(key)
    secret_name, separator, data_key = value.partition("=")
    _expect(
        bool(separator) and is_dns1123_subdomain(secret_name) and is_config_key(data_key),
        f"expected secret_name=key like airflow-db=sql_alchemy_conn: a lowercase Secret name, '=', "
        f"a key of {CONFIG_KEY_RULE}",
    )
    return SecretRef(secret_name, data_key)


FREE_FORM_SECTIONS: tuple[FreeFormSection, ...] = (
    FreeFormSection(
        "kubernetes_labels", "label key", "label value", "team = data-platform",
        "Labels added to every worker pod.", _label_entry,
    ),
    FreeFormSection(
        "kubernetes_annotations", "annotation key", "any text", "example.com/owner = data team",
        "Annotations added to every worker pod.", _annotation_entry,
    ),
    FreeFormSection(
        "kubernetes_node_selectors", "node label key", "label value", "disktype = ssd",
        "nodeSelector of every worker pod.", _label_entry,
    ),
    FreeFormSection(
        "kubernetes_environment_variables", "variable name", "any text", "AIRFLOW__CORE__DEBUG = False",
        "Plain environment variables of the worker container. Names with a word PASSWORD, SECRET, "
        "TOKEN, APIKEY or CREDENTIALS, or ending in _CONN, are refused: put those in [kubernetes_secrets].",
        _env_entry,
    ),
    FreeFormSection(
        "kubernetes_secrets", "variable name", "secret_name=key", "AIRFLOW__API__SECRET_KEY = airflow=key",
        "Variables filled from a key of a Kubernetes Secret, by reference (secretKeyRef).", _secret_entry,
    ),
)  # fmt: skip

_FIXED_SECTIONS = (CORE, KUBERNETES, BRIDGE)
SECTIONS = (*_FIXED_SECTIONS, *(section.name for section in FREE_FORM_SECTIONS))
_OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


def option_section(key: str) -> str | None:
    """The fixed section an option key belongs to (keys are unique across sections), or None."""
    option = _OPTIONS_BY_KEY.get(key.lower())
    return None if option is None else option.section


# --- messages -------------------------------------------------------------------------------------------


def _shown(section: str, key: str, text: str) -> str:
    """An option's text as it may be printed: redacted if the option is secret or a URL with a password.

    Any case, and even a misspelt section, counts: ``{"Bridg": {"SIGNING_KEY": ...}}`` is still a key.
    """
    free_form = section.lower() in (free_form.name for free_form in FREE_FORM_SECTIONS)
    option = None if free_form else _OPTIONS_BY_KEY.get(key.lower())
    return option.shown(text) if option is not None else text


def _shorten(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


# --- loading ----------------------------------------------------------------------------------------------

_SOURCE_DEFAULTS = "built-in defaults"


class _RawSettings:
    """The text of every option, layered defaults -> file -> environment, plus where each value came from.

    ``source`` is what the error header names (the file, usually); other origins (environment variables)
    are named on the lines of the problems they cause.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
        self.origins: dict[tuple[str, str], str] = {}
        self.problems: list[Problem] = []
        for option in OPTIONS:
            self.values[option.section][option.key] = option.default

    def subject(self, section: str, key: str | None = None, origin: str | None = None) -> str:
        """How a problem names its option: ``[section] key``, plus its origin if not the header's."""
        origin = origin or self.origins.get((section, key or ""))
        named = f"[{section}]" + (f" {key}" if key is not None else "")
        return named + (f" (from {origin})" if origin and origin != self.source else "")

    def problem(self, subject: str, detail: str) -> None:
        self.problems.append(Problem(subject, f"{subject}: {detail}"))

    def known_section(self, section: str, origin: str) -> bool:
        if section.lower() in self.values:
            return True
        suggestion = did_you_mean(section.lower(), SECTIONS)
        self.problem(self.subject(section, origin=origin), f"unknown section{suggestion}")
        return False

    def set(self, section: str, key: str, value: str, origin: str) -> None:
        """Store one value given with any section case and, for fixed sections, any key case."""
        if not self.known_section(section, origin):
            return
        section = section.lower()
        if section in _FIXED_SECTIONS:
            known = [option.key for option in OPTIONS if option.section == section]
            if key.lower() not in known:
                suggestion = did_you_mean(key.lower(), known)
                self.problem(self.subject(section, key, origin), f"unknown option{suggestion}")
                return
            key = key.lower()
        self.values[section][key] = value
        self.origins[(section, key)] = origin

    def read_file(self, path: Path) -> None:
        # interpolation=None: values may contain '%'. optionxform=str: label keys and variable names are
        # case-sensitive. A never-used default_section stops [DEFAULT] from leaking into every section.
        parser = configparser.ConfigParser(interpolation=None, default_section="\0no default section")
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        where = str(path)
        try:
            with path.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(where, f"cannot be read ({exc}); it must be a readable UTF-8 INI file")
            return
        # The parser's own messages quote the offending line, which may hold a secret: give line numbers.
        except configparser.MissingSectionHeaderError as exc:
            self.problem(where, f"line {exc.lineno}: expected a [section] header before the first option")
            return
        except configparser.ParsingError as exc:
            numbers = ", ".join(str(number) for number, _ in exc.errors)
            self.problem(where, f"line {numbers}: expected 'key = value', a [section] header or a # comment")
            return
        except configparser.Error as exc:  # a duplicate section or option: names, never values
            self.problem(where, f"is not a valid INI file: {exc.message}".replace("\n", " "))
            return
        for section in parser.sections():
            if self.known_section(section, where):
                for key, value in parser.items(section):
                    self.set(section, key, value.strip(), where)

    def read_environment(self, environ: Mapping[str, str]) -> None:
        for name, value in sorted(environ.items()):
            if not name.upper().startswith(ENV_PREFIX):
                continue
            section, separator, key = name[len(ENV_PREFIX) :].partition("__")
            if not separator or not key:
                self.problem(f"${name}", f"expected {ENV_PREFIX}<SECTION>__<KEY>")
                continue
            self.set(section, key, value.strip(), f"${name}")


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    overrides_origin: str = "overrides",
) -> KubeConfig:
    """Read defaults, then the file (``path``, else ``$KBRIDGE_CONFIG``), then ``KBRIDGE__*`` variables,
    then ``overrides`` (``{section: {key: text}}``, e.g. from Airflow's configuration; problems in them are
    reported as coming from ``overrides_origin``).

    Raises :class:`ConfigError` listing every problem (missing file, unknown sections or keys, bad values).
    """
    environ = os.environ if environ is None else environ
    given_by = "the config path"
    if path is None and environ.get(CONFIG_PATH_ENV):
        path, given_by = environ[CONFIG_PATH_ENV], f"${CONFIG_PATH_ENV}"
    raw = _RawSettings(_SOURCE_DEFAULTS if path is None else os.fspath(path))
    if path is not None:
        file_path = existing_file(path)
        if file_path is None:
            detail = (
                f"{os.fspath(path)!r} is not an existing file; fix the path, or unset it to use the defaults"
            )
            raise ConfigError(raw.source, [Problem(given_by, f"{given_by} {detail}")])
        raw.read_file(file_path)
    raw.read_environment(environ)
    for section, entries in (overrides or {}).items():
        for key, text in entries.items():
            raw.set(section, key, text, overrides_origin)
    return KubeConfig._from_raw(raw)


# --- the parsed configuration --------------------------------------------------------------------------


class KubeConfig:
    """Typed, validated settings; attributes are named after the options (:data:`OPTIONS`) and sections."""

    core_section: ClassVar[str] = CORE
    kubernetes_section: ClassVar[str] = KUBERNETES
    bridge_section: ClassVar[str] = BRIDGE

    # [core]
    log_level: str
    # [kubernetes]
    namespace: str
    worker_container_repository: str
    worker_container_tag: str
    worker_container_image_pull_policy: str
    pod_template_file: Path | None
    worker_service_account_name: str | None
    image_pull_secrets: list[str]
    run_as_user: int | None
    run_as_group: int | None
    fs_group: int | None
    affinity: dict[str, Any]
    tolerations: list[dict[str, Any]]
    delete_worker_pods: bool
    delete_worker_pods_on_failure: bool
    worker_pods_pending_timeout: int
    worker_pod_pending_fatal_container_state_reasons: list[str]
    task_publish_max_retries: int
    in_cluster: bool
    cluster_context: str
    config_file: Path | None
    verify_ssl: bool
    ssl_ca_cert: Path | None
    kube_client_request_args: dict[str, Any]
    delete_option_kwargs: dict[str, Any]
    request_timeout_seconds: int
    watch_timeout_seconds: int
    enable_tcp_keepalive: bool
    tcp_keep_idle: int
    tcp_keep_intvl: int
    tcp_keep_cnt: int
    # [bridge]
    redis_url: str
    queue_name: str
    key_prefix: str
    result_stream: str
    signing_key: str | None
    signing_key_file: Path | None
    consumer_group: str
    consumer_name: str
    result_batch_size: int
    job_timeout_seconds: int
    dispatch_deadline_seconds: int
    dispatcher_lease_seconds: int
    watcher_lease_seconds: int
    record_ttl_seconds: int
    launch_secret_ttl_seconds: int
    # free-form sections
    kubernetes_labels: dict[str, str]
    kubernetes_annotations: dict[str, str]
    kubernetes_node_selectors: dict[str, str]
    kubernetes_environment_variables: dict[str, str]
    kubernetes_secrets: dict[str, SecretRef]
    # derived
    pod_template: dict[str, Any] | None

    def __init__(
        self, settings: Mapping[str, Mapping[str, str]] | None = None, *, source: str = "settings"
    ) -> None:
        """Parse and validate option texts given as ``{section: {key: text}}`` on top of the defaults.

        Handy in tests and embedding code; :func:`load_config` is the usual way in (file + environment).
        """
        raw = _RawSettings(source)
        for section, entries in (settings or {}).items():
            for key, text in entries.items():
                if isinstance(text, str):
                    raw.set(section, key, text, source)
                else:  # as in a file, every value is text: 50000 must be given as "50000"
                    shown = _shown(section, key, str(text))
                    raw.problem(
                        raw.subject(section, key),
                        f"expected text, got {type(text).__name__} {shown}; quote it: {_shorten(shown)}",
                    )
        self._load(raw)

    @classmethod
    def _from_raw(cls, raw: _RawSettings) -> KubeConfig:
        config = cls.__new__(cls)
        config._load(raw)
        return config

    def _load(self, raw: _RawSettings) -> None:
        self._raw = raw
        self.source = raw.source
        self._parse_problems = list(raw.problems)
        for option in OPTIONS:
            setattr(self, option.key, self._parse(option))
        for free_form in FREE_FORM_SECTIONS:
            setattr(self, free_form.name, self._parse_free_form(free_form))
        self._derive()
        self._validate()

    def _problem(self, section: str, key: str, text: str, expected: str) -> Problem:
        subject = self._raw.subject(section, key)
        return Problem(subject, f"{subject} = {_shorten(_shown(section, key, text))}: {expected}")

    def _parse(self, option: Option) -> Any:
        text = self._raw.values[option.section][option.key]
        try:
            return option.kind.parse(text)
        except ValueError as exc:
            self._parse_problems.append(self._problem(option.section, option.key, text, str(exc)))
            return option.kind.parse(option.default)  # keep going, so every problem is reported at once

    def _parse_free_form(self, free_form: FreeFormSection) -> dict[str, Any]:
        parsed = {}
        for key, text in self._raw.values[free_form.name].items():
            try:
                parsed[key] = free_form.parse(key, text)
            except ValueError as exc:
                self._parse_problems.append(self._problem(free_form.name, key, text, str(exc)))
        return parsed

    def _derive(self) -> None:
        """Values computed from options: the pod template's content, the result stream, the signing key."""
        self.pod_template = None
        if self.pod_template_file is not None:
            try:
                self.pod_template = load_pod_template(
                    self.pod_template_file, "[kubernetes] pod_template_file"
                )
            except PodTemplateError as exc:
                self._parse_problems.append(
                    Problem(self._raw.subject(KUBERNETES, "pod_template_file"), str(exc))
                )
        self.result_stream = self.result_stream or f"{self.key_prefix}:results"
        self.consumer_name = self.consumer_name or socket.gethostname()
        if not self.signing_key and self.signing_key_file is not None:
            self.signing_key = self._read_signing_key(self.signing_key_file)
        self.signing_key = self.signing_key or None

    def _read_signing_key(self, path: Path) -> str | None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = self._problem(BRIDGE, "signing_key_file", str(path), f"cannot be read ({exc})")
            self._parse_problems.append(problem)
            return None
        if not key:
            self._parse_problems.append(
                self._problem(BRIDGE, "signing_key_file", str(path), "the file is empty")
            )
        return key or None

    def _validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem: bad values first, then cross-option checks.

        It only checks, so calling it again (as Airflow's ``KubeConfig`` allows) changes nothing.
        """
        problems = [*self._parse_problems, *self._cross_option_problems()]
        if problems:
            raise ConfigError(self.source, problems)

    def _cross_option_problems(self) -> Iterator[Problem]:
        # No image at all is fine: a task's executor_config may bring one, and the pod builder fails just
        # that task, naming the options to set, when no image resolves.
        repository, tag = self.worker_container_repository, self.worker_container_tag
        if bool(repository) != bool(tag):
            expected = "set worker_container_repository and worker_container_tag together (or neither)"
            yield self._problem(KUBERNETES, "worker_container_tag", tag, expected)
        if self.in_cluster:
            for key in ("config_file", "cluster_context"):
                if getattr(self, key):
                    expected = (
                        "ignored while in_cluster = True; set in_cluster = False to use it, or clear it"
                    )
                    yield self._problem(KUBERNETES, key, self._raw.values[KUBERNETES][key], expected)
        key_text = self._raw.values[BRIDGE]["signing_key"]
        if key_text and self.signing_key_file is not None:
            yield self._problem(
                BRIDGE, "signing_key_file", str(self.signing_key_file), "signing_key is set too; keep one"
            )
        if self.dispatch_deadline_seconds >= self.job_timeout_seconds:
            deadline, timeout = self.dispatch_deadline_seconds, self.job_timeout_seconds
            expected = f"must be below job_timeout_seconds ({timeout}), so rq never kills a retrying launch"
            yield self._problem(BRIDGE, "dispatch_deadline_seconds", str(deadline), expected)
        if self.signing_key is not None and len(self.signing_key) < MIN_SIGNING_KEY_LENGTH:
            expected = f"expected at least {MIN_SIGNING_KEY_LENGTH} characters, e.g. `openssl rand -hex 32`"
            yield self._problem(BRIDGE, "signing_key" if key_text else "signing_key_file", REDACTED, expected)

    def _get_security_context_val(self, scontext: str) -> int | None:
        """The configured value of run_as_user, run_as_group or fs_group.

        It exists for compatibility with Airflow 1.10's ``KubeConfig``, whose callers use this name.
        """
        value: int | None = getattr(self, scontext)
        return value

    @property
    def kube_image(self) -> str | None:
        """``repository:tag`` when both are configured, else None (the pod template supplies the image)."""
        if self.worker_container_repository and self.worker_container_tag:
            return f"{self.worker_container_repository}:{self.worker_container_tag}"
        return None

    def security_context(self) -> dict[str, int]:
        """The pod-level securityContext (API JSON) from the configured ids; empty if none is set."""
        fields = {"runAsUser": "run_as_user", "runAsGroup": "run_as_group", "fsGroup": "fs_group"}
        values = {api: self._get_security_context_val(option) for api, option in fields.items()}
        return {api: value for api, value in values.items() if value is not None}

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The effective settings as JSON-ready values, with secrets redacted, for ``kbridge config``."""
        settings: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for option in OPTIONS:
            value = getattr(self, option.key)
            if isinstance(value, Path):
                value = str(value)
            elif option.secret:
                value = option.shown(value or "")
            elif isinstance(value, str):
                value = option.shown(value)
            settings[option.section][option.key] = value
        for free_form in FREE_FORM_SECTIONS:
            entries = getattr(self, free_form.name).items()
            settings[free_form.name] = {
                key: f"{value.secret_name}={value.key}" if isinstance(value, SecretRef) else value
                for key, value in entries
            }
        return settings

    def as_ini(self) -> str:
        """The effective settings as an INI file that loads back to them, for ``kbridge config``.

        Secrets are printed as :data:`REDACTED`, which fails to load with a message saying to put the real
        secret back, so the output can never silently carry a placeholder as a password or key.
        """
        lines = [f"# Effective settings from {self.source}; secrets are shown as {REDACTED}."]
        for section in _FIXED_SECTIONS:
            lines += ["", f"[{section}]"]
            for option in (option for option in OPTIONS if option.section == section):
                if option.secret:  # as given, not as derived: a key read from a file stays in that file
                    text = option.shown(self._raw.values[section][option.key])
                else:
                    text = _option_text(option, getattr(self, option.key))
                lines.append(f"{option.key} = {text}".rstrip())
        for free_form in FREE_FORM_SECTIONS:
            lines += ["", f"[{free_form.name}]"]
            for key, value in getattr(self, free_form.name).items():
                text = f"{value.secret_name}={value.key}" if isinstance(value, SecretRef) else value
                lines.append(f"{key} = {text}".rstrip())
        return "\n".join(lines) + "\n"


def _option_text(option: Option, value: object) -> str:
    """A parsed value written back as the text of ``option``, the inverse of ``option.kind.parse``."""
    if value is None:
        return ""
    if option.kind.is_json:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, list):
        return ", ".join(value)
    return option.shown(str(value))


def redact_url(url: str) -> str:
    """The URL with any password (``user:password@`` or ``?password=``) replaced, so it can be printed.

    The text is edited before any parsing: a password may hold an unescaped ``/``, ``#``, ``?`` or ``@``,
    which would end the authority early for ``urlsplit``. Everything from ``://`` to the last ``@`` is the
    user information; only the user name before its first ``:`` survives.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:  # not a URL at all, but a "?password=" in it is still hidden
        scheme, rest = "", url
    userinfo, at, host_and_path = rest.rpartition("@")
    if separator and at:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:{REDACTED}" if colon else REDACTED) + at + host_and_path
    # Rebuilt from the text rather than from parts, which would turn "unix:///path" into "unix:/path".
    address, mark, query = rest.partition("?")
    return scheme + separator + address + mark + _URL_PASSWORD_PARAMETER.sub(rf"\1\2{REDACTED}", query)


# --- rendering: the shipped file and the docs -----------------------------------------------------------


def _comment(text: str) -> Iterator[str]:
    for line in textwrap.wrap(text, width=100):
        yield f"# {line}"


def render_default_file() -> str:
    """The commented INI file shipped as ``config/kbridge.cfg`` (``kbridge config --print-defaults``)."""
    lines = [
        "# kube-redis-bridge configuration: the defaults, as printed by `kbridge config --print-defaults`.",
        f"# Any option can be overridden by an environment variable {ENV_PREFIX}<SECTION>__<KEY>.",
    ]
    for section in _FIXED_SECTIONS:
        lines += ["", f"[{section}]"]
        for option in (option for option in OPTIONS if option.section == section):
            assignment = f"{option.key} = {option.default}".rstrip()
            kind_line = f"# Type: {option.kind.description}. Read by: {', '.join(option.read_by)}."
            lines += ["", *_comment(option.help), kind_line, assignment]
    for free_form in FREE_FORM_SECTIONS:
        entry = f"<{free_form.key_rule}> = <{free_form.value_rule}>"
        lines += ["", f"[{free_form.name}]", *_comment(free_form.help), f"# Entries: {entry}, e.g."]
        lines.append(f"# {free_form.example}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_reference_markdown() -> str:
    """The option reference for the docs, placed between the config-reference markers."""
    intro = (
        "Options are read from built-in defaults, then the INI file "
        f"(`--config PATH`, else `${CONFIG_PATH_ENV}`), "
        f"then environment variables `{ENV_PREFIX}<SECTION>__<KEY>`. Section and option names are "
        "case-insensitive in both places; keys of the free-form sections keep their case (label keys and "
        "variable names are case-sensitive). Values are not interpolated, so `%` needs no escaping. "
        "Paths may start with `~`. Unknown sections or options are errors, so a typo cannot go unnoticed."
    )
    lines = textwrap.wrap(intro, width=100)
    for section in _FIXED_SECTIONS:
        lines += [
            "",
            f"#### `[{section}]`",
            "",
            "| Option | Type | Default | Read by | Description |",
            "|---|---|---|---|---|",
        ]
        for option in (option for option in OPTIONS if option.section == section):
            default = f"`{option.default}`" if option.default else "(empty)"
            cells = (
                f"`{option.key}`",
                option.kind.description,
                default,
                ", ".join(option.read_by),
                option.help,
            )
            lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    lines += [
        "",
        "#### Free-form sections",
        "",
        "| Section | Entry | Example | Description |",
        "|---|---|---|---|",
    ]
    for free_form in FREE_FORM_SECTIONS:
        entry = f"`<{free_form.key_rule}> = <{free_form.value_rule}>`"
        lines.append(
            f"| `[{free_form.name}]` | {entry} | `{_cell(free_form.example)}` | {_cell(free_form.help)} |"
        )
    return "\n".join(lines) + "\n"
