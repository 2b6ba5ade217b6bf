"""Dispatcher heartbeats and the reaper: a dispatcher killed mid-job loses nothing; its job moves on at once.

rq notices a dead worker only when the worker's entry in the started registry expires (job timeout + 60 s)
or, for a job caught between the queue and that registry, after a minute at a ten-minute cleaning pace, and
then it *fails* the job. Meanwhile the task waits. Launching a pod is idempotent (one pod name per try, a 409
is checked against the pod's annotations), so handing a job back too early costs one extra API call, while
handing it back late costs task latency. So every dispatcher publishes a heartbeat several times per lease,
stamped with Redis' own clock (hosts' clocks never matter), and every dispatcher runs a reaper that puts the
jobs of a silent dispatcher back at the head of the queue. Each hand-back is one Lua script whose ZREM (or
LREM) succeeds for exactly one reaper, so N reapers never duplicate a job.

After a Redis outage every heartbeat is stale, the live dispatchers' too: a reaper that has just seen
Redis fail (or has just connected) holds off for one lease, so that every live dispatcher beats again before
anyone's jobs are judged. Heartbeats retry quickly while failing, so they are back as soon as Redis is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError
from rq.executions import Execution

from bridge.protocol import Keys, decode_text

log = logging.getLogger(__name__)

# A member of the heartbeat set silent this long is dropped (the reaper has long handled its jobs by then).
HEARTBEAT_RETENTION_MS = 3600 * 1000
# How often a failing heartbeat tries again: it must be back in Redis well within the reapers' hold-off.
HEARTBEAT_RETRY_SECONDS = 0.25

_SERVER_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: heartbeat zset. ARGV: name, retention ms. Stamps the dispatcher with the server's time.
_BEAT = (
    _SERVER_NOW_MS
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
"""
)

# KEYS: heartbeat zset. ARGV: name. Milliseconds since the name's last beat, or false if it never beat.
_AGE = (
    _SERVER_NOW_MS
    + """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat then return false end
return now - tonumber(beat)
"""
)

# Shared by the hand-back scripts: put a job back at the head of its queue if it may still run (1), else
# leave it (2: the job is gone or finished).
_HAND_BACK = """
local function hand_back(job_hash, queue, job_id)
  local status = redis.call('HGET', job_hash, 'status')
  if status == 'started' or status == 'queued' then
    redis.call('HSET', job_hash, 'status', 'queued')
    redis.call('LPUSH', queue, job_id)
    return 1
  end
  return 2
end
"""

# Requeue one started-registry entry if its dispatcher is dead, or alive but no longer working on it.
# KEYS: wip zset, intermediate list, queue list, job hash, heartbeat zset, rq worker hash
# ARGV: entry (<job id>:<execution id>), job id, worker name, lease ms, execution start (ms, or '')
# Returns 0 (left alone), 1 (requeued) or 2 (entry dropped: the job is gone or no longer runnable).
_REQUEUE_STARTED = (
    _HAND_BACK
    + _SERVER_NOW_MS
    + """
local lease = tonumber(ARGV[4])
if ARGV[3] ~= '' then
  local beat = redis.call('ZSCORE', KEYS[5], ARGV[3])
  if beat and now - tonumber(beat) <= lease then
    local current = redis.call('HGET', KEYS[6], 'current_job')
    if current == ARGV[2] and redis.call('HGET', KEYS[6], 'state') == 'busy' then return 0 end
    -- just dequeued: rq records the current job a moment after the started entry
    if ARGV[5] == '' or now - tonumber(ARGV[5]) <= lease then return 0 end
  end
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LREM', KEYS[2], 0, ARGV[2])
return hand_back(KEYS[4], KEYS[3], ARGV[2])
"""
)

# Requeue a job id stuck in the intermediate list (taken off the queue by a dispatcher that died before
# registering it as started). KEYS: intermediate list, queue list, job hash. ARGV: job id. Returns as above.
_REQUEUE_TAKEN = (
    _HAND_BACK
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
return hand_back(KEYS[3], KEYS[2], ARGV[1])
"""
)


# A dispatcher hands back the job it was running (Redis failed during it). KEYS: wip zset, queue list, job
# hash, execution hash. ARGV: entry (<job id>:<execution id>), job id. Returns as above; 0 when a reaper
# handed it back first.
_REQUEUE_OWN = (
    _HAND_BACK
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[4])
return hand_back(KEYS[3], KEYS[2], ARGV[2])
"""
)


def requeue_own_job(redis: Redis, queue: str, job_id: str, execution_id: str) -> int:
    """Put a job this dispatcher started back at the head of its queue (1), unless a reaper did (0) or the
    job is no longer runnable (2)."""
    entry = f"{job_id}:{execution_id}"
    result = redis.register_script(_REQUEUE_OWN)(
        keys=[
            Keys.rq_started(queue),
            Keys.rq_queue(queue),
            Keys.rq_job(job_id),
            Execution(execution_id, job_id, redis).key,
        ],
        args=[entry, job_id],
    )
    return int(result)


def heartbeat_age(redis: Redis, keys: Keys, name: str) -> float | None:
    """Seconds since dispatcher ``name`` last beat (Redis server time), or None if it never did."""
    age = redis.register_script(_AGE)(keys=[keys.dispatchers], args=[name])
    return None if age is None else int(age) / 1000


