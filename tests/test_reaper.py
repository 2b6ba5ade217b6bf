"""The reaper against real Redis: whose started jobs go back to the queue, and that one reaper alone does it.

The started state of a job is written here exactly as rq 2.12 leaves it (started registry entry
``<job id>:<execution id>``, execution hash, job status, worker hash), so each case of "dead", "alive and
busy with it", "alive but moved on" and "just starting" is set up precisely; the process tests in
test_dispatcher.py show the same against a real SIGKILLed ``kbridge dispatcher``.
"""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.worker import BaseWorker

from bridge.connection import redis_from_config
from bridge.protocol import Keys, TryState
from bridge.redis_server import RedisServer
from bridge.sim.cluster import Simulator
from tests.test_dispatcher import KEYS, QUEUE, ConfigFactory, enqueue, key, pods, record, text
from tests.waiting import wait_until
from workers.dispatcher import build_worker
from workers.reaper import Heartbeat, Reaper, heartbeat_age

LEASE = 2.0


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def start_job(
    client: redis.Redis,
    job_id: str,
    worker: str,
    *,
    silent_for: float,
    started_ago: float,
    busy_with: str | None = None,
) -> str:
    """Put queued ``job_id`` where rq puts a job that ``worker`` is running; returns the started entry."""
    client.lmove(Keys.rq_queue(QUEUE), Keys.rq_intermediate(QUEUE))
    entry = f"{job_id}:execution1"
    now = server_ms(client)
    client.zadd(Keys.rq_started(QUEUE), {entry: now / 1000 + 180})
    client.hset(
        f"rq:execution:{entry}",
        mapping={"worker_name": worker, "created_at": (now / 1000) - started_ago, "id": "execution1"},
    )
    client.hset(Keys.rq_job(job_id), mapping={"status": "started", "worker_name": worker})
    client.lrem(Keys.rq_intermediate(QUEUE), 1, job_id)
    client.zadd(KEYS.dispatchers, {worker: now - int(silent_for * 1000)})
    worker_key = BaseWorker.redis_worker_namespace_prefix + worker
    if busy_with is not None:
        client.hset(worker_key, mapping={"current_job": busy_with, "state": "busy"})
    else:
        client.hset(worker_key, mapping={"state": "idle"})
    return entry


def queued(client: redis.Redis) -> list[str]:
    return [text(job_id) for job_id in client.lrange(Keys.rq_queue(QUEUE), 0, -1)]


def test_the_job_of_a_silent_dispatcher_goes_back_to_the_head_of_the_queue(redis_client: redis.Redis) -> None:
    abandoned = enqueue(redis_client, key(1))
    waiting = enqueue(redis_client, key(2))
    start_job(redis_client, abandoned, "dead", silent_for=LEASE + 1, started_ago=LEASE + 1)
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == [abandoned]
    assert queued(redis_client) == [abandoned, waiting]  # next in line: it was taken before the others
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 0
    assert redis_client.hget(Keys.rq_job(abandoned), "status") == b"queued"
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == []  # done once, by one reaper


def test_a_live_dispatcher_keeps_the_job_it_is_running(redis_client: redis.Redis) -> None:
    job_id = enqueue(redis_client, key())
    start_job(redis_client, job_id, "alive", silent_for=0.1, started_ago=30, busy_with=job_id)
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == []
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 1


def test_a_job_just_being_started_is_left_alone(redis_client: redis.Redis) -> None:
    job_id = enqueue(redis_client, key())
    # rq writes the started entry a moment before it records the worker's current job
    start_job(redis_client, job_id, "alive", silent_for=0.1, started_ago=0.1, busy_with=None)
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == []


def test_a_job_a_live_dispatcher_left_behind_is_requeued(redis_client: redis.Redis) -> None:
    job_id = enqueue(redis_client, key())
    # e.g. Redis failed while rq recorded the job's end; the dispatcher is alive and idle
    start_job(redis_client, job_id, "alive", silent_for=0.1, started_ago=LEASE + 1, busy_with=None)
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == [job_id]


def test_a_cancelled_job_of_a_dead_dispatcher_is_dropped_not_requeued(redis_client: redis.Redis) -> None:
    job_id = enqueue(redis_client, key())
    start_job(redis_client, job_id, "dead", silent_for=LEASE + 1, started_ago=LEASE + 1)
    redis_client.hset(Keys.rq_job(job_id), "status", "canceled")
    assert Reaper(redis_client, KEYS, QUEUE, LEASE).reap() == []
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 0
    assert queued(redis_client) == []


