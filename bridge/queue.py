"""The executor's side of the rq queue: one rq job per task try, enqueued in batches, revocable.

Why not ``rq.Queue.enqueue``: it costs a round trip (or a pipeline with rq's own bookkeeping) per job and
overwrites an existing job hash with the same id. A scheduler loop may hand over hundreds of tasks at once,
and after a restart it may hand over tries that are already queued or running. So jobs are *built* in
Python with rq's own :class:`~rq.job.Job` serialisation (so a stock rq worker reads them exactly as if
``Queue.enqueue`` had written them), and *written* by one Lua script per batch that checks, for every job,
that neither its rq job nor its try record exists, then writes both and pushes the id onto its queue.
Checking and writing in one script is what makes a duplicate enqueue a no-op instead of a second pod.

One exception to "exists means duplicate": a try whose record is still ``queued`` while its rq job is gone
or dead (failed, canceled, stopped, finished) was never launched; the scheduler reschedules such tries with
the same key (see ``KubernetesExecutor.clear_not_launched_queued_tasks``), so the script enqueues it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, cast

from redis import Redis
from redis.exceptions import NoScriptError
from rq.job import JobStatus
from rq.utils import now, utcformat

from bridge.config import KubeConfig
from bridge.jobs import SERIALIZER, BridgeJob
from bridge.protocol import (
    DELETE_POD,
    JOB_RESULT_TTL_SECONDS,
    LAUNCH_POD,
    DeleteRequest,
    Keys,
    LaunchRequest,
    Outcome,
    TryRecord,
    TryState,
    job_id_for,
)
from bridge.task_key import TaskKey

log = logging.getLogger(__name__)
_dumps: Callable[[object], bytes] = SERIALIZER.dumps  # rq's JSON job data, as Job.data builds it

# Jobs per script call: keeps one call's argument list (about 40 values per job) and its run time small,
# so Redis never stalls other clients for long. All chunks of a flush still travel in one round trip.
CHUNK_SIZE = 500

# rq job statuses after which a job that never launched its pod may be enqueued again under the same id.
DEAD_JOB_STATUSES = frozenset(
    {JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.STOPPED.value, JobStatus.FINISHED.value}
)

_DEAD_STATUSES_LUA = "{" + ", ".join(f"['{status}'] = true" for status in sorted(DEAD_JOB_STATUSES)) + "}"

# KEYS: rq:queues, then per job: rq:job:<id>, try record, rq:queue:<queue>
# ARGV: record ttl, then per job: job id, n job fields, n record fields, job field pairs, record field pairs
# Returns one flag per job: 1 enqueued, 0 duplicate (left untouched).
_ENQUEUE = (
    """
local dead = DEAD_STATUSES
local ttl = tonumber(ARGV[1])
local flags = {}
local a = 2
for k = 2, #KEYS, 3 do
  local job_key, record_key, queue_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local job_id, nj, nr = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local job_from = a + 3
  local record_from = job_from + 2 * nj
  a = record_from + 2 * nr
  local state = redis.call('HGET', record_key, 'state')
  local status = redis.call('HGET', job_key, 'status')
  local fresh = (not state) and (not status)
  if state == 'queued' and redis.call('HEXISTS', record_key, 'revoked') == 0
      and ((not status) or dead[status]) then
    -- never launched: clear what is left of the earlier attempt, then enqueue as new
    local old_queue = redis.call('HGET', record_key, 'queue')
    if old_queue then
      redis.call('LREM', 'rq:queue:' .. old_queue, 0, job_id)
      redis.call('ZREM', 'rq:failed:' .. old_queue, job_id)
    end
    redis.call('DEL', job_key, record_key)
    fresh = true
  end
  if fresh then
    redis.call('HSET', job_key, unpack(ARGV, job_from, record_from - 1))
    redis.call('HSET', record_key, unpack(ARGV, record_from, a - 1))
    redis.call('EXPIRE', record_key, ttl)
    redis.call('RPUSH', queue_key, job_id)
    redis.call('SADD', KEYS[1], queue_key)
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
return flags
"""
).replace("DEAD_STATUSES", _DEAD_STATUSES_LUA)

# KEYS: try record, rq:queue:<queue>, rq:job:<id>, result stream, rq:job:<id>-delete, rq:queues
# ARGV: job id, delete job id, record ttl, failure ttl, ended_at, n record fields, n outcome fields,
#       record field pairs, outcome field pairs, delete job field pairs
# Returns {action, state before}. The record is moved to revoked here only from 'queued', which is always a
# forward move, so this needs none of the ordering logic of bridge.records.
_REVOKE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown', ''} end
redis.call('HSET', KEYS[1], 'revoked', '1')
if state == 'success' or state == 'failed' or state == 'revoked' then return {'finished', state} end
local nr, no = tonumber(ARGV[6]), tonumber(ARGV[7])
local record_from, outcome_from, delete_from = 8, 8 + 2 * nr, 8 + 2 * nr + 2 * no
if state == 'queued' and redis.call('LREM', KEYS[2], 0, ARGV[1]) > 0 then
  redis.call('HSET', KEYS[3], 'status', 'canceled', 'ended_at', ARGV[5])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], unpack(ARGV, record_from, outcome_from - 1))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, outcome_from, delete_from - 1))
  return {'dequeued', state}
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('HSET', KEYS[5], unpack(ARGV, delete_from, #ARGV))
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[6], KEYS[2])
end
return {'delete-queued', state}
"""