class Heartbeat:
    """Stamps ``name`` in ``<prefix>:dispatchers`` every lease/4 s from a thread (also while a job runs)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        name: str,
        lease_seconds: float,
        *,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.interval = lease_seconds / 4
        self.failing = False
        self._on_error = on_error
        self._redis = redis
        self._keys = keys
        self._beat = redis.register_script(_BEAT)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def beat(self) -> None:
        self._beat(keys=[self._keys.dispatchers], args=[self.name, HEARTBEAT_RETENTION_MS])

    def start(self) -> None:
        """Beat once (a Redis error is raised: the dispatcher cannot start) and keep beating."""
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and leave the set: a dispatcher that stops cleanly has no job left to reap."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._redis.zrem(self._keys.dispatchers, self.name)
        except RedisError as exc:
            log.warning("dispatcher %s: could not leave %s: %s", self.name, self._keys.dispatchers, exc)

    def _run(self) -> None:
        # While failing, try again soon: the first beat after an outage must not wait a whole interval.
        while not self._stopped.wait(
            min(HEARTBEAT_RETRY_SECONDS, self.interval) if self.failing else self.interval
        ):
            try:
                self.beat()
            except RedisError as exc:
                self._on_error()
                if not self.failing:  # logged once per outage; on_error (the reaper's hold-off) every time
                    log.warning("dispatcher %s: heartbeat failed, retrying: %s", self.name, exc)
                self.failing = True
            else:
                if self.failing:
                    log.info("dispatcher %s: heartbeat restored", self.name)
                self.failing = False


class Reaper:
    """Hands the jobs of dead dispatchers on one queue back to that queue; run it every :attr:`interval` s."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        queue: str,
        lease_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = lease_seconds / 4
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._next_run = clock()
        self._quiet_until = float("-inf")
        self._has_run = False
        # Job ids seen in the intermediate list and not started, with when this reaper first saw them.
        self._taken_since: dict[str, float] = {}
        self._requeue_started = redis.register_script(_REQUEUE_STARTED)
        self._requeue_taken = redis.register_script(_REQUEUE_TAKEN)

    @property
    def due(self) -> bool:
        return self._clock() >= self._next_run

    @property
    def has_run(self) -> bool:
        """Whether a full pass has run (rq's own registry cleaning waits for it)."""
        return self._has_run

    def hold_off(self) -> None:
        """Judge nobody for one lease: Redis just failed or this process just connected, so the heartbeats
        of live dispatchers may be stale."""
        self._quiet_until = self._clock() + self._lease_seconds
        self._next_run = max(self._next_run, self._quiet_until)
        self._taken_since.clear()

    def reap(self) -> list[str]:
        """Requeue abandoned jobs of the queue and return their ids; safe in any number of dispatchers.

        Does nothing while holding off (see :meth:`hold_off`); a Redis error starts a hold-off and is raised.
        """
        now = self._clock()
        if now < self._quiet_until:
            self._next_run = self._quiet_until
            return []
        self._next_run = now + self.interval
        try:
            requeued = self._reap()
        except RedisError:
            self.hold_off()
            raise
        self._has_run = True
        return requeued

    def _reap(self) -> list[str]:
        requeued: list[str] = []
        started: set[str] = set()
        for raw_entry in self._redis.zrange(Keys.rq_started(self._queue), 0, -1):
            entry = decode_text(raw_entry, replace=True)
            job_id, _, execution_id = entry.rpartition(":")
            started.add(job_id)
            if self._reap_started(entry, job_id, execution_id):
                requeued.append(job_id)
        requeued += self._reap_taken(started)
        return requeued

    def _reap_started(self, entry: str, job_id: str, execution_id: str) -> bool:
        execution_key = Execution(execution_id, job_id, self._redis).key
        worker_name, created_at = self._redis.hmget(execution_key, ["worker_name", "created_at"])
        if not worker_name:  # the execution expired: fall back to the job's own record of its worker
            worker_name = self._redis.hget(Keys.rq_job(job_id), "worker_name")
        worker = decode_text(worker_name, replace=True) if worker_name else ""
        started_ms = f"{float(decode_text(created_at, replace=True)) * 1000:.0f}" if created_at else ""
        result = self._requeue_started(
            keys=[
                Keys.rq_started(self._queue),
                Keys.rq_intermediate(self._queue),
                Keys.rq_queue(self._queue),
                Keys.rq_job(job_id),
                self._keys.dispatchers,
                Keys.rq_worker(worker),
            ],
            args=[entry, job_id, worker, int(self._lease_seconds * 1000), started_ms],
        )
        if result == 1:
            log.warning("requeued job %s: dispatcher %s stopped working on it", job_id, worker or "(unknown)")
        elif result == 2:
            log.info("dropped started entry of job %s: the job is gone or no longer runnable", job_id)
        return bool(result == 1)

    def _reap_taken(self, started: set[str]) -> list[str]:
        now = self._clock()
        requeued: list[str] = []
        still_taken: dict[str, float] = {}
        for raw_id in self._redis.lrange(Keys.rq_intermediate(self._queue), 0, -1):
            job_id = decode_text(raw_id, replace=True)
            if job_id in started:  # its started entry tells whose it is; _reap_started decides
                continue
            since = self._taken_since.get(job_id, now)
            if now - since <= self._lease_seconds:
                still_taken[job_id] = since
                continue
            result = self._requeue_taken(
                keys=[
                    Keys.rq_intermediate(self._queue),
                    Keys.rq_queue(self._queue),
                    Keys.rq_job(job_id),
                ],
                args=[job_id],
            )
            if result == 1:
                log.warning(
                    "requeued job %s: taken off the queue by a dispatcher that never started it", job_id
                )
                requeued.append(job_id)
        self._taken_since = still_taken
        return requeued
