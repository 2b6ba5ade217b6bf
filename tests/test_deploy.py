"""The deployment files match the code: schemas, CLI flags, option names, RBAC, users and secrets.

No cluster or container engine runs here, so the manifests are checked against the Kubernetes OpenAPI
schemas (``kubernetes_validate``, strict, newest version it ships) and compose.yaml against the rules below
(no compose-spec schema is installed). Every ``kbridge`` command line in them is parsed by the real argparse
parser of its subcommand, every ``KBRIDGE__`` variable must name a real option with a valid value, and the
Role must grant exactly the API calls found in the workers' code.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

import kubernetes_validate
import pytest
import yaml

import bridge
from bridge.config import ENV_PREFIX, FILE_PATH, OPTIONS, REDIS_URL, Option, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
MANIFESTS = DOCKER / "kubernetes"
COMPOSE = DOCKER / "compose.yaml"
IMAGE = f"kube-redis-bridge:{bridge.__version__}"
OPTIONS_BY_ENV = {f"{ENV_PREFIX}{o.section.upper()}__{o.key.upper()}": o for o in OPTIONS}
# Values a secretKeyRef or the downward API would supply at run time, valid for their option.
RUNTIME_VALUES = {
    "redis_url": "redis://kbridge:pw@redis:6379/0",
    "signing_key": "k" * 32,
    "namespace": "bridge-ns",
}


def _image_uid() -> int:
    final_stage = (DOCKER / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    match = re.search(r"^USER (\d+)$", final_stage, re.MULTILINE)
    assert match, "the image must run as a numeric non-root user"
    return int(match.group(1))


# --- CLI lines ------------------------------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options


def parse_kbridge(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse ``kbridge argv...`` with the subcommand's own parser, stopping before the command runs."""
    commands = {ep.name: ep for ep in entry_points(group="kbridge.commands")}
    assert argv[0] in commands, f"kbridge has no subcommand {argv[0]!r}; it has {sorted(commands)}"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        # Flags in full: argparse accepts a prefix, which a later flag could make ambiguous.
        for flag in (arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--")):
            assert flag in self._option_string_actions, f"kbridge {argv[0]}: {flag} is not a flag in full"
        raise _Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        commands[argv[0]].load()(argv[1:])
    except _Parsed as parsed:
        return parsed.options
    except SystemExit as exit_:  # argparse rejected the line (its message is on stderr)
        pytest.fail(f"kbridge {' '.join(argv)}: rejected by the real parser (exit {exit_.code})")
    finally:
        monkeypatch.undo()
    pytest.fail(f"kbridge {argv[0]} did not parse its arguments with argparse")


def test_parse_kbridge_rejects_an_unknown_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pytest.fail.Exception, match="rejected by the real parser"):
        parse_kbridge(["status", "--probe", "watcher"], monkeypatch)
    with pytest.raises(AssertionError, match="--jso is not a flag in full"):
        parse_kbridge(["status", "--jso"], monkeypatch)
    assert parse_kbridge(["status", "--json"], monkeypatch).json is True


# --- Kubernetes manifests -------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return documents


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == "Deployment"}


def _containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in _deployments().values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield pod, container


