"""Configuration: the option table, the file and docs rendered from it, parsing, and error reports."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli import config_main
from bridge.config import (
    DISPATCHER,
    EXECUTOR,
    FREE_FORM_SECTIONS,
    OPTIONS,
    POD_BUILDER,
    REDACTED,
    WATCHER,
    ConfigError,
    KubeConfig,
    Option,
    SecretRef,
    load_config,
    render_default_file,
    render_reference_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
KBRIDGE = str(Path(sys.executable).with_name("kbridge"))
IMAGE_ENV = {
    "KBRIDGE__KUBERNETES__WORKER_CONTAINER_REPOSITORY": "apache/airflow",
    "KBRIDGE__KUBERNETES__WORKER_CONTAINER_TAG": "3.0.2",
}
IMAGE = {"kubernetes": {"worker_container_repository": "apache/airflow", "worker_container_tag": "3.0.2"}}
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
POD_TEMPLATE = """\
apiVersion: v1
kind: Pod
metadata: {name: ignored}
spec:
  containers:
    - name: base
      image: example.com/worker:1.2
"""


def with_image(section: str, key: str, value: str) -> dict[str, dict[str, str]]:
    """Settings that configure an image (so that problem is absent) plus one option."""
    settings = {"kubernetes": dict(IMAGE["kubernetes"])}
    settings.setdefault(section, {})[key] = value
    return settings


def write(tmp_path: Path, text: str, name: str = "kbridge.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(error: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(error.value.problems)


# --- generated artefacts never drift from the table -----------------------------------------------------


def test_shipped_file_is_exactly_what_the_table_renders() -> None:
    shipped = (ROOT / "config" / "kbridge.cfg").read_text(encoding="utf-8")
    assert shipped == render_default_file(), (
        "regenerate: kbridge config --print-defaults > config/kbridge.cfg"
    )


def test_docs_reference_is_exactly_what_the_table_renders() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert docs.count(START) == 1
    assert docs.count(END) == 1
    assert docs.split(START)[1].split(END)[0] == render_reference_markdown()


def test_shipped_file_loads_to_the_built_in_defaults() -> None:
    from_file = load_config(ROOT / "config" / "kbridge.cfg", environ=IMAGE_ENV)
    from_defaults = load_config(environ=IMAGE_ENV)
    assert from_file.as_dict() == from_defaults.as_dict()


def test_every_option_is_documented_and_typed_on_kubeconfig() -> None:
    keys = [option.key for option in OPTIONS]
    assert len(keys) == len(set(keys)), "option keys become attribute names, so they must be unique"
    annotated = set(KubeConfig.__annotations__)
    assert set(keys) | {section.name for section in FREE_FORM_SECTIONS} <= annotated
    reference, shipped = render_reference_markdown(), render_default_file()
    for option in OPTIONS:
        assert option.help
        assert option.read_by, f"{option.key}: say which process reads it"
        assert set(option.read_by) <= {POD_BUILDER, DISPATCHER, WATCHER, EXECUTOR}
        assert f"`{option.key}`" in reference
        assert f"\n{option.key} =" in shipped


# --- parsing --------------------------------------------------------------------------------------------


def test_values_are_parsed_into_typed_attributes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[kubernetes]
worker_container_repository = apache/airflow
worker_container_tag = 3.0.2
delete_worker_pods = no
run_as_user = 50000
image_pull_secrets = regcred, other-cred ,
affinity = {"nodeAffinity": {}}
tolerations = [{"key": "gpu", "operator": "Exists"}]
kube_client_request_args = {"_request_timeout": [5, 60]}
delete_option_kwargs = {"grace_period_seconds": 10}
[kubernetes_secrets]
SQL_CONN = airflow-db=sql_alchemy_conn
""",
    )
    config = load_config(path, environ={})
    assert config.delete_worker_pods is False
    assert config.run_as_user == 50000
    assert config.fs_group is None
    assert config.security_context() == {"runAsUser": 50000}
    assert config.image_pull_secrets == ["regcred", "other-cred"]
    assert config.affinity == {"nodeAffinity": {}}
    assert config.tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert config.kube_client_request_args == {"_request_timeout": (5, 60)}, "a list becomes a tuple"
    assert config.delete_option_kwargs == {"grace_period_seconds": 10}
    assert config.kubernetes_secrets == {"SQL_CONN": SecretRef("airflow-db", "sql_alchemy_conn")}
    assert config.kube_image == "apache/airflow:3.0.2"
    assert config.result_stream == "kbridge:results", "an empty result_stream follows key_prefix"


