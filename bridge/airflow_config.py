"""The bridge's configuration as the Airflow executor reads it: Airflow's own config first, our file second.

Why a module of its own: Airflow operators configure executors in ``airflow.cfg`` (or ``AIRFLOW__*``
variables), so every bridge option can be given in an ``[kubernetes_redis_bridge]`` section there, under its
own name (``redis_url``, ``namespace``, ``queue_name``, ...; the names are unique across the bridge's
sections). Settings that only make sense in the bridge's own file (the free-form sections such as
``[kubernetes_environment_variables]``) come from the file named by ``kbridge_config`` (or
``$KBRIDGE_CONFIG``), which the dispatchers and the watcher read too.

Precedence, lowest first: defaults, the bridge file, ``KBRIDGE__*`` variables, the Airflow section.

This module does not import Airflow: it reads through the small :class:`AirflowConf` protocol, which
Airflow's ``conf`` (and ``BaseExecutor.conf``) satisfies, so it is tested without Airflow installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from bridge.config import OPTIONS, ConfigError, KubeConfig, Problem, load_config, option_section
from bridge.naming import did_you_mean

SECTION = "kubernetes_redis_bridge"
KBRIDGE_CONFIG = "kbridge_config"
RUNNING_POD_LOG_LINES = "running_pod_log_lines"
DEFAULT_RUNNING_POD_LOG_LINES = 100  # as Airflow's KubernetesExecutor
_OWN_KEYS = (KBRIDGE_CONFIG, RUNNING_POD_LOG_LINES)
_ENV_PREFIX = f"AIRFLOW__{SECTION.upper()}__"
_INDIRECT_SUFFIXES = ("cmd", "secret")  # Airflow's command- and secrets-backend forms of an option


class AirflowConf(Protocol):
    """The part of Airflow's configuration object the executor uses."""

    def has_option(self, section: str, option: str) -> bool: ...

    def get(self, section: str, key: str) -> str | None: ...

    def getsection(self, section: str) -> Mapping[str, object] | None: ...


@dataclass(frozen=True)
class AirflowBridgeSettings:
    config: KubeConfig
    running_pod_log_lines: int = DEFAULT_RUNNING_POD_LOG_LINES


def settings_from_airflow(
    conf: AirflowConf, environ: Mapping[str, str] | None = None
) -> AirflowBridgeSettings:
    """Read ``[kubernetes_redis_bridge]`` and the bridge file; :class:`ConfigError` names every problem."""
    environ = os.environ if environ is None else environ
    origin = f"[{SECTION}] in Airflow's configuration"
    problems = [_unknown(key) for key in sorted(_given_keys(conf, environ) - set(_known_keys()))]
    values = {
        key: value
        for key in _known_keys()
        if conf.has_option(SECTION, key) and (value := conf.get(SECTION, key)) is not None
    }
    lines = _log_lines(values.pop(RUNNING_POD_LOG_LINES, None), problems)
    if problems:
        raise ConfigError(origin, problems)
    bridge_file = values.pop(KBRIDGE_CONFIG, None) or None
    overrides: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        section = option_section(key)
        assert section is not None  # values only holds known keys
        overrides.setdefault(section, {})[key] = value
    config = load_config(bridge_file, environ, overrides=overrides, overrides_origin=origin)
    return AirflowBridgeSettings(config, lines)


def _known_keys() -> list[str]:
    return [*_OWN_KEYS, *(option.key for option in OPTIONS)]


def _given_keys(conf: AirflowConf, environ: Mapping[str, str]) -> set[str]:
    """Every key set in the section: in the file (``getsection``) or as an ``AIRFLOW__...`` variable."""
    keys = {str(key).lower() for key in (conf.getsection(SECTION) or {})}
    keys.update(name[len(_ENV_PREFIX) :].lower() for name in environ if name.startswith(_ENV_PREFIX))
    return keys


def _unknown(key: str) -> Problem:
    subject = f"[{SECTION}] {key}"
    base, _, suffix = key.rpartition("_")
    if suffix in _INDIRECT_SUFFIXES and base in _known_keys():
        # Airflow runs *_cmd and *_secret only for its own sensitive options: the value would be ignored.
        return Problem(
            subject,
            f"{subject}: Airflow does not run _{suffix} for this section's options; set {base} in the bridge "
            f"file (kbridge_config) or as KBRIDGE__<SECTION>__{base.upper()}, which can come from a secret",
        )
    return Problem(subject, f"{subject}: unknown option{did_you_mean(key, _known_keys())}")


def _log_lines(text: str | None, problems: list[Problem]) -> int:
    if text is None:
        return DEFAULT_RUNNING_POD_LOG_LINES
    subject = f"[{SECTION}] {RUNNING_POD_LOG_LINES}"
    try:
        lines = int(text)
    except ValueError:
        lines = 0
    if lines < 1:
        problems.append(Problem(subject, f"{subject}: expected a whole number of lines >= 1, got {text!r}"))
    return lines