def test_every_manifest_is_valid_for_the_newest_schema_strictly() -> None:
    version = kubernetes_validate.latest_version()
    documents = _manifests()
    assert {d["kind"] for d in documents} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
    }
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{document['kind']} {document['metadata']['name']}: {error.message} at {error.path}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = _one("Deployment", "kbridge-dispatcher")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_deployments_run_the_dispatchers_and_the_watcher_pair() -> None:
    deployments = _deployments()
    assert {name: d["spec"]["replicas"] for name, d in deployments.items()} == {
        "kbridge-dispatcher": 3,
        "kbridge-watcher": 2,
    }
    commands = {
        name: d["spec"]["template"]["spec"]["containers"][0]["args"][0] for name, d in deployments.items()
    }
    assert commands == {"kbridge-dispatcher": "dispatcher", "kbridge-watcher": "watcher"}
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def _config_mount_files(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """Paths in the container -> the ConfigMap key mounted there."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        config_map = volumes[mount["name"]].get("configMap")
        if config_map is not None:
            for item in config_map["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = item["key"]
    return files


def test_every_kbridge_command_line_parses_with_the_real_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    config_map = _one("ConfigMap", "kbridge-config")
    lines = 0
    for pod, container in _containers():
        assert container["image"] == IMAGE
        assert "command" not in container, "the image's entrypoint is kbridge; give the subcommand as args"
        command_lines = [container["args"]]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                argv = container[probe]["exec"]["command"]
                assert argv[0] == "kbridge", f"{probe} must run kbridge, as an argv list (no shell)"
                command_lines.append(argv[1:])
        mounted = _config_mount_files(pod, container)
        for argv in command_lines:
            options = parse_kbridge(argv, monkeypatch)
            lines += 1
            assert options.config in mounted, f"--config {options.config} is not a mounted file"
            assert mounted[options.config] in config_map["data"]
    assert lines == 3  # dispatcher, its readiness probe, watcher


def _env(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _option(name: str) -> Option:
    assert name in OPTIONS_BY_ENV, f"${name} names no option; see docs/configuration.md"
    return OPTIONS_BY_ENV[name]


def test_env_names_real_options_and_secrets_only_by_secret_key_ref() -> None:
    for pod, container in _containers():
        assert "envFrom" not in container
        assert not [v for v in pod.get("volumes", []) if "secret" in v or "projected" in v]
        for name, entry in _env(container).items():
            option = _option(name)
            source = entry.get("valueFrom", {})
            if option.secret or option.kind is REDIS_URL:  # a Redis URL carries the password
                assert set(source) == {"secretKeyRef"}, f"${name} must come from a Secret by secretKeyRef"
                assert "value" not in entry
            else:
                assert set(source) <= {"fieldRef"}


def test_config_map_and_env_load_as_a_valid_configuration(tmp_path: Path) -> None:
    text = _one("ConfigMap", "kbridge-config")["data"]["kbridge.cfg"]
    (tmp_path / "kbridge.cfg").write_text(text)
    for deployment in _deployments().values():
        pod = deployment["spec"]["template"]["spec"]
        environ = {}
        for name, entry in _env(pod["containers"][0]).items():
            environ[name] = entry["value"] if "value" in entry else RUNTIME_VALUES[_option(name).key]
        config = load_config(tmp_path / "kbridge.cfg", environ)  # raises ConfigError listing any problem
        assert config.in_cluster
        assert config.namespace == RUNTIME_VALUES["namespace"]  # the pod's own namespace, where the Role is
        if deployment["metadata"]["name"] == "kbridge-dispatcher":
            assert config.signing_key == RUNTIME_VALUES["signing_key"]
            # SIGTERM lets the current launch job finish; it may last up to job_timeout_seconds.
            assert pod["terminationGracePeriodSeconds"] > config.job_timeout_seconds


def test_containers_run_as_the_images_non_root_user_without_privileges() -> None:
    uid = _image_uid()
    assert uid == 10001
    for pod, container in _containers():
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, uid)
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert "memory" in resources["limits"]


# The API calls of the kubernetes client, by method name: (resource, verb).
_API_METHOD = re.compile(r"(create|read|list|delete|patch|replace)_namespaced_(pod|secret)(_log|_status)?")
_VERBS = {
    "create": "create",
    "read": "get",
    "list": "list",
    "delete": "delete",
    "patch": "patch",
    "replace": "update",
}


AIRFLOW_EXECUTOR = ROOT / "bridge" / "airflow_executor.py"  # runs in Airflow's processes, not the workers'


def worker_sources() -> list[Path]:
    """The code the workers run: workers/ and bridge/ (not the simulator, not the Airflow executor)."""
    return [
        path
        for path in [*sorted((ROOT / "workers").glob("*.py")), *sorted((ROOT / "bridge").glob("*.py"))]
        if path != AIRFLOW_EXECUTOR
    ]


def needed_permissions(sources: list[Path]) -> set[tuple[str, str]]:
    """Every (resource, verb) of pods and Secrets that ``sources`` ask of the API."""
    needed = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not (match := _API_METHOD.fullmatch(node.attr)):
                continue
            resource = f"{match.group(2)}s" + (f"/{match.group(3).lstrip('_')}" if match.group(3) else "")
            needed.add((resource, _VERBS[match.group(1)]))
        for node in ast.walk(ast.parse(path.read_text())):
            # list_namespaced_pod(watch=True), or the method handed to kubernetes.watch.Watch().stream
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                watch_flag = any(
                    kw.arg == "watch" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                    for kw in node.keywords
                )
                streamed = node.func.attr == "stream" and any(
                    isinstance(arg, ast.Attribute) and arg.attr == "list_namespaced_pod" for arg in node.args
                )
                if (watch_flag and node.func.attr == "list_namespaced_pod") or streamed:
                    needed.add(("pods", "watch"))
    return needed


def _granted(role: dict[str, Any]) -> set[tuple[str, str]]:
    granted = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        assert "resourceNames" not in rule
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                assert "*" not in (resource, verb)
                granted.add((resource, verb))
    return granted


def test_the_role_grants_exactly_what_the_workers_call() -> None:
    needed = needed_permissions(worker_sources())
    assert ("pods", "create") in needed  # the scan found the dispatcher's calls
    assert ("pods", "watch") in needed  # and the watcher's
    assert ("secrets", "create") in needed  # and the launch Secrets
    assert _granted(_one("Role", "kbridge-workers")) == needed


def test_the_airflow_log_reader_role_grants_exactly_what_the_airflow_executor_calls() -> None:
    needed = needed_permissions([AIRFLOW_EXECUTOR])
    assert needed == {("pods/log", "get")}  # get_task_log; the executor itself never touches pods
    role = _one("Role", "kbridge-airflow-log-reader")
    assert _granted(role) == needed
    binding = _one("RoleBinding", "kbridge-airflow-log-reader")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kbridge-airflow-log-reader",
    }


def test_the_role_is_bound_to_the_service_account_both_deployments_use() -> None:
    account = _one("ServiceAccount")["metadata"]["name"]
    binding = _one("RoleBinding", "kbridge-workers")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": _one("Role", "kbridge-workers")["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    for deployment in _deployments().values():
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
        assert "namespace" not in deployment["metadata"]  # applied with -n: one namespace for all of it


# --- compose --------------------------------------------------------------------------------------------

# The compose-spec fields these files may use (a misspelt key would be silently ignored by no one: compose
# rejects it, but there is no compose binary here to say so).
COMPOSE_TOP = {"name", "services", "volumes", "secrets", "networks", "configs"}
COMPOSE_SERVICE = {
    "build", "image", "command", "entrypoint", "environment", "user", "read_only", "tmpfs", "cap_drop",
    "security_opt", "restart", "depends_on", "volumes", "secrets", "deploy", "stop_grace_period", "ports",
    "healthcheck", "networks",
}  # fmt: skip
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (a variable without a default is an error here)."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, f"${{{match.group(1)}}} needs a default: {text}"
        return match.group(2)

    return _INTERPOLATION.sub(default, text)


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # merges the x-kbridge anchor
    return {key: value for key, value in document.items() if not key.startswith("x-")}


def _bridge_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("image", "").startswith("kube-redis-bridge")
    }


def test_compose_uses_only_known_fields_and_declared_names() -> None:
    compose = _compose()
    assert compose.keys() <= COMPOSE_TOP
    for name, service in compose["services"].items():
        assert service.keys() <= COMPOSE_SERVICE, (
            f"service {name}: unknown fields {service.keys() - COMPOSE_SERVICE}"
        )
        assert "container_name" not in service  # would clash with replicas
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in compose["services"]
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in compose["services"][dependency]
        for secret in service.get("secrets", []):
            assert (DOCKER / compose["secrets"][secret]["file"]).parent.name == "secrets"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("./") or source in compose["volumes"], f"undeclared volume {source}"


def test_compose_builds_the_bridge_image_from_our_dockerfile() -> None:
    services = _bridge_services(_compose())
    assert set(services) == {"dispatcher", "watcher"}
    for service in services.values():
        assert service["image"] == IMAGE
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        assert service["user"] == f"{_image_uid()}:{_image_uid()}"
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]


def test_compose_replicas_and_redis_persistence() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["dispatcher"]["deploy"]["replicas"] >= 2
    assert services["watcher"]["deploy"]["replicas"] == 2  # one acts, one stands by
    redis_command = services["redis"]["command"]
    assert redis_command[0] == "redis-server"
    settings = dict(zip(redis_command[1::2], redis_command[2::2], strict=True))
    assert settings["--appendonly"] == "yes"
    assert settings["--maxmemory-policy"] == "noeviction"
    for port in services["redis"]["ports"]:
        assert _interpolate(port).startswith("127.0.0.1:"), "Redis without a password stays on loopback"


def test_compose_commands_and_environment_match_the_cli_and_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    compose = _compose()
    for name, service in _bridge_services(compose).items():
        parse_kbridge(service["command"], monkeypatch)
        mounted = {volume.split(":")[1] for volume in service.get("volumes", [])}
        mounted |= {f"/run/secrets/{secret}" for secret in service.get("secrets", [])}
        environ = {}
        for variable, raw in service["environment"].items():
            option = _option(variable)
            value = _interpolate(str(raw))
            assert not option.secret, f"{name}: ${variable} is a secret; use a compose secret file instead"
            if option.kind is FILE_PATH:
                assert value in mounted, f"{name}: ${variable} = {value} is not mounted into the service"
                stand_in = tmp_path / Path(value).name
                stand_in.write_text("k" * 32)  # the real file exists only in the container
                value = str(stand_in)
            environ[variable] = value
        config = load_config(None, environ)
        assert config.redis_url.split("//")[1].split(":")[0] == "redis"  # the compose service
        if name == "dispatcher":
            grace = int(service["stop_grace_period"].removesuffix("s"))
            assert grace > config.job_timeout_seconds