def test_environment_overrides_file_and_section_and_key_case_do_not_matter(tmp_path: Path) -> None:
    path = write(tmp_path, "[Kubernetes]\nNameSpace = from-file\ntcp_keep_cnt = 3\n")
    config = load_config(path, environ={**IMAGE_ENV, "KBRIDGE__kubernetes__Namespace": "from-env"})
    assert config.namespace == "from-env"
    assert config.tcp_keep_cnt == 3


def test_config_path_comes_from_kbridge_config_when_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[kubernetes]\nnamespace = team-a\n")
    config = load_config(environ={**IMAGE_ENV, "KBRIDGE_CONFIG": str(path)})
    assert config.namespace == "team-a"


def test_free_form_keys_keep_their_case_and_percent_is_literal(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[kubernetes_environment_variables]\nMixed_Case = 100%\n[kubernetes_labels]\nTeam = A\n"
    )
    env = {**IMAGE_ENV, "KBRIDGE__KUBERNETES_ENVIRONMENT_VARIABLES__lower_Var": "%(x)s"}
    config = load_config(path, environ=env)
    assert config.kubernetes_environment_variables == {"Mixed_Case": "100%", "lower_Var": "%(x)s"}
    assert config.kubernetes_labels == {"Team": "A"}


def test_a_default_section_does_not_leak_into_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nnamespace = leaked\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=IMAGE_ENV)
    assert "[DEFAULT]: unknown section" in problems_of(error)


def test_kubeconfig_accepts_settings_for_embedding_and_tests() -> None:
    config = KubeConfig({**IMAGE, "bridge": {"key_prefix": "blue"}})
    assert config.key_prefix == "blue"
    assert config.result_stream == "blue:results"


def test_kubeconfig_settings_must_be_text_as_in_a_file() -> None:
    not_text: dict[str, dict[str, Any]] = {"kubernetes": {"run_as_user": 50000, "in_cluster": False}}
    with pytest.raises(ConfigError) as error:
        KubeConfig(not_text)
    assert error.value.problems == [
        "[kubernetes] run_as_user: expected text, got int 50000; quote it: '50000'",
        "[kubernetes] in_cluster: expected text, got bool False; quote it: 'False'",
    ]


@pytest.mark.parametrize("section", ["bridge", "Bridge", "bridg"])
def test_a_secret_given_as_non_text_is_not_echoed(section: str) -> None:
    key = 12345678901234567890123456789012345
    with pytest.raises(ConfigError) as error:
        KubeConfig({section: {"SIGNING_KEY": key}})  # type: ignore[dict-item]
    assert str(key) not in str(error.value)
    assert "signing_key" in str(error.value).lower()
    assert "quote it" in str(error.value)


# A valid value other than the default for every option ("<...>" names a file made by sample_files), used
# here to prove each option can be set from the environment, and in test_worker_pod to prove that options
# the pod builder does not read leave pods alone.
SAMPLE_VALUES: dict[str, str] = {
    "log_level": "DEBUG",
    "namespace": "team-a",
    "worker_container_repository": "example.com/worker",
    "worker_container_tag": "7",
    "worker_container_image_pull_policy": "Always",
    "pod_template_file": "<template>",
    "worker_service_account_name": "airflow-worker",
    "image_pull_secrets": "regcred",
    "run_as_user": "50000",
    "run_as_group": "0",
    "fs_group": "2000",
    "affinity": '{"nodeAffinity": {}}',
    "tolerations": '[{"key": "gpu", "operator": "Exists"}]',
    "delete_worker_pods": "False",
    "delete_worker_pods_on_failure": "True",
    "worker_pods_pending_timeout": "60",
    "worker_pod_pending_fatal_container_state_reasons": "ErrImagePull",
    "task_publish_max_retries": "0",
    "in_cluster": "False",
    "cluster_context": "kind-dev",
    "config_file": "<file>",
    "verify_ssl": "False",
    "ssl_ca_cert": "<file>",
    "kube_client_request_args": '{"_request_timeout": [5, 60]}',
    "delete_option_kwargs": '{"grace_period_seconds": 10}',
    "request_timeout_seconds": "5",
    "watch_timeout_seconds": "60",
    "enable_tcp_keepalive": "False",
    "tcp_keep_idle": "60",
    "tcp_keep_intvl": "10",
    "tcp_keep_cnt": "3",
    "redis_url": "redis://redis.example:6380/1",
    "queue_name": "other-queue",
    "key_prefix": "blue",
    "result_stream": "blue:outcomes",
    "signing_key": "k" * 40,
    "signing_key_file": "<key file>",
    "consumer_group": "scheduler-b",
    "consumer_name": "scheduler-host-2",
    "result_batch_size": "50",
    "job_timeout_seconds": "300",
    "dispatch_deadline_seconds": "20",
    "dispatcher_lease_seconds": "30",
    "watcher_lease_seconds": "40",
    "record_ttl_seconds": "3600",
    "launch_secret_ttl_seconds": "600",
}
# Options that are only valid together with another one.
COMPANIONS = {
    "job_timeout_seconds": "dispatch_deadline_seconds",
    "worker_container_repository": "worker_container_tag",
    "worker_container_tag": "worker_container_repository",
    "cluster_context": "in_cluster",
    "config_file": "in_cluster",
}
SECTION_OF = {option.key: option.section for option in OPTIONS}


