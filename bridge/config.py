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
import difflib
import json
import os
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import yaml

from bridge.errors import UserInputError
from bridge.naming import is_dns1123_subdomain, is_qualified_name, is_valid_label_value

CONFIG_PATH_ENV = "KBRIDGE_CONFIG"
ENV_PREFIX = "KBRIDGE__"
REDACTED = "<redacted>"
BASE_CONTAINER = "base"  # the container that runs the task, as in Airflow
MIN_SIGNING_KEY_LENGTH = 32

_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# The portable rule (Kubernetes < 1.34 rejects anything wider), so a config works on every cluster version.
_ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SECRET_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.:]*")


class ConfigError(UserInputError):
    """The configuration has problems; ``problems`` holds one line per problem, naming the option."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid configuration ({source}), {count}:\n{listing}")


class PodTemplateError(UserInputError):
    """A pod template file or pod_override is not a usable pod; the message names the source and the fix."""


# --- value kinds ------------------------------------------------------------------------------------------
# A kind turns the text of one option into a typed value, or raises ValueError saying what was expected.


@dataclass(frozen=True)
class Kind:
    description: str
    parse: Callable[[str], Any]


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


def choice(*allowed: str) -> Kind:
    description = "one of " + ", ".join(allowed)

    def parse(raw: str) -> str:
        _expect(raw in allowed, f"expected {description} (case matters)")
        return raw

    return Kind(description, parse)


def _parse_dns_label(raw: str) -> str:
    _expect(
        len(raw) <= 63 and _DNS_1123_LABEL.fullmatch(raw) is not None,
        "expected a DNS-1123 label: at most 63 lowercase letters, digits and '-', alphanumeric at both ends",
    )
    return raw


def _parse_optional_dns_subdomain(raw: str) -> str | None:
    if not raw:
        return None
    _expect(
        is_dns1123_subdomain(raw),
        "expected a Kubernetes object name (lowercase DNS-1123 subdomain), or empty",
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
    _expect(not bad, f"expected comma-separated Secret names (lowercase DNS-1123 subdomains); bad: {bad}")
    return names


def _parse_redis_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
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
    _expect(
        bool(raw) and is_valid_label_value(raw),
        "expected 1-63 letters, digits, '-', '_' or '.', alphanumeric at both ends (it is used as a label)",
    )
    return raw


def _json(raw: str, empty: object) -> Any:
    if not raw:
        return empty
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected JSON ({exc})") from None


def _check_keys(obj: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in obj:
        _expect(key in allowed, f"unknown key {key!r} in {where}{did_you_mean(key, allowed)}")


def json_object(allowed_keys: Sequence[str] | None = None) -> Kind:
    description = "JSON object" + (" with keys among " + ", ".join(allowed_keys) if allowed_keys else "")

    def parse(raw: str) -> dict[str, Any]:
        value = _json(raw, {})
        if not isinstance(value, dict):
            raise ValueError(f"expected a {description}, got JSON {type(value).__name__}")
        if allowed_keys:
            _check_keys(value, allowed_keys, "the object")
        return {str(key): item for key, item in value.items()}

    return Kind(description, parse)


def _delete_option_keys() -> list[str]:
    from kubernetes.client import V1DeleteOptions  # heavy import, only when the option is set

    return sorted(V1DeleteOptions.openapi_types)


def _parse_delete_options(raw: str) -> dict[str, Any]:
    value: dict[str, Any] = json_object().parse(raw)
    if value:
        _check_keys(value, _delete_option_keys(), "V1DeleteOptions arguments (snake_case)")
    return value


TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


def _parse_tolerations(raw: str) -> list[dict[str, Any]]:
    value = _json(raw, [])
    _expect(
        isinstance(value, list),
        f"expected a JSON list of toleration objects, got JSON {type(value).__name__}",
    )
    for index, toleration in enumerate(value):
        where = f"toleration #{index}"
        _expect(isinstance(toleration, dict), f"expected {where} to be a JSON object, got {toleration!r}")
        _check_keys(toleration, TOLERATION_KEYS, where)
        _expect(
            toleration.get("operator", "Equal") in ("Equal", "Exists"),
            f"expected {where} operator Equal or Exists",
        )
        _expect(
            toleration.get("effect", "") in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"),
            f"expected {where} effect NoSchedule, PreferNoSchedule or NoExecute",
        )
    return list(value)


TEXT = Kind("string", _parse_text)
BOOLEAN = Kind("true or false", _parse_boolean)
DNS_LABEL = Kind("DNS-1123 label", _parse_dns_label)
OBJECT_NAME = Kind("Kubernetes object name, or empty", _parse_optional_dns_subdomain)
FILE_PATH = Kind("file path, or empty", _parse_optional_path)
CSV = Kind("comma-separated list", _parse_csv)
SECRET_NAMES = Kind("comma-separated Secret names", _parse_secret_names)
REDIS_URL = Kind("redis://, rediss:// or unix:// URL", _parse_redis_url)
QUEUE_NAME = Kind("name", _parse_queue_name)
KEY_PREFIX = Kind("label value (1-63 chars)", _parse_key_prefix)
AFFINITY = json_object(("nodeAffinity", "podAffinity", "podAntiAffinity"))
TOLERATIONS = Kind("JSON list of toleration objects", _parse_tolerations)
DELETE_OPTIONS = Kind("JSON object of V1DeleteOptions arguments", _parse_delete_options)
UID = integer(0, 2**31 - 1, optional=True)


# --- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One fixed option; its parsed value becomes the ``KubeConfig`` attribute of the same name as ``key``."""

    section: str
    key: str
    kind: Kind
    default: str
    help: str
    secret: bool = False

    @property
    def env_var(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}__{self.key.upper()}"


