"""Shared fixtures: a private Redis server for the session (clean for every test) and a simulated cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bridge.config import KubeConfig
from bridge.redis_server import RESERVED_PORT, RedisServer
from bridge.sim.cluster import Simulator


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server we started ourselves on a free loopback port, with AOF persistence."""
    with RedisServer() as server:
        assert server.port != RESERVED_PORT
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session server, emptied before the test (the server is ours to flush)."""
    if not redis_server.running:  # a previous test stopped it and failed before restarting
        redis_server.stop()
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    """An in-process simulated cluster (scripted kubelet: pods follow their sim.kbridge.io annotations)."""
    with Simulator(kubelet="scripted", kubeconfig=tmp_path / "kubeconfig.yaml", seed=7) as cluster:
        yield cluster
    assert not cluster.loop.errors, cluster.loop.errors


@pytest.fixture
def bridge_config(
    redis_server: RedisServer, redis_client: redis.Redis, simulator: Simulator
) -> Callable[..., KubeConfig]:
    """``bridge_config(bridge={...}, kubernetes={...})``: settings for the session Redis and the simulator.

    Depends on ``redis_client`` so the Redis database is empty when the test starts.
    """

    def make(**sections: dict[str, str]) -> KubeConfig:
        settings: dict[str, dict[str, str]] = {
            "kubernetes": {
                "in_cluster": "False",
                "config_file": str(simulator.kubeconfig_path),
                "worker_container_repository": "python",
                "worker_container_tag": "3.12-slim",
            },
            "bridge": {"redis_url": redis_server.url},
        }
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        return KubeConfig(settings)

    return make