def sample_files(tmp_path: Path) -> dict[str, str]:
    return {
        "<template>": str(write(tmp_path, POD_TEMPLATE, "pod.yaml")),
        "<file>": str(write(tmp_path, "any content\n", "some.file")),
        "<key file>": str(write(tmp_path, "f" * 40 + "\n", "signing.key")),
    }


def sample_settings(key: str, files: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{section: {option: text}}`` setting ``key`` (and any companion) to its sample value."""
    settings: dict[str, dict[str, str]] = {}
    for name in filter(None, (key, COMPANIONS.get(key))):
        settings.setdefault(SECTION_OF[name], {})[name] = files.get(SAMPLE_VALUES[name], SAMPLE_VALUES[name])
    return settings


def test_every_option_has_a_sample_value() -> None:
    assert set(SAMPLE_VALUES) == set(SECTION_OF)


@pytest.mark.parametrize("key", sorted(SAMPLE_VALUES))
def test_every_option_can_be_set_from_the_environment(key: str, tmp_path: Path) -> None:
    settings = sample_settings(key, sample_files(tmp_path))
    environ = {
        f"KBRIDGE__{section.upper()}__{name.upper()}": text
        for section, entries in settings.items()
        for name, text in entries.items()
    }
    from_environment, from_settings = load_config(environ=environ), KubeConfig(settings)
    assert getattr(from_environment, key) == getattr(from_settings, key)
    assert getattr(from_environment, key) != getattr(KubeConfig(), key), (
        "the sample must differ from the default"
    )
    assert from_environment.as_dict() == from_settings.as_dict()


def test_a_launch_secret_must_be_allowed_to_wait_at_least_a_second() -> None:
    assert KubeConfig().launch_secret_ttl_seconds == 3600
    with pytest.raises(ConfigError) as error:
        KubeConfig({"bridge": {"launch_secret_ttl_seconds": "0"}})
    assert error.value.problems == ["[bridge] launch_secret_ttl_seconds = '0': expected an integer 1..604800"]


# section: (key, value in the file, value in the environment, parsed value from the environment)
FREE_FORM_SAMPLES = {
    "kubernetes_labels": ("example.com/team", "data", "ml", "ml"),
    "kubernetes_annotations": ("example.com/owner", "data team", "ml team", "ml team"),
    "kubernetes_node_selectors": ("disktype", "hdd", "ssd", "ssd"),
    "kubernetes_environment_variables": ("AIRFLOW__CORE__DEBUG", "False", "True", "True"),
    "kubernetes_secrets": ("DB_CONN", "airflow-db=conn", "other-db=url", SecretRef("other-db", "url")),
}


@pytest.mark.parametrize("section", sorted(FREE_FORM_SAMPLES))
def test_every_free_form_section_can_be_extended_and_overridden_from_the_environment(
    section: str, tmp_path: Path
) -> None:
    key, in_file, in_environment, parsed = FREE_FORM_SAMPLES[section]
    path = write(tmp_path, f"[{section}]\n{key} = {in_file}\nFROM_FILE = {in_file}\n")
    prefix = f"KBRIDGE__{section.upper()}__"  # the key after it keeps its case and may contain "__"
    config = load_config(path, environ={prefix + key: in_environment, prefix + "FROM_ENV": in_environment})
    entries = getattr(config, section)
    assert set(entries) == {key, "FROM_FILE", "FROM_ENV"}
    assert entries[key] == entries["FROM_ENV"] == parsed


def test_kubeconfig_keeps_the_airflow_1_10_surface(tmp_path: Path) -> None:
    """The seed's KubeConfig: no-argument constructor, section names, _get_security_context_val, _validate."""
    assert (KubeConfig.core_section, KubeConfig.kubernetes_section) == ("core", "kubernetes")
    defaults = KubeConfig()
    assert defaults.namespace == "default"
    assert defaults._get_security_context_val("run_as_user") is None
    assert KubeConfig({"kubernetes": {"fs_group": "2000"}})._get_security_context_val("fs_group") == 2000
    key_file = write(tmp_path, "f" * 40, "signing.key")
    config = KubeConfig({**IMAGE, "bridge": {"signing_key_file": str(key_file)}})
    config._validate()
    config._validate()  # only checks: calling it again finds nothing new and changes nothing
    assert config.signing_key == "f" * 40
    config.worker_container_tag = ""
    with pytest.raises(
        ConfigError, match="set worker_container_repository and worker_container_tag together"
    ):
        config._validate()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"_request_timeout": [5, 60]}', {"_request_timeout": (5, 60)}),
        (
            '{"_request_timeout": 2.5, "_preload_content": true}',
            {"_request_timeout": 2.5, "_preload_content": True},
        ),
        ("{}", {}),
    ],
)
def test_request_timeout_list_becomes_the_tuple_the_client_reads_as_connect_read(
    text: str, expected: dict[str, object]
) -> None:
    config = KubeConfig({"kubernetes": {"kube_client_request_args": text}})
    assert config.kube_client_request_args == expected
    assert json.loads(json.dumps(config.as_dict()["kubernetes"]["kube_client_request_args"])) == json.loads(
        text
    )