CORE, KUBERNETES, BRIDGE = "core", "kubernetes", "bridge"
FATAL_PENDING_REASONS = (
    "CreateContainerConfigError,ErrImagePull,CreateContainerError,ImageInspectError,InvalidImageName"
)

OPTIONS: tuple[Option, ...] = (
    Option(CORE, "log_level", choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO",
           "Log level of the bridge's own processes (executor, dispatchers, watcher)."),
    Option(KUBERNETES, "namespace", DNS_LABEL, "default",
           "Namespace the worker pods are created in and watched in."),
    Option(KUBERNETES, "worker_container_repository", TEXT, "",
           "Worker image repository; with worker_container_tag it overrides the template's image."),
    Option(KUBERNETES, "worker_container_tag", TEXT, "",
           "Image tag of the worker container; set together with worker_container_repository."),
    Option(KUBERNETES, "worker_container_image_pull_policy", choice("Always", "IfNotPresent", "Never"),
           "IfNotPresent", "imagePullPolicy of the worker container."),
    Option(KUBERNETES, "pod_template_file", FILE_PATH, "",
           "YAML pod used as the base of every worker pod (a task's executor_config may name its own)."),
    Option(KUBERNETES, "worker_service_account_name", OBJECT_NAME, "",
           "Service account of the worker pods; empty keeps the namespace default."),
    Option(KUBERNETES, "image_pull_secrets", SECRET_NAMES, "",
           "Secrets used to pull the worker image, comma-separated."),
    Option(KUBERNETES, "run_as_user", UID, "", "Pod securityContext.runAsUser; empty leaves it unset."),
    Option(KUBERNETES, "run_as_group", UID, "", "Pod securityContext.runAsGroup; empty leaves it unset."),
    Option(KUBERNETES, "fs_group", UID, "", "Pod securityContext.fsGroup; empty leaves it unset."),
    Option(KUBERNETES, "affinity", AFFINITY, "{}", "Pod affinity (API JSON, camelCase)."),
    Option(KUBERNETES, "tolerations", TOLERATIONS, "[]",
           "Pod tolerations (API JSON list, camelCase)."),
    Option(KUBERNETES, "delete_worker_pods", BOOLEAN, "True",
           "Delete a worker pod once its outcome is recorded; if False it is kept for inspection."),
    Option(KUBERNETES, "delete_worker_pods_on_failure", BOOLEAN, "False",
           "With delete_worker_pods, also delete pods of failed tasks (False keeps them for debugging)."),
    Option(KUBERNETES, "worker_pods_pending_timeout", integer(0, 7 * 24 * 3600), "300",
           "Seconds a pod may stay Pending before its task is failed; 0 waits forever."),
    Option(KUBERNETES, "worker_pod_pending_fatal_container_state_reasons", CSV, FATAL_PENDING_REASONS,
           "Container waiting reasons that fail a Pending pod at once instead of waiting for the timeout."),
    Option(KUBERNETES, "task_publish_max_retries", integer(0, 100), "3",
           "Retries of a pod create that hit a retryable API error (409, 429, 5xx) before failing the task."),
    Option(KUBERNETES, "in_cluster", BOOLEAN, "True",
           "Use the pod's service account to reach the API; False uses config_file and cluster_context."),
    Option(KUBERNETES, "cluster_context", TEXT, "", "kubeconfig context to use when in_cluster is False."),
    Option(KUBERNETES, "config_file", FILE_PATH, "", "kubeconfig file to use when in_cluster is False."),
    Option(KUBERNETES, "verify_ssl", BOOLEAN, "True", "Verify the API server's TLS certificate."),
    Option(KUBERNETES, "ssl_ca_cert", FILE_PATH, "", "CA bundle for the API server's certificate."),
    Option(KUBERNETES, "kube_client_request_args", json_object(), "{}",
           'Extra keyword arguments for every API call, e.g. {"_request_timeout": [5, 60]}.'),
    Option(KUBERNETES, "delete_option_kwargs", DELETE_OPTIONS, "{}",
           'V1DeleteOptions arguments for pod deletion, e.g. {"grace_period_seconds": 10}.'),
    Option(KUBERNETES, "request_timeout_seconds", integer(1, 3600), "30",
           "Client socket timeout of each API call and watch read, so a dropped connection is noticed."),
    Option(KUBERNETES, "watch_timeout_seconds", integer(1, 86400), "3600",
           "Server-side lifetime of one pod watch; the watcher then resumes from the last resourceVersion."),
    Option(KUBERNETES, "enable_tcp_keepalive", BOOLEAN, "True",
           "TCP keepalive on API connections, so idle watches survive load balancers and firewalls."),
    Option(KUBERNETES, "tcp_keep_idle", integer(1, 32767), "120",
           "Idle seconds before the first keepalive probe."),
    Option(KUBERNETES, "tcp_keep_intvl", integer(1, 32767), "30", "Seconds between keepalive probes."),
    Option(KUBERNETES, "tcp_keep_cnt", integer(1, 127), "6",
           "Unanswered probes before the connection is dropped."),
    Option(BRIDGE, "redis_url", REDIS_URL, "redis://localhost:6379/0",
           "Redis holding the queue and the result stream; a password in it is redacted in output."),
    Option(BRIDGE, "queue_name", QUEUE_NAME, "kbridge", "rq queue the executor enqueues pod launches on."),
    Option(BRIDGE, "key_prefix", KEY_PREFIX, "kbridge",
           "Prefix of the Redis keys and value of the pod label kbridge/instance; unique per bridge."),
    Option(BRIDGE, "result_stream", TEXT, "",
           "Redis stream of pod outcomes; empty means <key_prefix>:results."),
    Option(BRIDGE, "signing_key", TEXT, "",
           "Secret that signs queued messages; prefer signing_key_file or $KBRIDGE__BRIDGE__SIGNING_KEY.",
           secret=True),
    Option(BRIDGE, "signing_key_file", FILE_PATH, "", "File whose content (stripped) is the signing key."),
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
    _expect(is_qualified_name(key), "expected the key to be a label key such as team or example.com/team")
    _expect(
        is_valid_label_value(value), "expected a label value: at most 63 letters, digits, '-', '_' or '.'"
    )
    return value


def _annotation_entry(key: str, value: str) -> str:
    _expect(is_qualified_name(key), "expected the key to be an annotation key such as example.com/owner")
    return value


def _env_entry(key: str, value: str) -> str:
    _expect(_ENV_VAR_NAME.fullmatch(key) is not None, "expected the key to be an environment variable name")
    return value


def _secret_entry(key: str, value: str) -> SecretRef:
    _env_entry(key, value)
    secret_name, separator, data_key = value.partition("=")
    _expect(
        bool(separator)
        and is_dns1123_subdomain(secret_name)
        and _SECRET_DATA_KEY.fullmatch(data_key) is not None,
        "expected secret_name=key, e.g. airflow-secrets=sql_alchemy_conn "
        "(a lowercase Secret name, then a key of letters, digits, '-', '_' or '.')",
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
        "Plain environment variables of the worker container. Never put secrets here.", _env_entry,
    ),
    FreeFormSection(
        "kubernetes_secrets", "variable name", "secret_name=key", "AIRFLOW__API__SECRET_KEY = airflow=key",
        "Variables filled from a key of a Kubernetes Secret, by reference (secretKeyRef).", _secret_entry,
    ),
)  # fmt: skip