def test_a_job_stuck_between_queue_and_started_registry_is_requeued_by_one_reaper(
    redis_client: redis.Redis,
) -> None:
    job_id = enqueue(redis_client, key())
    redis_client.lmove(Keys.rq_queue(QUEUE), Keys.rq_intermediate(QUEUE))  # taken; the taker then died
    now = [100.0]
    reapers = [Reaper(redis_client, KEYS, QUEUE, LEASE, clock=lambda: now[0]) for _ in range(2)]
    assert [reaper.reap() for reaper in reapers] == [[], []]  # first seen now
    now[0] += LEASE / 2
    assert [reaper.reap() for reaper in reapers] == [[], []]  # could still be starting
    now[0] += LEASE
    assert [reaper.reap() for reaper in reapers] == [[job_id], []]
    assert queued(redis_client) == [job_id]
    assert redis_client.llen(Keys.rq_intermediate(QUEUE)) == 0


def test_the_heartbeat_keeps_beating_from_its_thread_and_leaves_on_stop(redis_client: redis.Redis) -> None:
    heartbeat = Heartbeat(redis_client, KEYS, "beating", LEASE)
    heartbeat.start()
    first = redis_client.zscore(KEYS.dispatchers, "beating")
    assert first is not None
    wait_until(
        lambda: (redis_client.zscore(KEYS.dispatchers, "beating") or 0) > first, "a second beat", timeout=3
    )
    age = heartbeat_age(redis_client, KEYS, "beating")
    assert age is not None
    assert 0 <= age < LEASE
    heartbeat.stop()
    assert heartbeat_age(redis_client, KEYS, "beating") is None


def test_a_dispatcher_starting_under_a_dead_ones_name_launches_its_job_first_thing(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    job_id = enqueue(redis_client, key())
    start_job(redis_client, job_id, "reused-name", silent_for=LEASE + 1, started_ago=LEASE + 1)
    config = bridge_config(bridge={"dispatcher_lease_seconds": str(int(LEASE))})
    worker = build_worker(config, name="reused-name", redis=redis_from_config(config))
    worker.work(burst=True)  # the reaper runs before the first dequeue
    assert list(pods(simulator)) == [job_id]
    assert record(redis_client, key()).state is TryState.LAUNCHED
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 0


def test_after_a_redis_outage_the_reaper_holds_off_for_a_lease(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    job_id = enqueue(redis_client, key())
    # alive and busy with the job, but its beats could not reach Redis during the outage
    start_job(redis_client, job_id, "alive", silent_for=LEASE + 1, started_ago=LEASE + 1, busy_with=job_id)
    now = [100.0]
    client = redis.Redis(port=redis_server.port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    reaper = Reaper(client, KEYS, QUEUE, LEASE, clock=lambda: now[0])
    redis_server.stop()
    try:
        with pytest.raises(redis.ConnectionError):
            reaper.reap()
    finally:
        redis_server.start()
    assert not reaper.due
    now[0] += LEASE / 2
    assert reaper.reap() == [], "within a lease of an outage nobody's stale heartbeat is judged"
    now[0] += LEASE / 2 + 0.01
    assert reaper.reap() == [job_id], "silent for a whole lease after the outage: dead"


@pytest.mark.timeout(30)
def test_a_failing_heartbeat_beats_again_as_soon_as_redis_is_back(redis_server: RedisServer) -> None:
    errors: list[float] = []
    client = redis.Redis(port=redis_server.port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    heartbeat = Heartbeat(client, KEYS, "beating", 8.0, on_error=lambda: errors.append(1))
    heartbeat.start()
    try:
        redis_server.stop()
        try:
            wait_until(lambda: heartbeat.failing, "the heartbeat to fail", timeout=5)
        finally:
            redis_server.start()
        took = wait_until(lambda: not heartbeat.failing, "the heartbeat to beat again", timeout=5)
        assert took < heartbeat.interval / 2, "a failing heartbeat must not wait a whole interval"
        assert errors, "others are told (the worker's reaper holds off)"
    finally:
        heartbeat.stop()