@dataclass(frozen=True)
class PreparedJob:
    """One launch job ready to be written: the rq job hash and the try record, as flat field lists."""

    key: TaskKey
    job_id: str
    queue: str
    job_fields: tuple[Any, ...]  # name, value, name, value ... exactly what rq's Job.to_dict() gives
    record_fields: tuple[str, ...]


class RevokeAction(StrEnum):
    DEQUEUED = "dequeued"  # removed from its queue before any dispatcher took it; record now revoked
    DELETE_QUEUED = "delete-queued"  # a dispatcher has it or launched it: a delete_pod job is queued
    FINISHED = "finished"  # the try already ended; nothing to revoke
    UNKNOWN = "unknown"  # no record: never enqueued (or its record expired)


class RevokeResult(NamedTuple):
    action: RevokeAction
    state: TryState | None  # the record's state before the revoke


def job_description(key: TaskKey) -> str:
    """The rq job ``description``: what ``rq info`` and dashboards show for a launch."""
    return f"{key.dag_id}.{key.task_id} run={key.run_id} try={key.try_number} map={key.map_index}"


class TaskQueue:
    """Builds launch jobs (cheap, no I/O) and writes batches of them in one round trip."""

    def __init__(self, redis: Redis, keys: Keys, config: KubeConfig) -> None:
        self._redis = redis
        self._keys = keys
        self._signing_key = config.signing_key
        self._job_timeout = config.job_timeout_seconds
        self._record_ttl = config.record_ttl_seconds
        self._enqueue = redis.register_script(_ENQUEUE)
        self._revoke = redis.register_script(_REVOKE)
        self._launch_template = self._job(LAUNCH_POD, "template", "template", {}).to_dict()

    def build(self, request: LaunchRequest) -> PreparedJob:
        """The rq job and try record of ``request``; raises TypeError/ValueError for non-JSON input.

        The job hash is the one rq's ``Job.create(...).to_dict()`` gives (a template made that way once,
        with the per-job fields filled in): about a third of the cost of building an rq Job per task.
        """
        job_id = request.job_id
        stamp = utcformat(now())
        fields = dict(self._launch_template)
        fields["data"] = _dumps((LAUNCH_POD, None, [request.to_payload(self._signing_key)], {}))
        fields["created_at"] = fields["enqueued_at"] = stamp
        fields["origin"] = request.queue
        fields["description"] = job_description(request.key)
        record = TryRecord(request.key, TryState.QUEUED, queue=request.queue)
        return PreparedJob(
            key=request.key,
            job_id=job_id,
            queue=request.queue,
            job_fields=_pairs(fields),
            record_fields=_pairs(record.to_fields()),
        )

    def enqueue(self, prepared: Sequence[PreparedJob]) -> list[bool]:
        """Write ``prepared`` in one round trip; per job, True if enqueued, False if it was a duplicate.

        A duplicate (the try's rq job or record exists, and it is not a never-launched try) is left
        exactly as it was. Raises redis errors; then nothing or only some jobs were written, and calling
        again with the same jobs is safe (the written ones come back as duplicates).
        """
        chunks = [prepared[start : start + CHUNK_SIZE] for start in range(0, len(prepared), CHUNK_SIZE)]
        calls = [self._script_call(chunk) for chunk in chunks]
        replies = self._run_enqueue(calls)
        return [bool(flag) for reply in replies for flag in reply]

    def revoke(self, key: TaskKey, namespace: str) -> RevokeResult:
        """Stop one try: take it off its queue if no dispatcher has it yet, else queue a pod deletion.

        The record is flagged ``revoked`` first in the same script, so a dispatcher that is about to
        launch it skips it, and one that just launched it deletes the pod it created. The pod is deleted
        in the namespace its record names, else in ``namespace``.
        """
        job_id = job_id_for(key)
        queue, pod_namespace = (
            value.decode() if isinstance(value, bytes) else value
            for value in self._redis.hmget(self._keys.try_record(job_id), ["queue", "namespace"])
        )
        if queue is None:
            return RevokeResult(RevokeAction.UNKNOWN, None)
        queue_name = str(queue)
        message = "revoked by the executor before a dispatcher launched it"
        record = TryRecord(key, TryState.REVOKED, reason="Revoked", message=message)
        outcome = Outcome(key, TryState.REVOKED, reason="Revoked", message=message, source="executor")
        delete = DeleteRequest(key, str(pod_namespace or namespace)).to_payload(self._signing_key)
        delete_job = self._job(DELETE_POD, f"{job_id}-delete", queue_name, delete)
        delete_job.description = f"delete pod of {job_description(key)}"
        delete_job.enqueued_at = now()
        record_fields, outcome_fields = _pairs(record.to_fields()), _pairs(outcome.to_fields())
        reply = self._revoke(
            keys=[
                self._keys.try_record(job_id),
                self._keys.rq_queue(queue_name),
                self._keys.rq_job(job_id),
                self._keys.results,
                self._keys.rq_job(delete_job.id),
                self._keys.RQ_QUEUES,
            ],
            args=[
                job_id,
                delete_job.id,
                self._record_ttl,
                self._record_ttl,
                utcformat(delete_job.enqueued_at),
                len(record_fields) // 2,
                len(outcome_fields) // 2,
                *record_fields,
                *outcome_fields,
                *_pairs(delete_job.to_dict()),
            ],
        )
        action, state = (item.decode() if isinstance(item, bytes) else str(item) for item in reply)
        return RevokeResult(RevokeAction(action), TryState(state) if state else None)

    def _job(self, function: str, job_id: str, queue: str, payload: dict[str, Any]) -> BridgeJob:
        job = BridgeJob.create(
            function,
            args=[payload],
            connection=self._redis,
            id=job_id,
            origin=queue,
            description=function,
            timeout=self._job_timeout,
            result_ttl=JOB_RESULT_TTL_SECONDS,
            failure_ttl=self._record_ttl,
            serializer=SERIALIZER,
            status=JobStatus.QUEUED,
        )
        job.enqueued_at = now()
        return cast(BridgeJob, job)  # create() is a classmethod: it builds a BridgeJob

    def _script_call(self, chunk: Sequence[PreparedJob]) -> tuple[list[str], list[Any]]:
        keys: list[str] = [self._keys.RQ_QUEUES]
        args: list[Any] = [self._record_ttl]
        for job in chunk:
            keys += [
                self._keys.rq_job(job.job_id),
                self._keys.try_record(job.job_id),
                Keys.rq_queue(job.queue),
            ]
            args += [job.job_id, len(job.job_fields) // 2, len(job.record_fields) // 2]
            args += job.job_fields
            args += job.record_fields
        return keys, args

    def _run_enqueue(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
        """EVALSHA every call in one pipeline; load the script and repeat only if the server lost it."""
        replies: list[Any] = []
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._enqueue.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            if not any(isinstance(reply, NoScriptError) for reply in replies) or attempt:
                break
            # After a Redis restart the script cache is empty; NOSCRIPT means that call did not run.
            self._enqueue.sha = self._redis.script_load(self._enqueue.script)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


def _pairs(fields: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(item for pair in fields.items() for item in pair)