SECTIONS = (CORE, KUBERNETES, BRIDGE, *(section.name for section in FREE_FORM_SECTIONS))


# --- messages -------------------------------------------------------------------------------------------


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shorten(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


# --- pod template files ---------------------------------------------------------------------------------


def check_pod_shape(obj: object, source: str) -> dict[str, Any]:
    """Return ``obj`` if it looks like an API-JSON pod (camelCase, as ``kubectl get pod -o yaml`` shows).

    Empty YAML keys (``labels:`` with nothing after it) load as None; they are dropped here, so that the
    pod builder only ever sees mappings and lists where the API expects them.
    """
    fix = "expected a Pod in API form: kind: Pod, metadata: {...}, spec: {containers: [{name: base, ...}]}"
    if not isinstance(obj, dict):
        raise PodTemplateError(f"{source} is a {type(obj).__name__}, not a pod; {fix}")
    if obj.get("kind", "Pod") != "Pod" or obj.get("apiVersion", "v1") != "v1":
        raise PodTemplateError(
            f"{source} has kind {obj.get('kind')!r}, apiVersion {obj.get('apiVersion')!r}; {fix}"
        )
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
            raise PodTemplateError(
                f"{source} field {field!r} must be {expected}, got {parent[field]!r}; {fix}"
            )
    containers = obj.get("spec", {}).get("containers", [])
    if not all(isinstance(container, dict) for container in containers):
        raise PodTemplateError(f"{source} field 'containers' must be a list of mappings; {fix}")
    return obj


def load_pod_template(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    """Read a YAML pod template; ``source`` names where the path came from, for the error message."""
    where = f"{source} {os.fspath(path)!r}"
    file_path = existing_file(path)
    if file_path is None:
        raise PodTemplateError(f"{where} is not an existing file; give the path of a YAML pod file")
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PodTemplateError(
            f"{where} cannot be read ({exc}); give the path of a UTF-8 YAML pod file"
        ) from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PodTemplateError(f"{where} is not valid YAML: {exc}".replace("\n", " ")) from None
    return check_pod_shape(obj, where)


def base_container(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The container that runs the task: the one named ``base``, else the first (Airflow's rule)."""
    containers: list[dict[str, Any]] = pod.get("spec", {}).get("containers", [])
    named = [container for container in containers if container.get("name") == BASE_CONTAINER]
    return next(iter(named or containers), None)


# --- loading ----------------------------------------------------------------------------------------------

_SOURCE_DEFAULTS = "built-in defaults"


class _RawSettings:
    """The text of every option, layered defaults -> file -> environment, plus where each value came from."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
        self.origins: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        for option in OPTIONS:
            self.values[option.section][option.key] = option.default

    def known_section(self, section: str, origin: str) -> bool:
        if section.lower() in self.values:
            return True
        suggestion = did_you_mean(section.lower(), SECTIONS)
        self.problems.append(f"unknown section [{section}] in {origin}{suggestion}")
        return False

    def set(self, section: str, key: str, value: str, origin: str) -> None:
        """Store one value given with any section case and, for fixed sections, any key case."""
        if not self.known_section(section, origin):
            return
        section = section.lower()
        if section in (CORE, KUBERNETES, BRIDGE):
            known = [option.key for option in OPTIONS if option.section == section]
            if key.lower() not in known:
                suggestion = did_you_mean(key.lower(), known)
                self.problems.append(f"unknown option [{section}] {key} in {origin}{suggestion}")
                return
            key = key.lower()
        self.values[section][key] = value
        self.origins[(section, key)] = origin

    def read_file(self, path: Path) -> None:
        # interpolation=None: values may contain '%'. optionxform=str: label keys and variable names are
        # case-sensitive. A never-used default_section stops [DEFAULT] from leaking into every section.
        parser = configparser.ConfigParser(interpolation=None, default_section="\0no default section")
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with path.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(f"{path} cannot be read ({exc}); it must be a readable UTF-8 INI file")
            return
        except configparser.Error as exc:
            self.problems.append(f"{path} is not a valid INI file: {exc.message}".replace("\n", " "))
            return
        for section in parser.sections():
            if self.known_section(section, str(path)):
                for key, value in parser.items(section):
                    self.set(section, key, value.strip(), str(path))

    def read_environment(self, environ: Mapping[str, str]) -> None:
        for name, value in sorted(environ.items()):
            if not name.upper().startswith(ENV_PREFIX):
                continue
            section, separator, key = name[len(ENV_PREFIX) :].partition("__")
            if not separator or not key:
                self.problems.append(f"${name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
                continue
            self.set(section, key, value.strip(), f"${name}")

    def describe(self, section: str, key: str) -> str:
        origin = self.origins.get((section, key))
        return f"[{section}] {key}" + (f" (from {origin})" if origin else "")


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> KubeConfig:
    """Read defaults, then the file (``path``, else ``$KBRIDGE_CONFIG``), then ``KBRIDGE__*`` variables.

    Raises :class:`ConfigError` listing every problem (missing file, unknown sections or keys, bad values).
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_PATH_ENV):
        path, source = environ[CONFIG_PATH_ENV], f"${CONFIG_PATH_ENV}"
    else:
        source = "the config path"
    raw = _RawSettings()
    if path is not None:
        file_path = existing_file(path)
        if file_path is None:
            raise ConfigError(
                os.fspath(path),
                [
                    f"{source} {os.fspath(path)!r} is not an existing file; "
                    "fix the path, or unset it to use the defaults"
                ],
            )
        raw.read_file(file_path)
    raw.read_environment(environ)
    return KubeConfig._from_raw(raw, _SOURCE_DEFAULTS if path is None else os.fspath(path))


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
        raw = _RawSettings()
        for section, entries in (settings or {}).items():
            for key, text in entries.items():
                raw.set(section, key, text, source)
        self._load(raw, source)

    @classmethod
    def _from_raw(cls, raw: _RawSettings, source: str) -> KubeConfig:
        config = cls.__new__(cls)
        config._load(raw, source)
        return config

    def _load(self, raw: _RawSettings, source: str) -> None:
        self._raw = raw
        self.source = source
        self._problems = list(raw.problems)
        for option in OPTIONS:
            setattr(self, option.key, self._parse(option))
        for free_form in FREE_FORM_SECTIONS:
            setattr(self, free_form.name, self._parse_free_form(free_form))
        self._validate()
        if self._problems:
            raise ConfigError(source, self._problems)

    def _problem(self, section: str, key: str, value: str, expected: str) -> None:
        self._problems.append(f"{self._raw.describe(section, key)} = {_shorten(value)}: {expected}")

    def _parse(self, option: Option) -> Any:
        text = self._raw.values[option.section][option.key]
        try:
            return option.kind.parse(text)
        except ValueError as exc:
            self._problem(option.section, option.key, REDACTED if option.secret else text, str(exc))
            return option.kind.parse(option.default)  # keep going, so every problem is reported at once

    def _parse_free_form(self, free_form: FreeFormSection) -> dict[str, Any]:
        parsed = {}
        for key, text in self._raw.values[free_form.name].items():
            try:
                parsed[key] = free_form.parse(key, text)
            except ValueError as exc:
                self._problem(free_form.name, key, text, str(exc))
        return parsed

    def _get_security_context_val(self, scontext: str) -> int | None:
        """The configured value of a pod security-context option: run_as_user, run_as_group or fs_group."""
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

    def _validate(self) -> None:
        """Checks that involve several options or files; each failure is added to the problem list."""
        self._validate_image()
        if self.in_cluster:
            for key in ("config_file", "cluster_context"):
                if getattr(self, key):
                    expected = (
                        "ignored while in_cluster = True; set in_cluster = False to use it, or clear it"
                    )
                    self._problem(KUBERNETES, key, self._raw.values[KUBERNETES][key], expected)
        self._resolve_bridge_settings()

    def _validate_image(self) -> None:
        self.pod_template = None
        if self.pod_template_file is not None:
            try:
                self.pod_template = load_pod_template(
                    self.pod_template_file, "[kubernetes] pod_template_file"
                )
            except PodTemplateError as exc:
                self._problems.append(str(exc))
        repository, tag = self.worker_container_repository, self.worker_container_tag
        if bool(repository) != bool(tag):
            expected = "set worker_container_repository and worker_container_tag together (or neither)"
            self._problem(KUBERNETES, "worker_container_tag", tag, expected)
        # No image at all is not an error here: a task's executor_config may bring one. The pod builder
        # fails just that task, naming the options to set, when no image resolves.

    def _resolve_bridge_settings(self) -> None:
        if not self.result_stream:
            self.result_stream = f"{self.key_prefix}:results"
        key = self.signing_key or None
        if key is not None and self.signing_key_file is not None:
            self._problem(
                BRIDGE, "signing_key_file", str(self.signing_key_file), "signing_key is set too; keep one"
            )
        elif self.signing_key_file is not None:
            key = self._read_signing_key(self.signing_key_file)
        if key is not None and len(key) < MIN_SIGNING_KEY_LENGTH:
            expected = f"expected at least {MIN_SIGNING_KEY_LENGTH} characters, e.g. `openssl rand -hex 32`"
            self._problem(BRIDGE, "signing_key", REDACTED, expected)
        self.signing_key = key

    def _read_signing_key(self, path: Path) -> str | None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self._problem(BRIDGE, "signing_key_file", str(path), f"cannot be read ({exc})")
            return None
        if not key:
            self._problem(BRIDGE, "signing_key_file", str(path), "the file is empty")
        return key or None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The effective settings as JSON-ready values, with secrets redacted, for ``kbridge config``."""
        settings: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for option in OPTIONS:
            value = getattr(self, option.key)
            if option.secret:
                value = REDACTED if value else ""
            elif option.kind is REDIS_URL:
                value = redact_url(value)
            settings[option.section][option.key] = str(value) if isinstance(value, Path) else value
        for free_form in FREE_FORM_SECTIONS:
            entries = getattr(self, free_form.name).items()
            settings[free_form.name] = {
                key: f"{value.secret_name}={value.key}" if isinstance(value, SecretRef) else value
                for key, value in entries
            }
        return settings


def redact_url(url: str) -> str:
    """The URL with any password replaced, so it can be printed or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


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
    for section in (CORE, KUBERNETES, BRIDGE):
        lines += ["", f"[{section}]"]
        for option in (option for option in OPTIONS if option.section == section):
            assignment = f"{option.key} = {option.default}".rstrip()
            lines += ["", *_comment(option.help), f"# Type: {option.kind.description}.", assignment]
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
    for section in (CORE, KUBERNETES, BRIDGE):
        lines += [
            "",
            f"#### `[{section}]`",
            "",
            "| Option | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        for option in (option for option in OPTIONS if option.section == section):
            default = f"`{option.default}`" if option.default else "(empty)"
            cells = (f"`{option.key}`", option.kind.description, default, option.help)
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