@pytest.mark.parametrize("timeout", ["[5]", "[5, 60, 90]", '"5"', "[0, 5]", "true", "-1", "[5, null]"])
def test_request_timeout_of_a_shape_the_client_would_ignore_is_an_error(timeout: str) -> None:
    text = f'{{"_request_timeout": {timeout}}}'
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes": {"kube_client_request_args": text}})
    assert error.value.problems == [
        f"[kubernetes] kube_client_request_args = {text!r}: expected _request_timeout to be seconds > 0 or "
        f"[connect, read] seconds, got {json.loads(timeout)!r}"
    ]


# --- error reporting -----------------------------------------------------------------------------------

BAD_VALUES = [
    ("kubernetes", "namespace", "Team_A", "DNS-1123 label"),
    ("kubernetes", "worker_container_image_pull_policy", "always", "Always, IfNotPresent, Never"),
    ("kubernetes", "delete_worker_pods", "maybe", "true or false"),
    ("kubernetes", "tcp_keep_cnt", "0", "integer 1..127"),
    ("kubernetes", "run_as_user", "-1", "integer 0..2147483647"),
    ("kubernetes", "affinity", '{"node_affinity": {}}', "did you mean 'nodeAffinity'"),
    ("kubernetes", "tolerations", '{"key": "gpu"}', "JSON list of toleration objects"),
    ("kubernetes", "tolerations", '[{"operator": "Sometimes"}]', "operator Equal or Exists"),
    ("kubernetes", "kube_client_request_args", "{not json", "expected JSON"),
    ("kubernetes", "delete_option_kwargs", '{"grace_period": 1}', "did you mean 'grace_period_seconds'"),
    ("kubernetes", "image_pull_secrets", "ok,Not_OK", "Not_OK"),
    ("kubernetes", "worker_service_account_name", "Bad Name", "Kubernetes object name"),
    ("kubernetes", "pod_template_file", "/does/not/exist.yaml", "existing, readable file"),
    ("kubernetes", "ssl_ca_cert", "~no-such-user-kbridge/ca.pem", "existing, readable file"),
    ("bridge", "redis_url", "http://redis:6380", "redis://, rediss:// (TLS) or unix://"),
    ("bridge", "key_prefix", "-bad-", "label value"),
    ("bridge", "queue_name", "my queue", "letters, digits"),
    ("kubernetes_labels", "team", "not a label value", "label value"),
    ("kubernetes_labels", "bad key!", "x", "label key"),
    ("kubernetes_annotations", "/no-prefix", "x", "annotation key"),
    ("kubernetes_node_selectors", "disktype", "s s d", "label value"),
    ("kubernetes_environment_variables", "1ST", "x", "environment variable name"),
    ("kubernetes_secrets", "DB", "no-equals-sign", "secret_name=key"),
    ("kubernetes_secrets", "DB", "Upper=key", "secret_name=key"),
]


