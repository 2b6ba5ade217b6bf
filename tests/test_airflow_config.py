"""How the Airflow executor reads the bridge's settings, without Airflow: a dict stands in for its ``conf``.

(The same function against Airflow's real ``conf`` is covered by tests/airflow, run by ``make test-airflow``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge.airflow_config import DEFAULT_RUNNING_POD_LOG_LINES, SECTION, settings_from_airflow
from bridge.config import ConfigError


class DictConf:
    """Airflow's ``conf`` reduced to what the protocol asks: options given in the file's section."""

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = {key.lower(): value for key, value in (options or {}).items()}

    def has_option(self, section: str, option: str) -> bool:
        return section == SECTION and option in self.options

    def get(self, section: str, key: str) -> str | None:
        return self.options.get(key) if section == SECTION else None

    def getsection(self, section: str) -> Mapping[str, object] | None:
        return dict(self.options) if section == SECTION and self.options else None


def test_options_go_to_their_own_sections_and_win_over_the_bridge_file(tmp_path: Path) -> None:
    bridge_file = tmp_path / "kbridge.cfg"
    bridge_file.write_text("[bridge]\nredis_url = redis://from-file:6380/2\nqueue_name = from-file\n")
    conf = DictConf(
        {"kbridge_config": str(bridge_file), "queue_name": "airflow", "namespace": "airflow-pods"}
    )

    settings = settings_from_airflow(conf, environ={})

    assert settings.config.redis_url == "redis://from-file:6380/2"  # only in the file
    assert settings.config.queue_name == "airflow"  # Airflow's section wins
    assert settings.config.namespace == "airflow-pods"  # a [kubernetes] option, by its name alone
    assert settings.running_pod_log_lines == DEFAULT_RUNNING_POD_LOG_LINES


def test_bridge_environment_variables_sit_between_the_file_and_airflow() -> None:
    environ = {"KBRIDGE__BRIDGE__QUEUE_NAME": "from-env", "KBRIDGE__BRIDGE__KEY_PREFIX": "env-prefix"}
    settings = settings_from_airflow(DictConf({"queue_name": "airflow"}), environ=environ)
    assert settings.config.queue_name == "airflow"
    assert settings.config.key_prefix == "env-prefix"


def test_unknown_keys_are_named_with_a_suggestion_whether_in_the_file_or_the_environment() -> None:
    environ = {f"AIRFLOW__{SECTION.upper()}__NAMESPCE": "x"}
    with pytest.raises(ConfigError) as raised:
        settings_from_airflow(DictConf({"redis_ulr": "redis://x"}), environ=environ)
    assert raised.value.problems == [
        f"[{SECTION}] namespce: unknown option (did you mean 'namespace'?)",
        f"[{SECTION}] redis_ulr: unknown option (did you mean 'redis_url'?)",
    ]


def test_bad_values_are_reported_as_coming_from_airflows_configuration() -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_airflow(DictConf({"result_batch_size": "lots"}), environ={})
    assert f"[{SECTION}] in Airflow's configuration" in str(raised.value)
    assert any("result_batch_size" in problem for problem in raised.value.problems)


@pytest.mark.parametrize("lines", ["0", "-5", "many"])
def test_running_pod_log_lines_must_be_a_positive_number(lines: str) -> None:
    with pytest.raises(ConfigError, match="running_pod_log_lines: expected a whole number of lines >= 1"):
        settings_from_airflow(DictConf({"running_pod_log_lines": lines}), environ={})


def test_a_missing_bridge_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"/nowhere/kbridge\.cfg"):
        settings_from_airflow(DictConf({"kbridge_config": "/nowhere/kbridge.cfg"}), environ={})


@pytest.mark.parametrize("form", ["cmd", "secret"])
def test_cmd_and_secret_forms_are_refused_not_silently_ignored(form: str) -> None:
    environ = {f"AIRFLOW__{SECTION.upper()}__REDIS_URL_{form.upper()}": "cat /run/redis-url"}
    with pytest.raises(ConfigError) as raised:
        settings_from_airflow(DictConf(), environ=environ)
    [problem] = raised.value.problems
    assert problem.startswith(f"[{SECTION}] redis_url_{form}: Airflow does not run _{form}")
    assert "KBRIDGE__<SECTION>__REDIS_URL" in problem
