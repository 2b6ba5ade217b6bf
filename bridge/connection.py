"""Redis connections configured the same way in every process of the bridge.

Why one function: each process talks to Redis across restarts and failovers, so the client must notice a
dead server quickly (socket and connect timeouts, health checks) instead of hanging the scheduler loop,
and blocking reads must be shorter than the socket timeout or redis-py reports a timeout for a read that
merely waited. Retries are left to the callers, which know whether an operation is safe to repeat.
"""

from __future__ import annotations

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.config import KubeConfig

SOCKET_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
HEALTH_CHECK_INTERVAL_SECONDS = 15
# Longest blocking read (XREADGROUP BLOCK, BLMOVE) a caller should issue on these connections.
MAX_BLOCK_SECONDS = SOCKET_TIMEOUT_SECONDS / 2


def redis_from_config(config: KubeConfig, *, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Redis:
    """A client for ``[bridge] redis_url`` that fails fast; callers decide what to retry."""
    return Redis.from_url(
        config.redis_url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        retry=Retry(NoBackoff(), retries=0),
        client_name=None,
    )