# Each option once, with the first bad value BAD_VALUES gives it.
BAD_FILE_ENTRIES = {(section, key): value for section, key, value, _ in reversed(BAD_VALUES)}


def write_bad_file(tmp_path: Path) -> Path:
    sections: dict[str, list[str]] = {}
    for (section, key), value in BAD_FILE_ENTRIES.items():
        sections.setdefault(section, []).append(f"{key} = {value}")
    return write(
        tmp_path, "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())
    )


def test_every_bad_option_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write_bad_file(tmp_path), environ=IMAGE_ENV)
    assert len(error.value.problems) == len(BAD_FILE_ENTRIES), error.value.problems
    for section, key in BAD_FILE_ENTRIES:
        assert any(problem.startswith(f"[{section}] {key} = ") for problem in error.value.problems)


def test_more_problems_than_a_screen_holds_are_still_all_named_on_one_screen() -> None:
    typos = {f"typo_{number:02}": "x" for number in range(60)}
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes": typos})
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid configuration (settings), 60 problems:"
    assert len(lines) <= 25
    assert len(error.value.problems) == 60, "the full list stays available to programs"
    listed = [line for line in lines if line.startswith("  - [kubernetes] typo_")]
    assert listed, "as many problems as fit are shown in full"
    assert all(len(line) <= 100 for line in lines[len(listed) + 1 :])
    for key in typos:
        assert f"[kubernetes] {key}" in str(error.value)


def test_when_even_the_names_do_not_fit_the_screen_says_how_many_are_left_out() -> None:
    labels = {f"team-{number:03}": "not a label value" for number in range(150)}
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes_labels": labels})
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid configuration (settings), 150 problems:"
    assert len(lines) <= 25
    assert lines[2].startswith("  - and 149 more problems"), "one problem in full, then the summary"
    assert max(map(len, lines[2:])) <= 100
    named = sum(f"[kubernetes_labels] {key}" in str(error.value) for key in labels)
    omitted = re.search(r"… and (\d+) more not named", " ".join(lines))
    assert omitted is not None, "the last line counts the problems it could not name"
    assert named + int(omitted[1]) == 150, "every problem is either named or counted"


