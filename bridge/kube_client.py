"""The Kubernetes API client of one worker process, built from the bridge's configuration.

Why not ``kubernetes.config.load_kube_config()``: that mutates the client library's global default
configuration, which a test (or an embedding program) running two clusters cannot afford. Each process
builds one isolated ``Configuration`` and keeps one ``ApiClient`` (and its connection pool) for its lifetime.
TCP keepalive is switched on here because a watch that silently lost its peer would otherwise wait forever.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config_loader
from urllib3.connection import HTTPConnection

from bridge.config import KubeConfig

POOL_SIZE = 8
# Failed API calls (and the watcher's Redis calls) are retried after exponentially growing pauses, with
# jitter so that several workers do not retry in step.
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0


def backoff_seconds(attempt: int) -> float:
    """The pause before retry ``attempt`` (1, 2, ...): doubling from the first to the longest, jittered."""
    delay = min(BACKOFF_FIRST_SECONDS * 2.0 ** min(attempt - 1, 32), BACKOFF_MAX_SECONDS)
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


def keepalive_socket_options(config: KubeConfig) -> list[tuple[int, int, int]]:
    """urllib3 socket options that make an idle connection probe its peer (Linux names when present)."""
    options = list(HTTPConnection.default_socket_options)
    if not config.enable_tcp_keepalive:
        return options
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (
        ("TCP_KEEPIDLE", config.tcp_keep_idle),
        ("TCP_KEEPINTVL", config.tcp_keep_intvl),
        ("TCP_KEEPCNT", config.tcp_keep_cnt),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def api_configuration(config: KubeConfig) -> client.Configuration:
    """An isolated client configuration: in-cluster service account, or kubeconfig file and context."""
    configuration = client.Configuration()
    if config.in_cluster:
        kube_config_loader.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        kube_config_loader.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(config.config_file) if config.config_file else None,
            context=config.cluster_context or None,
            client_configuration=configuration,
            persist_config=False,
        )
    configuration.verify_ssl = config.verify_ssl
    if config.ssl_ca_cert is not None:
        configuration.ssl_ca_cert = str(config.ssl_ca_cert)
    configuration.socket_options = keepalive_socket_options(config)
    configuration.connection_pool_maxsize = POOL_SIZE
    configuration.retries = False  # the dispatcher retries with its own policy and deadline
    return configuration


def core_v1(config: KubeConfig) -> Any:
    """A ``CoreV1Api`` on a fresh ``ApiClient`` (typed ``Any``: its models accept plain API dicts)."""
    return client.CoreV1Api(client.ApiClient(api_configuration(config)))


def request_args(config: KubeConfig) -> dict[str, Any]:
    """Keyword arguments for every API call: ``kube_client_request_args``, else the request timeout."""
    args = dict(config.kube_client_request_args)
    timeout = config.request_timeout_seconds
    args.setdefault("_request_timeout", (min(timeout, 10), timeout))
    return args
