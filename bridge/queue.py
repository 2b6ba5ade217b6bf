"""The executor's side of the rq queue: one rq job per task try, enqueued in batches, revocable.

Why not ``rq.Queue.enqueue``: it costs a round trip (or a pipeline with rq's own bookkeeping) per job and
overwrites an existing job hash with the same id. A scheduler loop may hand over hundreds of tasks at once,
and after a restart it may hand over tries that are already queued or running. So jobs are *built* in
Python with rq's own :class:`~rq.job.Job` serialisation (so a stock rq worker reads them exactly as if
``Queue.enqueue`` had written them), and *written* by one Lua script per batch that checks, for every job,
that neither its rq job nor its try record exists, then writes both and pushes the id onto its queue.
Checking and writing in one script is what makes a duplicate enqueue a no-op instead of a second pod.

One exception to "exists means duplicate": a try whose record is still ``queued`` while its rq job is gone,
dead (failed, canceled, stopped, finished) or "queued" on no list was never launched; the scheduler
reschedules such tries with the same key (see ``KubernetesExecutor.clear_not_launched_queued_tasks``), so
the script enqueues it again.

A launch with secret env values (``execute_async(secret_env=...)``) also gets its launch-secret hash
(:meth:`~bridge.protocol.Keys.launch_secret`), written by the same script with its own TTL
(``launch_secret_ttl_seconds``), so the secret costs no extra round trip and never exists without its job.
A duplicate whose job is still queued and lists the same names (kept, never the values, in the try
record's ``secret_env`` field) gets its hash rewritten with the new values (a re-queue after a scheduler
restart brings a fresher token); any other duplicate gets none. The revoke script deletes it. A job with
more than :data:`~bridge.protocol.MAX_SECRET_ENV_NAMES` names is refused before anything is written.

Lua has no rollback, so the script checks the type of every key a job writes before writing any of them:
a queue name whose key holds something else (``SET rq:queue:x 1`` by mistake) refuses that one job, with
the key and type in the message, instead of leaving a try "queued" on no queue or failing the whole batch.
Every key the scripts touch is passed in ``KEYS``, none is built inside Lua.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    MAX_SECRET_ENV_NAMES,
    DeleteRequest,
    Keys,
    LaunchRequest,
    Outcome,
    TryRecord,
    TryState,
    decode_text,
    field_pairs,
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

# KEYS: rq:queues, then per job: rq:job:<id>, try record, rq:queue:<queue>, the queue list, intermediate
#       list and failed registry of the queue the try was enqueued on before (= its queue unless the
#       scheduler routes a never-launched try to another queue), and its launch-secret hash
# ARGV: record ttl, launch secret ttl, then per job: job id, earlier queue name, n job fields, n record
#       fields, n secret fields, its secret names (sorted, comma-joined), job field pairs, record field
#       pairs, secret field pairs (name, value)
# Returns one reply per job: 1 enqueued, 0 duplicate (left untouched), {'queue', name} when its record
# names another earlier queue (call again with that queue's keys), or an error text when a key it writes
# holds another type or it has too many secret names. Every check of a job comes before its first write:
# Lua has no rollback, and a job written half way (a hash without its list entry) would be a try queued on
# no queue; a script error after a write would also fail the whole batch, which the executor resends.
_ENQUEUE = (
    (
        """
local dead = DEAD_STATUSES
local ttl, secret_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local replies = {}
local function wrong_type(key, ...)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' then return nil end
  for _, wanted in ipairs({...}) do
    if found == wanted then return nil end
  end
  return 'Redis key ' .. key .. ' is a ' .. found .. ', not a ' .. table.concat({...}, ' or ')