@pytest.mark.parametrize(("section", "key", "value", "expected"), BAD_VALUES)
def test_bad_value_message_names_option_value_and_fix(
    section: str, key: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        KubeConfig(with_image(section, key, value))
    assert len(error.value.problems) == 1, error.value.problems
    problem = error.value.problems[0]
    assert problem.startswith(f"[{section}] {key}")
    assert repr(value) in problem
    assert expected in problem


def test_all_problems_of_one_file_are_listed_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[kubernetes]
namespace = Bad_NS
namspace = typo
tcp_keep_idle = forever
[bridge]
redis_url = http://x
[kubernets_labels]
a = b
""",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={"KBRIDGE__KUBERNETES__TCP_KEEP_CNT": "500"})
    text = str(error.value)
    assert len(error.value.problems) == 6, text
    assert "did you mean 'namespace'" in text
    assert "did you mean 'kubernetes_labels'" in text
    assert "[kubernetes] tcp_keep_cnt (from $KBRIDGE__KUBERNETES__TCP_KEEP_CNT) = '500'" in text
    assert "[kubernetes] namespace = 'Bad_NS'" in text, "the header names the file; lines name other origins"
    assert str(path) not in text.split("\n", 1)[1]


def test_unknown_environment_overrides_are_problems_too() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ={**IMAGE_ENV, "KBRIDGE__BRIDGE__REDIS": "x", "KBRIDGE__NOSECTION": "y"})
    text = problems_of(error)
    assert "[bridge] REDIS (from $KBRIDGE__BRIDGE__REDIS): unknown option (did you mean 'redis_url'?)" in text
    assert "$KBRIDGE__NOSECTION: expected KBRIDGE__<SECTION>__<KEY>" in text


def test_missing_file_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ={"KBRIDGE_CONFIG": "/nowhere/kbridge.cfg"})
    assert "$KBRIDGE_CONFIG '/nowhere/kbridge.cfg' is not an existing" in problems_of(error)


def test_shipped_defaults_load_without_any_image() -> None:
    """A task's executor_config may bring its image, so none is required globally (the pod builder checks)."""
    config = load_config(environ={})
    assert config.kube_image is None
    assert config.namespace == "default"


def test_ini_syntax_errors_are_reported_not_raised(tmp_path: Path) -> None:
    path = write(tmp_path, "[kubernetes]\nnamespace = a\nnamespace = b\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=IMAGE_ENV)
    assert "is not a valid INI file" in problems_of(error)
    assert "namespace" in problems_of(error)


def test_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "latin1.cfg"
    path.write_bytes(b"[kubernetes]\nnamespace = caf\xe9\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=IMAGE_ENV)
    assert error.value.problems[0].startswith(f"{path}: cannot be read")
    assert "UTF-8" in error.value.problems[0]


def test_cross_option_checks(tmp_path: Path) -> None:
    kubeconfig = write(tmp_path, "apiVersion: v1\n", "kubeconfig")
    with pytest.raises(ConfigError) as error:
        KubeConfig(
            {
                "kubernetes": {
                    "worker_container_repository": "apache/airflow",
                    "config_file": str(kubeconfig),
                },
            }
        )
    text = problems_of(error)
    assert "set worker_container_repository and worker_container_tag together" in text
    assert "config_file" in text
    assert "ignored while in_cluster = True" in text


# --- pod template file ----------------------------------------------------------------------------------


def test_pod_template_supplies_the_image_and_is_loaded_once(tmp_path: Path) -> None:
    template = write(tmp_path, POD_TEMPLATE, "pod.yaml")
    config = KubeConfig({"kubernetes": {"pod_template_file": str(template)}})
    assert config.kube_image is None
    assert config.pod_template is not None
    assert config.pod_template["spec"]["containers"][0]["image"] == "example.com/worker:1.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed", "is not valid YAML"),
        ("\0", "is not valid YAML"),
        ("- just\n- a list\n", "is a list, not a pod"),
        ("kind: Deployment\napiVersion: apps/v1\n", "has kind 'Deployment'"),
        ("spec: {containers: {name: base}}\n", "'containers' must be a list of mappings"),
    ],
)
def test_bad_pod_template_is_a_problem_naming_the_option(tmp_path: Path, text: str, expected: str) -> None:
    template = write(tmp_path, text, "pod.yaml")
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes": {"pod_template_file": str(template)}})
    assert len(error.value.problems) == 1
    assert "pod_template_file" in error.value.problems[0]
    assert expected in error.value.problems[0]


@pytest.mark.parametrize(
    ("text", "position"),
    [
        # An unclosed quote is noticed at the end of the file; the context says where it opened.
        ("spec:\n  containers: []\n  x: 'hunter2\n", "line 4, column 1, while scanning a quoted scalar"),
        ("metadata:\n  name: pod\n password: hunter2\n", "line 3, column 2"),  # the bad indent
        ("spec:\n  x: !hunter2 y\n", "line 2, column 6"),  # the unknown tag
        ('spec:\n  x: "\\qhunter2"\n', "line 2, column 8"),  # the character after the backslash
    ],
)
def test_pod_template_yaml_error_gives_line_and_column_never_the_file_text(
    tmp_path: Path, text: str, position: str
) -> None:
    """The path may come from a DAG author and the message become a task's failure reason."""
    template = write(tmp_path, text, "pod.yaml")
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes": {"pod_template_file": str(template)}})
    assert "is not valid YAML" in str(error.value)
    assert position in str(error.value)
    assert "hunter2" not in str(error.value)


def test_pod_template_of_the_wrong_shape_names_the_field_never_its_value(tmp_path: Path) -> None:
    template = write(tmp_path, "spec: hunter2\n", "pod.yaml")
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes": {"pod_template_file": str(template)}})
    assert "field 'spec' must be a mapping, got a str" in str(error.value)
    assert "hunter2" not in str(error.value)


