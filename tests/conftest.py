"""Shared fixtures: a private Redis server for the whole session, clean for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bridge.redis_server import RESERVED_PORT, RedisServer


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