end
local registry_error = wrong_type(KEYS[1], 'set')
local a = 3
for k = 2, #KEYS, 7 do
  local job_key, record_key, queue_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local old_queue_key, old_intermediate_key, old_failed_key = KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local secret_key = KEYS[k + 6]
  local job_id, expected_queue = ARGV[a], ARGV[a + 1]
  local nj, nr, ns = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local names = ARGV[a + 5]
  local job_from = a + 6
  local record_from = job_from + 2 * nj
  local secret_from = record_from + 2 * nr
  a = secret_from + 2 * ns
  local reply = registry_error or wrong_type(job_key, 'hash') or wrong_type(record_key, 'hash')
    or wrong_type(queue_key, 'list') or wrong_type(old_queue_key, 'list')
    or wrong_type(old_intermediate_key, 'list') or wrong_type(old_failed_key, 'zset')
    or (ns > 0 and wrong_type(secret_key, 'hash'))
    or (ns > MAX_NAMES and ('secret_env of ' .. job_id .. ' has ' .. ns .. ' names, more than MAX_NAMES'))
  local refresh_secret = false
  if not reply then
    local state = redis.call('HGET', record_key, 'state')
    local status = redis.call('HGET', job_key, 'status')
    local fresh = (not state) and (not status)
    if state == 'queued' and redis.call('HEXISTS', record_key, 'revoked') == 0 then
      local old_queue = redis.call('HGET', record_key, 'queue') or expected_queue
      -- never launched if its job is gone or dead, or says queued while on no list (a lost list entry)
      local maybe_lost = (not status) or dead[status] or status == 'queued'
      if maybe_lost and old_queue ~= expected_queue then
        reply = {'queue', old_queue}
      elseif maybe_lost and (status ~= 'queued' or not (redis.call('LPOS', old_queue_key, job_id)
          or redis.call('LPOS', old_intermediate_key, job_id))) then
        redis.call('LREM', old_queue_key, 0, job_id)
        redis.call('ZREM', old_failed_key, job_id)
        redis.call('DEL', job_key, record_key, secret_key)
        fresh = true
      end
    end
    if fresh then
      redis.call('HSET', job_key, unpack(ARGV, job_from, record_from - 1))
      redis.call('HSET', record_key, unpack(ARGV, record_from, secret_from - 1))
      redis.call('EXPIRE', record_key, ttl)
      redis.call('RPUSH', queue_key, job_id)
      redis.call('SADD', KEYS[1], queue_key)
      reply = 1
      refresh_secret = ns > 0
    elseif not reply then
      reply = 0
      -- a duplicate still waiting for a dispatcher takes the newer values of the very names its job
      -- lists (other names would fail its launch or leave values no pod reads); any other gets none
      refresh_secret = ns > 0 and state == 'queued' and status == 'queued'
        and redis.call('HEXISTS', record_key, 'revoked') == 0
        and redis.call('HGET', record_key, 'secret_env') == names
    end
  end
  if refresh_secret then
    redis.call('DEL', secret_key)
    redis.call('HSET', secret_key, unpack(ARGV, secret_from, a - 1))
    redis.call('EXPIRE', secret_key, secret_ttl)
  end
  replies[#replies + 1] = reply
end
return replies
"""
    )
    .replace("DEAD_STATUSES", _DEAD_STATUSES_LUA)
    .replace("MAX_NAMES", str(MAX_SECRET_ENV_NAMES))
)

# KEYS: try record, rq:queue:<queue>, rq:job:<id>, result stream, rq:job:<id>-delete, rq:queues,
#       launch-secret hash
# ARGV: job id, delete job id, record ttl, failure ttl, ended_at, n record fields, n outcome fields,
#       forget ('1' or '0'), record field pairs, outcome field pairs, delete job field pairs
# Returns {action, state before}. The record is moved to revoked here only from 'queued', which is always a
# forward move, so this needs none of the ordering logic of bridge.records. A job taken off its queue that
# a dispatcher had run before (the reaper hands a dead dispatcher's job back; its pod may exist) gets the
# delete job as well. A revoked try's secret env values are of no more use: its hash goes at once.
# With forget, a job taken off its queue that no dispatcher ever ran leaves no trace (no record, job or
# outcome): the same try may be enqueued again as new (Airflow's stuck-in-queued recovery does that).
_REVOKE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown', ''} end
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('DEL', KEYS[7])
if state == 'success' or state == 'failed' or state == 'revoked' then return {'finished', state} end
local nr, no = tonumber(ARGV[6]), tonumber(ARGV[7])
local record_from, outcome_from, delete_from = 9, 9 + 2 * nr, 9 + 2 * nr + 2 * no
local action = 'delete-queued'
if state == 'queued' and redis.call('LREM', KEYS[2], 0, ARGV[1]) > 0 then
  local started, worker = unpack(redis.call('HMGET', KEYS[3], 'started_at', 'worker_name'))
  local taken = (started and started ~= '') or (worker and worker ~= '')
  if ARGV[8] == '1' and not taken then
    redis.call('DEL', KEYS[1], KEYS[3])
    return {'forgotten', state}
  end
  redis.call('HSET', KEYS[3], 'status', 'canceled', 'ended_at', ARGV[5])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], unpack(ARGV, record_from, outcome_from - 1))
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, outcome_from, delete_from - 1))
  if not taken then return {'dequeued', state} end
  action = 'dequeued'
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('HSET', KEYS[5], unpack(ARGV, delete_from, #ARGV))
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[6], KEYS[2])
end
return {action, state}
"""


@dataclass(frozen=True)
class PreparedJob:
    """One launch job ready to be written: the rq job hash and the try record, as flat field lists."""

    key: TaskKey
    job_id: str
    queue: str
    job_fields: tuple[Any, ...]  # name, value, name, value ... exactly what rq's Job.to_dict() gives
    record_fields: tuple[str, ...]
    # name, value ... of the launch-secret hash; never in a repr (nor, so, in a log line or a traceback)
    secret_fields: tuple[str, ...] = field(default=(), repr=False)


class EnqueueStatus(StrEnum):
    ENQUEUED = "enqueued"
    DUPLICATE = "duplicate"  # the try was enqueued before; left exactly as it was
    REFUSED = "refused"  # a key the job needs holds another Redis type; nothing was written for it


class EnqueueResult(NamedTuple):
    status: EnqueueStatus
    message: str = ""  # why it was refused, naming the key and its type

    @property
    def fresh(self) -> bool:
        return self.status is EnqueueStatus.ENQUEUED


class RevokeAction(StrEnum):
    # removed from its queue; record now revoked (and a delete_pod job queued if a dispatcher ran it before)
    DEQUEUED = "dequeued"
    # revoked with forget before any dispatcher ran it: removed from its queue, record and job deleted
    FORGOTTEN = "forgotten"
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
        self._secret_ttl = config.launch_secret_ttl_seconds
        self._enqueue = redis.register_script(_ENQUEUE)
        self._revoke = redis.register_script(_REVOKE)
        self._launch_template = self._job(LAUNCH_POD, "template", "template", {}).to_dict()

    def build(self, request: LaunchRequest, secret_env: Mapping[str, str] | None = None) -> PreparedJob:
        """The rq job and try record of ``request``; raises TypeError/ValueError for non-JSON input.

        ``secret_env`` holds the values of the names in ``request.secret_env`` (the request itself carries
        only the names). The job hash is the one rq's ``Job.create(...).to_dict()`` gives (a template made
        that way once, with the per-job fields filled in): about a third of the cost of building an rq Job
        per task.
        """
        values = secret_env or {}
        if set(values) != set(request.secret_env):
            raise ValueError("the secret_env values must be given for exactly the names the request lists")
        job_id = request.job_id
        stamp = utcformat(now())
        fields = dict(self._launch_template)
        fields["data"] = _dumps((LAUNCH_POD, None, [request.to_payload(self._signing_key)], {}))
        fields["created_at"] = fields["enqueued_at"] = stamp
        fields["origin"] = request.queue
        fields["description"] = job_description(request.key)
        record = TryRecord(request.key, TryState.QUEUED, queue=request.queue).to_fields()
        if request.secret_env:  # the names (never values): a duplicate refreshes only these (see _ENQUEUE)
            record["secret_env"] = ",".join(sorted(request.secret_env))
        return PreparedJob(
            key=request.key,
            job_id=job_id,
            queue=request.queue,
            job_fields=tuple(field_pairs(fields)),
            record_fields=tuple(field_pairs(record)),
            secret_fields=tuple(item for name in request.secret_env for item in (name, values[name])),
        )

    def enqueue(self, prepared: Sequence[PreparedJob]) -> list[EnqueueResult]:
        """Write ``prepared`` in one round trip (two if a try moves to another queue); a result per job.

        A duplicate (the try's rq job or record exists, and it is not a never-launched try) is left
        exactly as it was. A job whose queue (or any key it writes) holds another Redis type is refused
        without writing anything for it; the others are written. Raises redis errors; then nothing or only
        some jobs were written, and calling again with the same jobs is safe (the written ones come back
        as duplicates).
        """
        results = self._enqueue_with(prepared, [job.queue for job in prepared])
        # A never-launched try re-enqueued on another queue: its earlier queue's keys, then once more.
        moved = [index for index, result in enumerate(results) if isinstance(result, str)]
        if moved:
            again = [prepared[index] for index in moved]
            earlier = [str(results[index]) for index in moved]
            for index, result in zip(moved, self._enqueue_with(again, earlier), strict=True):
                results[index] = result
        final: list[EnqueueResult] = []
        for job, result in zip(prepared, results, strict=True):
            if isinstance(result, str):  # moved again meanwhile: someone else is enqueueing this try
                log.warning("Try %s changed queues while being enqueued; left as it is", job.job_id)
                result = EnqueueResult(EnqueueStatus.DUPLICATE)
            final.append(result)
        return final

    def _enqueue_with(
        self, prepared: Sequence[PreparedJob], earlier: Sequence[str]
    ) -> list[EnqueueResult | str]:
        """One script call per chunk, all in one round trip; a str result names a try's earlier queue.

        ``earlier`` is, per job, the queue its try was enqueued on before, if it was (else any name).
        """
        starts = range(0, len(prepared), CHUNK_SIZE)
        calls = [
            self._script_call(prepared[start : start + CHUNK_SIZE], earlier[start : start + CHUNK_SIZE])
            for start in starts
        ]
        return [_enqueue_result(reply) for replies in self._run_enqueue(calls) for reply in replies]

    def revoke(self, key: TaskKey, namespace: str, *, forget: bool = False) -> RevokeResult:
        """Stop one try: take it off its queue if no dispatcher has it yet, else queue a pod deletion.

        The record is flagged ``revoked`` first in the same script, so a dispatcher that is about to
        launch it skips it, and one that just launched it deletes the pod it created. The pod is deleted
        in the namespace its record names, else in ``namespace``. With ``forget``, a try taken off its
        queue before any dispatcher ran it is deleted instead (record, rq job, launch-secret hash; no
        outcome): :attr:`RevokeAction.FORGOTTEN`, and enqueueing it again makes a new try.
        """
        job_id = job_id_for(key)
        queue, pod_namespace = (
            None if value is None else decode_text(value)
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
        record_fields, outcome_fields = field_pairs(record.to_fields()), field_pairs(outcome.to_fields())
        reply = self._revoke(
            keys=[
                self._keys.try_record(job_id),
                self._keys.rq_queue(queue_name),
                self._keys.rq_job(job_id),
                self._keys.results,
                self._keys.rq_job(delete_job.id),
                self._keys.RQ_QUEUES,
                self._keys.launch_secret(job_id),
            ],
            args=[
                job_id,
                delete_job.id,
                self._record_ttl,
                self._record_ttl,
                utcformat(delete_job.enqueued_at),
                len(record_fields) // 2,
                len(outcome_fields) // 2,
                "1" if forget else "0",
                *record_fields,
                *outcome_fields,
                *field_pairs(delete_job.to_dict()),
            ],
        )
        action, state = (decode_text(item) for item in reply)
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

    def _script_call(
        self, chunk: Sequence[PreparedJob], earlier: Sequence[str]
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = [self._keys.RQ_QUEUES]
        args: list[Any] = [self._record_ttl, self._secret_ttl]
        for job, before in zip(chunk, earlier, strict=True):
            keys += [
                self._keys.rq_job(job.job_id),
                self._keys.try_record(job.job_id),
                Keys.rq_queue(job.queue),
                Keys.rq_queue(before),
                Keys.rq_intermediate(before),
                Keys.rq_failed(before),
                self._keys.launch_secret(job.job_id),
            ]
            args += [job.job_id, before, len(job.job_fields) // 2, len(job.record_fields) // 2]
            args += [len(job.secret_fields) // 2, ",".join(sorted(job.secret_fields[::2]))]
            args += job.job_fields
            args += job.record_fields
            args += job.secret_fields
        return keys, args

    def _run_enqueue(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[Any]]:
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


def _enqueue_result(reply: Any) -> EnqueueResult | str:
    if isinstance(reply, list):  # ['queue', name]: the try's record names another earlier queue
        return decode_text(reply[1], replace=True)  # not UTF-8: the retry cannot match, it stays put
    if isinstance(reply, bytes | str):
        return EnqueueResult(EnqueueStatus.REFUSED, decode_text(reply, replace=True))
    return EnqueueResult(EnqueueStatus.ENQUEUED if reply == 1 else EnqueueStatus.DUPLICATE)