# --- secrets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "DB_PASSWORD",
        "password",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "OPENAI_APIKEY",
        "my.service-credentials",
        "AIRFLOW__CORE__SQL_ALCHEMY_CONN",
        "AIRFLOW_CONN_WAREHOUSE",
    ],
)
def test_a_variable_named_like_a_secret_must_come_from_a_secret(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        KubeConfig({"kubernetes_environment_variables": {name: "hunter2"}})
    [problem] = error.value.problems
    assert problem.startswith(f"[kubernetes_environment_variables] {name} = ")
    assert f"[kubernetes_secrets] as {name} = secret_name=key" in problem
    config = KubeConfig({"kubernetes_secrets": {name: "db=value"}})
    assert config.kubernetes_secrets == {name: SecretRef("db", "value")}, "the fix it names works"


@pytest.mark.parametrize(
    "name", ["AIRFLOW__CORE__DEBUG", "CONNECTIONS", "LOG_LEVEL", "TOKENIZER_MODEL", "SECRETARY_EMAIL"]
)
def test_ordinary_variable_names_stay_plain_values(name: str) -> None:
    config = KubeConfig({"kubernetes_environment_variables": {name: "x"}})
    assert config.kubernetes_environment_variables == {name: "x"}


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ("bridge", "signing_key", REDACTED),
        ("bridge", "redis_url", f"redis://:{REDACTED}@redis:6380/0"),
        ("bridge", "redis_url", f"redis://redis:6380/0?password={REDACTED}"),
    ],
)
def test_the_redaction_placeholder_never_loads_as_a_secret(section: str, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        KubeConfig({section: {key: text}})
    [problem] = error.value.problems
    assert problem.startswith(f"[{section}] {key} = ")
    assert "placeholder `kbridge config` prints instead of a secret; put the real one back" in problem


SIGNING_KEY = "k" * 40


def test_signing_key_is_redacted_in_settings_and_errors() -> None:
    config = KubeConfig({**IMAGE, "bridge": {"signing_key": SIGNING_KEY}})
    assert config.signing_key == SIGNING_KEY
    shown = json.dumps(config.as_dict())
    assert SIGNING_KEY not in shown
    assert config.as_dict()["bridge"]["signing_key"] == REDACTED
    with pytest.raises(ConfigError) as error:
        KubeConfig({**IMAGE, "bridge": {"signing_key": "short-secret"}})
    assert "short-secret" not in str(error.value)
    assert "at least 32 characters" in str(error.value)


def test_signing_key_from_file_or_environment(tmp_path: Path) -> None:
    key_file = write(tmp_path, SIGNING_KEY + "\n", "signing.key")
    assert KubeConfig({**IMAGE, "bridge": {"signing_key_file": str(key_file)}}).signing_key == SIGNING_KEY
    from_env = load_config(environ={**IMAGE_ENV, "KBRIDGE__BRIDGE__SIGNING_KEY": SIGNING_KEY})
    assert from_env.signing_key == SIGNING_KEY
    with pytest.raises(ConfigError, match="keep one"):
        KubeConfig({**IMAGE, "bridge": {"signing_key": SIGNING_KEY, "signing_key_file": str(key_file)}})


def test_unusable_signing_key_file_is_one_clear_problem(tmp_path: Path) -> None:
    empty = write(tmp_path, "\n", "empty.key")
    with pytest.raises(ConfigError) as error:
        KubeConfig({**IMAGE, "bridge": {"signing_key_file": str(empty)}})
    assert error.value.problems == [f"[bridge] signing_key_file = {str(empty)!r}: the file is empty"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://user:hunter2@redis.example:6380/1", f"rediss://user:{REDACTED}@redis.example:6380/1"),
        ("redis://:hunter2@redis:6380", f"redis://:{REDACTED}@redis:6380"),
        ("redis://redis:6380/0?password=hunter2&ssl=1", f"redis://redis:6380/0?password={REDACTED}&ssl=1"),
        ("unix:///run/redis.sock?db=0&Password=hunter2", f"unix:///run/redis.sock?db=0&Password={REDACTED}"),
        ("redis://redis:6380/0", "redis://redis:6380/0"),
        # Unescaped '/', '#', '?' and '@' in a password end the authority early for a URL parser.
        ("redis://:s3cr/et@h:6379/0", f"redis://:{REDACTED}@h:6379/0"),
        ("redis://:s3cr#et@h:6379/0", f"redis://:{REDACTED}@h:6379/0"),
        ("redis://:s3cr?et@h:6379/0", f"redis://:{REDACTED}@h:6379/0"),
        ("rediss://user:p@ss@h", f"rediss://user:{REDACTED}@h"),
        ("rediss://user:a/b#c?d@e@h:6380/1?ssl=1", f"rediss://user:{REDACTED}@h:6380/1?ssl=1"),
        ("redis://only-a-token@h", f"redis://{REDACTED}@h"),
    ],
)
def test_password_in_redis_url_is_redacted(url: str, shown: str) -> None:
    config = KubeConfig({"bridge": {"redis_url": url}})
    assert config.redis_url == url, "the real value is kept for use"
    assert config.as_dict()["bridge"]["redis_url"] == shown


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@redis:6380",
        "redis://[::1:hunter2@x",
        "x?password=hunter2",
        "http://:hun/ter2@redis:6380",
    ],
)
def test_password_in_a_bad_redis_url_is_not_echoed_by_the_error(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        KubeConfig({"bridge": {"redis_url": url}})
    assert error.value.problems[0].startswith("[bridge] redis_url = ")
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("signing_key = hunter2-hunter2-hunter2-hunter2-1234\n", "line 1: expected a [section] header"),
        ("[bridge]\nsigning_key =\nhunter2-hunter2-hunter2-hunter2-1234\n", "line 3: expected 'key = value'"),
    ],
)
def test_ini_syntax_error_names_the_line_without_quoting_it(tmp_path: Path, text: str, expected: str) -> None:
    """The parser's own message quotes the bad line, which may be a pasted secret."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert error.value.problems == [f"{path}: {expected}" + error.value.problems[0].split(expected, 1)[1]]
    assert "hunter2" not in str(error.value)


# --- robustness -----------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(option=st.sampled_from(OPTIONS), value=st.text(max_size=40))
def test_any_text_for_any_option_loads_or_gives_a_config_error(option: Option, value: str) -> None:
    try:
        config = KubeConfig(with_image(option.section, option.key, value))
    except ConfigError as error:
        problems = error.problems
    else:
        json.dumps(config.as_dict())  # effective settings are always printable
        return
    assert any(option.key in problem for problem in problems), problems


# --- the command ----------------------------------------------------------------------------------------


def test_kbridge_config_prints_defaults_and_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_main(["--print-defaults"]) == 0
    assert capsys.readouterr().out == render_default_file()
    path = write(
        tmp_path,
        "[kubernetes]\nworker_container_repository = r\nworker_container_tag = t\n"
        "[bridge]\nredis_url = redis://user:redis-password@redis:6380/0?password=query-password\n"
        "[kubernetes_secrets]\nSQL_CONN = airflow-db=sql_alchemy_conn\n",
    )
    monkeypatch.setenv("KBRIDGE__BRIDGE__SIGNING_KEY", SIGNING_KEY)
    for output in (["--json"], []):
        assert config_main(["--config", str(path), *output]) == 0
        printed = capsys.readouterr().out
        for secret in (SIGNING_KEY, "redis-password", "query-password"):
            assert secret not in printed
        assert "airflow-db=sql_alchemy_conn" in printed, "a Secret reference is not itself a secret"
    assert config_main(["--config", str(path), "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["kubernetes"]["worker_container_repository"] == "r"
    assert settings["bridge"]["signing_key"] == REDACTED


def test_console_script_reports_a_file_full_of_errors_on_one_screen_without_traceback(tmp_path: Path) -> None:
    path = write_bad_file(tmp_path)
    result = subprocess.run(
        [KBRIDGE, "config", "--config", str(path)], capture_output=True, text=True, check=False, env={}
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"kbridge config: invalid configuration ({path}), {len(BAD_FILE_ENTRIES)} problems:"
    assert len(lines) <= 25
    assert max(map(len, lines[1:])) <= 180, "each problem fits two lines of a wide terminal"
    for section, key in BAD_FILE_ENTRIES:
        assert sum(line.startswith(f"  - [{section}] {key} = ") for line in lines) == 1, key


def test_the_dispatch_deadline_must_fit_inside_the_job_timeout() -> None:
    settings = {"bridge": {"job_timeout_seconds": "60", "dispatch_deadline_seconds": "60"}}
    with pytest.raises(
        ConfigError, match=r"dispatch_deadline_seconds = '60': must be below job_timeout_seconds \(60\)"
    ):
        KubeConfig(settings)
    assert KubeConfig({"bridge": {"job_timeout_seconds": "61", "dispatch_deadline_seconds": "60"}})


def test_the_consumer_name_defaults_to_the_host_name() -> None:
    assert KubeConfig().consumer_name == socket.gethostname()
    assert KubeConfig({"bridge": {"consumer_name": "scheduler-1"}}).consumer_name == "scheduler-1"
