"""The executor's rq queue on a real Redis: one round trip per batch, duplicates left alone, rq-readable.

The last tests hand the jobs to a stock rq ``SimpleWorker`` (with the bridge's allowlisting job class):
that is the proof that the hashes written by the Lua script are exactly what rq expects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

import bridge.queue
from bridge.config import KubeConfig
from bridge.jobs import SERIALIZER, BridgeJob, job_class_with
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
    job_id_for,
)
from bridge.queue import (
    CHUNK_SIZE,
    EnqueueResult,
    EnqueueStatus,
    PreparedJob,
    RevokeAction,
    TaskQueue,
    job_description,
)
from bridge.records import TryRecords
from bridge.redis_server import RedisServer
from bridge.task_key import TaskKey

pytestmark = pytest.mark.timeout(60)

KEYS = Keys("kbridge")
QUEUE = "kbridge"
KEY = TaskKey("etl", "load", "manual__2026-11-24T00:00:00+00:00", 1)
calls: list[Any] = []  # what the job functions below were called with


class CountingConnection(redis.Connection):
    """A real connection that counts its writes: one write of packed commands is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def counting_client(server: RedisServer) -> redis.Redis:
    pool = redis.ConnectionPool(host="127.0.0.1", port=server.port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


def task_queue(client: redis.Redis, **bridge: str) -> TaskQueue:
    return TaskQueue(client, KEYS, KubeConfig({"bridge": bridge}))


def request(key: TaskKey = KEY, queue: str = QUEUE) -> LaunchRequest:
    return LaunchRequest(key, ("python", "-c", "print('hi')"), queue, {}, "2026-11-24T00:00:00.000+00:00")


def keys_for(count: int) -> list[TaskKey]:
    return [TaskKey("etl", f"task-{index}", "run", 1) for index in range(count)]


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {name.decode(): value.decode() for name, value in raw.items()}


def flags(results: list[EnqueueResult]) -> list[bool]:
    """Per job: enqueued (True), or a duplicate / refused (False)."""
    return [result.fresh for result in results]


def launch(payload: dict[str, Any]) -> dict[str, str]:
    calls.append(payload)
    return {"launched": str(payload["key"]["task_id"])}


def forbidden(*args: Any) -> None:
    calls.append(("forbidden", args))


def run_worker(client: redis.Redis, queue: str = QUEUE) -> None:
    """A stock rq SimpleWorker with the bridge's job class, in burst mode: runs what is queued, then stops."""
    job_class = job_class_with({LAUNCH_POD: launch, DELETE_POD: launch})
    rq_queue = Queue(queue, connection=client, job_class=job_class, serializer=SERIALIZER)
    worker = SimpleWorker([rq_queue], connection=client, job_class=job_class, serializer=SERIALIZER)
    worker.work(burst=True)


@pytest.fixture(autouse=True)
def _forget_calls() -> None:
    calls.clear()


def test_build_gives_the_hash_rq_itself_would_write(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client, job_timeout_seconds="90", record_ttl_seconds="3600")
    prepared = queue.build(request())
    built = dict(zip(prepared.job_fields[::2], prepared.job_fields[1::2], strict=True))
    reference = BridgeJob.create(
        LAUNCH_POD,
        args=[request().to_payload(None)],
        connection=redis_client,
        id=job_id_for(KEY),
        origin=QUEUE,
        description=job_description(KEY),
        timeout=90,
        result_ttl=JOB_RESULT_TTL_SECONDS,
        failure_ttl=3600,
        serializer=SERIALIZER,
        status=JobStatus.QUEUED,
    )
    expected = reference.to_dict()
    for stamp in ("created_at", "enqueued_at"):
        assert built[stamp].endswith("Z")
        built[stamp] = expected[stamp] = "now"
    expected["enqueued_at"] = "now"  # Queue.enqueue sets it; create() does not
    assert built == expected
    assert (prepared.job_id, prepared.queue) == (job_id_for(KEY), QUEUE)


def test_a_batch_of_any_size_is_one_round_trip(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    client = counting_client(redis_server)
    queue = task_queue(client)
    queue.enqueue([queue.build(request(TaskKey("warm", "up", "run")))])  # connects, loads the script
    batch = [queue.build(request(key)) for key in keys_for(2 * CHUNK_SIZE + 7)]  # three script calls
    CountingConnection.sends = 0
    assert flags(queue.enqueue(batch)) == [True] * len(batch)
    assert CountingConnection.sends == 1
    assert redis_client.llen(Keys.rq_queue(QUEUE)) == len(batch) + 1
    first = job_id_for(keys_for(1)[0])
    assert redis_client.lindex(Keys.rq_queue(QUEUE), 1) == first.encode()  # in execute_async order
    client.close()


def test_the_script_is_loaded_again_after_redis_forgot_it(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request(TaskKey("warm", "up", "run")))])
    redis_client.script_flush()
    assert flags(queue.enqueue([queue.build(request())])) == [True]
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1)[-1] == job_id_for(KEY).encode()


def test_enqueueing_a_try_twice_neither_overwrites_nor_duplicates(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    assert flags(queue.enqueue([queue.build(request())])) == [True]
    job_key, record_key = Keys.rq_job(job_id_for(KEY)), KEYS.try_record(job_id_for(KEY))
    job_before, record_before = text_hash(redis_client, job_key), text_hash(redis_client, record_key)
    other_command = LaunchRequest(KEY, ("false",), "elsewhere", {}, "later")
    assert flags(queue.enqueue([queue.build(other_command), queue.build(request())])) == [False, False]
    assert text_hash(redis_client, job_key) == job_before
    assert text_hash(redis_client, record_key) == record_before
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id_for(KEY).encode()]
    assert not redis_client.exists(Keys.rq_queue("elsewhere"))
    # the same try twice in one batch: the second one is the duplicate
    other = TaskKey("etl", "other", "run")
    assert flags(queue.enqueue([queue.build(request(other)), queue.build(request(other))])) == [True, False]
    assert redis_client.llen(Keys.rq_queue(QUEUE)) == 2


def test_a_launched_try_is_a_duplicate_even_when_its_rq_job_has_expired(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request())])
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(KEY, TryState.LAUNCHED, pod="p", namespace="ns"))
    redis_client.delete(Keys.rq_job(job_id_for(KEY)), Keys.rq_queue(QUEUE))
    assert flags(queue.enqueue([queue.build(request())])) == [False]
    assert not redis_client.exists(Keys.rq_queue(QUEUE))


@pytest.mark.parametrize("status", ["failed", "canceled", None])
def test_a_never_launched_try_can_be_enqueued_again(redis_client: redis.Redis, status: str | None) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request())])
    job_id = job_id_for(KEY)
    redis_client.lpop(Keys.rq_queue(QUEUE))
    if status is None:
        redis_client.delete(Keys.rq_job(job_id))
    else:
        redis_client.hset(Keys.rq_job(job_id), mapping={"status": status, "exc_info": "boom"})
        redis_client.zadd(Keys.rq_failed(QUEUE), {job_id: 1})
    assert flags(queue.enqueue([queue.build(request())])) == [True]
    job = text_hash(redis_client, Keys.rq_job(job_id))
    assert (job["status"], "exc_info" in job) == ("queued", False)
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id.encode()]
    assert redis_client.zcard(Keys.rq_failed(QUEUE)) == 0
    # ... but not once it is revoked
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id)
    redis_client.hset(Keys.rq_job(job_id), "status", "failed")
    assert flags(queue.enqueue([queue.build(request())])) == [False]


def test_the_queue_argument_routes_to_a_named_rq_queue(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request(queue="gpu")), queue.build(request(TaskKey("a", "b", "c")))])
    assert redis_client.lrange(Keys.rq_queue("gpu"), 0, -1) == [job_id_for(KEY).encode()]
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id_for(TaskKey("a", "b", "c")).encode()]
    assert redis_client.smembers(Keys.RQ_QUEUES) == {b"rq:queue:gpu", b"rq:queue:kbridge"}
    assert sorted(queue.name for queue in Queue.all(connection=redis_client)) == ["gpu", "kbridge"]


def test_the_job_hash_and_the_record_are_readable_json_and_text(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client, record_ttl_seconds="3600")
    queue.enqueue([queue.build(request())])
    job_id = job_id_for(KEY)
    job = text_hash(redis_client, Keys.rq_job(job_id))
    assert json.loads(job["data"]) == [LAUNCH_POD, None, [request().to_payload(None)], {}]
    assert (job["status"], job["origin"], job["timeout"]) == ("queued", QUEUE, "120")
    assert job["description"] == "etl.load run=manual__2026-11-24T00:00:00+00:00 try=1 map=-1"
    assert redis_client.ttl(Keys.rq_job(job_id)) == -1  # a queued job never expires
    record = TryRecords(redis_client, KEYS, 3600).get(job_id)
    assert record is not None
    assert (record.key, record.state, record.queue) == (KEY, TryState.QUEUED, QUEUE)
    assert 3590 < redis_client.ttl(KEYS.try_record(job_id)) <= 3600


def test_a_signed_request_carries_its_signature(redis_client: redis.Redis) -> None:
    signing_key = "k" * 40
    queue = task_queue(redis_client, signing_key=signing_key)
    queue.enqueue([queue.build(request())])
    data = json.loads(text_hash(redis_client, Keys.rq_job(job_id_for(KEY)))["data"])
    assert LaunchRequest.from_payload(data[2][0], signing_key) == request()


def test_a_stock_rq_worker_runs_the_enqueued_launch(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request()), queue.build(request(TaskKey("a", "b", "c"), queue="gpu"))])
    run_worker(redis_client)
    assert calls == [request().to_payload(None)]
    job = Job.fetch(job_id_for(KEY), connection=redis_client, serializer=SERIALIZER)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == {"launched": "load"}
    assert redis_client.llen(Keys.rq_queue("gpu")) == 1  # another queue's job is left for its worker


def test_a_job_naming_another_function_is_failed_without_calling_it(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    good = queue.build(request())
    fields = list(good.job_fields)
    data_at = fields.index("data") + 1
    fields[data_at] = json.dumps([f"{__name__}.forbidden", None, ["x"], {}]).encode()
    evil = PreparedJob(KEY, good.job_id, QUEUE, tuple(fields), good.record_fields)
    queue.enqueue([evil])
    run_worker(redis_client)
    assert calls == []
    job = Job.fetch(good.job_id, connection=redis_client, serializer=SERIALIZER)
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None
    assert "not allowed here" in str(result.exc_string)


def test_revoking_a_queued_try_takes_it_off_the_queue(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request()), queue.build(request(TaskKey("a", "b", "c")))])
    result = queue.revoke(KEY, "ns")
    assert (result.action, result.state) == (RevokeAction.DEQUEUED, TryState.QUEUED)
    job_id = job_id_for(KEY)
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id_for(TaskKey("a", "b", "c")).encode()]
    canceled = Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER)  # rq can still read it
    assert (canceled.get_status(), canceled.ended_at is not None) == (JobStatus.CANCELED, True)
    record = TryRecords(redis_client, KEYS, 600).get(job_id)
    assert record is not None
    assert (record.state, record.reason, record.revoked) == (TryState.REVOKED, "Revoked", True)
    entries: Any = redis_client.xrange(KEYS.results)
    assert [Outcome.from_fields(fields).state for _, fields in entries] == [TryState.REVOKED]
    assert queue.revoke(KEY, "ns").action is RevokeAction.FINISHED
    run_worker(redis_client)
    assert calls == [request(TaskKey("a", "b", "c")).to_payload(None)]


def test_revoking_a_launched_try_queues_one_pod_deletion(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request(queue="gpu"))])
    job_id = job_id_for(KEY)
    redis_client.delete(Keys.rq_queue("gpu"))  # a dispatcher took it ...
    records = TryRecords(redis_client, KEYS, 600)
    records.advance(TryRecord(KEY, TryState.LAUNCHED, pod=job_id, namespace="team-a"))  # ... and launched it
    result = queue.revoke(KEY, "default")
    assert (result.action, result.state) == (RevokeAction.DELETE_QUEUED, TryState.LAUNCHED)
    assert queue.revoke(KEY, "default").action is RevokeAction.DELETE_QUEUED
    assert redis_client.lrange(Keys.rq_queue("gpu"), 0, -1) == [f"{job_id}-delete".encode()]
    record = records.get(job_id)
    assert record is not None
    assert (record.state, record.revoked) == (TryState.LAUNCHED, True)
    assert redis_client.xlen(KEYS.results) == 0  # the dispatcher reports once the pod is gone
    run_worker(redis_client, "gpu")
    assert calls == [DeleteRequest(KEY, "team-a").to_payload(None)]


def test_revoking_an_unknown_try_changes_nothing(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    result = queue.revoke(KEY, "ns")
    assert (result.action, result.state) == (RevokeAction.UNKNOWN, None)
    assert redis_client.keys("*") == []


def test_a_queue_key_of_another_type_refuses_only_that_job_and_writes_nothing_for_it(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    redis_client.set(Keys.rq_queue("other"), "not a list")
    bad, good = TaskKey("etl", "bad", "run"), TaskKey("etl", "good", "run")
    results = queue.enqueue([queue.build(request(bad, queue="other")), queue.build(request(good))])
    assert [result.status for result in results] == [EnqueueStatus.REFUSED, EnqueueStatus.ENQUEUED]
    assert results[0].message == "Redis key rq:queue:other is a string, not a list"
    assert not redis_client.exists(Keys.rq_job(job_id_for(bad)), KEYS.try_record(job_id_for(bad)))
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id_for(good).encode()]
    # any key the job writes is checked, e.g. its job hash
    redis_client.set(Keys.rq_job(job_id_for(KEY)), "junk")
    (refused,) = queue.enqueue([queue.build(request())])
    assert refused == EnqueueResult(
        EnqueueStatus.REFUSED, f"Redis key rq:job:{job_id_for(KEY)} is a string, not a hash"
    )
    assert not redis_client.exists(KEYS.try_record(job_id_for(KEY)))


def test_a_queued_try_on_no_list_can_be_enqueued_again_but_not_one_being_taken(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request())])
    job_id = job_id_for(KEY)
    redis_client.delete(Keys.rq_queue(QUEUE))  # status still "queued", but on no list: it would never run
    assert flags(queue.enqueue([queue.build(request())])) == [True]
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id.encode()]
    # a dispatcher moved it to the intermediate list (BLMOVE) and is about to start it: a duplicate
    redis_client.lmove(Keys.rq_queue(QUEUE), Keys.rq_intermediate(QUEUE))
    assert flags(queue.enqueue([queue.build(request())])) == [False]
    assert redis_client.llen(Keys.rq_queue(QUEUE)) == 0


def test_a_never_launched_try_moves_to_the_queue_it_is_enqueued_on_now(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request(queue="gpu"))])
    job_id = job_id_for(KEY)
    redis_client.lpop(Keys.rq_queue("gpu"))
    redis_client.hset(Keys.rq_job(job_id), "status", "failed")
    redis_client.zadd(Keys.rq_failed("gpu"), {job_id: 1})
    assert flags(queue.enqueue([queue.build(request(queue=QUEUE)), queue.build(request(queue=QUEUE))])) == [
        True,
        False,
    ]
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id.encode()]
    assert redis_client.zcard(Keys.rq_failed("gpu")) == 0  # the earlier queue's keys were passed in too
    record = TryRecords(redis_client, KEYS, 600).get(job_id)
    assert record is not None
    assert record.queue == QUEUE


def test_the_scripts_build_no_key_names() -> None:
    # Every key a script touches is declared in KEYS (what Redis requires of scripts): no names built in Lua.
    for script in (bridge.queue._ENQUEUE, bridge.queue._REVOKE):
        assert "'rq:" not in script
        assert '"rq:' not in script


def test_revoking_a_requeued_try_that_a_dispatcher_ran_also_deletes_its_pod(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    queue.enqueue([queue.build(request())])
    job_id = job_id_for(KEY)
    # A dispatcher started the job (and may have created the pod), then died; the reaper put the job back.
    redis_client.hset(
        Keys.rq_job(job_id), mapping={"started_at": "2026-11-24T00:00:00.000000Z", "worker_name": "d-1"}
    )
    result = queue.revoke(KEY, "ns")
    assert (result.action, result.state) == (RevokeAction.DEQUEUED, TryState.QUEUED)
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [f"{job_id}-delete".encode()]
    record = TryRecords(redis_client, KEYS, 600).get(job_id)
    assert record is not None
    assert (record.state, record.revoked) == (TryState.REVOKED, True)
    run_worker(redis_client)
    assert calls == [DeleteRequest(KEY, "ns").to_payload(None)]


# --- launch secrets ----------------------------------------------------------------------------------------

TOKEN = "eyJhbGciOi.secret-token.sig"
SECRET_ENV = {"KBRIDGE_WORKLOAD_JSON": f'{{"token": "{TOKEN}"}}', "OTHER": "second value"}


def secret_request(key: TaskKey = KEY, queue: str = QUEUE) -> LaunchRequest:
    return LaunchRequest(
        key, ("python", "-c", "pass"), queue, {}, "2026-11-24T00:00:00.000+00:00", tuple(SECRET_ENV)
    )


def test_a_launch_secret_is_written_with_its_ttl_in_the_same_call_and_never_in_the_job(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    client = counting_client(redis_server)
    queue = task_queue(client, launch_secret_ttl_seconds="120")
    queue.enqueue([queue.build(request(TaskKey("warm", "up", "run")))])  # connects, loads the script
    plain = TaskKey("etl", "plain", "run")
    prepared = [queue.build(secret_request(), SECRET_ENV), queue.build(request(plain))]
    assert TOKEN not in repr(prepared)  # a PreparedJob in a log line or traceback shows no value
    CountingConnection.sends = 0
    assert flags(queue.enqueue(prepared)) == [True, True]
    assert CountingConnection.sends == 1
    job_id = job_id_for(KEY)
    assert text_hash(redis_client, KEYS.launch_secret(job_id)) == SECRET_ENV
    assert 110 < redis_client.ttl(KEYS.launch_secret(job_id)) <= 120
    assert not redis_client.exists(KEYS.launch_secret(job_id_for(plain)))  # no secret, no key
    job = text_hash(redis_client, Keys.rq_job(job_id))
    assert json.loads(job["data"])[2][0]["secret_env"] == ["KBRIDGE_WORKLOAD_JSON", "OTHER"]
    for key in (Keys.rq_job(job_id), KEYS.try_record(job_id)):
        assert all(
            "secret-token" not in value and "second value" not in value
            for value in text_hash(redis_client, key).values()
        )
    with pytest.raises(ValueError, match="exactly the names"):
        queue.build(secret_request(), {"KBRIDGE_WORKLOAD_JSON": "only one"})
    client.close()


def test_a_duplicate_refreshes_the_launch_secret_only_while_its_job_waits_for_a_dispatcher(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    job_id = job_id_for(KEY)
    secret_key = KEYS.launch_secret(job_id)
    queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    redis_client.expire(secret_key, 5)
    fresher = {"KBRIDGE_WORKLOAD_JSON": "fresher token", "OTHER": "fresher"}
    assert flags(queue.enqueue([queue.build(secret_request(), fresher)])) == [False]  # a scheduler restart
    assert text_hash(redis_client, secret_key) == fresher
    assert redis_client.ttl(secret_key) > 5  # and a full TTL again
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id.encode()]  # still one job

    # a dispatcher started the job and used the values: a duplicate brings none back
    redis_client.hset(Keys.rq_job(job_id), "status", "started")
    redis_client.delete(secret_key)
    assert flags(queue.enqueue([queue.build(secret_request(), fresher)])) == [False]
    assert not redis_client.exists(secret_key)
    # nor once the try is launched, nor once it is revoked
    redis_client.hset(Keys.rq_job(job_id), "status", "queued")
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(KEY, TryState.LAUNCHED, pod=job_id, namespace="ns"))
    assert flags(queue.enqueue([queue.build(secret_request(), fresher)])) == [False]
    assert not redis_client.exists(secret_key)
    other = TaskKey("etl", "other", "run")
    queue.enqueue([queue.build(secret_request(other), SECRET_ENV)])
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id_for(other))
    redis_client.delete(KEYS.launch_secret(job_id_for(other)))
    assert flags(queue.enqueue([queue.build(secret_request(other), fresher)])) == [False]
    assert not redis_client.exists(KEYS.launch_secret(job_id_for(other)))


def test_a_never_launched_try_enqueued_again_gets_the_new_values_or_none(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    job_id = job_id_for(KEY)
    queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    redis_client.lpop(Keys.rq_queue(QUEUE))
    redis_client.hset(
        Keys.rq_job(job_id), "status", "failed"
    )  # never launched: the scheduler queues it again
    fresher = {"KBRIDGE_WORKLOAD_JSON": "fresher token", "OTHER": "fresher"}
    assert flags(queue.enqueue([queue.build(secret_request(), fresher)])) == [True]
    assert text_hash(redis_client, KEYS.launch_secret(job_id)) == fresher
    redis_client.lpop(Keys.rq_queue(QUEUE))
    redis_client.hset(Keys.rq_job(job_id), "status", "failed")
    assert flags(queue.enqueue([queue.build(request())])) == [True]  # now without secrets: the old ones go
    assert not redis_client.exists(KEYS.launch_secret(job_id))


def test_a_launch_secret_key_of_another_type_refuses_the_job(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    redis_client.set(KEYS.launch_secret(job_id_for(KEY)), "junk")
    (refused,) = queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    assert refused.status is EnqueueStatus.REFUSED
    assert "launch-secret" in refused.message
    assert not redis_client.exists(Keys.rq_job(job_id_for(KEY)))


@pytest.mark.parametrize("launched", [False, True], ids=["dequeued", "delete-queued"])
def test_revoking_a_try_deletes_its_launch_secret(redis_client: redis.Redis, launched: bool) -> None:
    queue = task_queue(redis_client)
    job_id = job_id_for(KEY)
    queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    if launched:  # a dispatcher took the job and has not deleted the values yet
        redis_client.delete(Keys.rq_queue(QUEUE))
        TryRecords(redis_client, KEYS, 600).advance(
            TryRecord(KEY, TryState.LAUNCHED, pod=job_id, namespace="ns")
        )
    result = queue.revoke(KEY, "ns")
    assert result.action is (RevokeAction.DELETE_QUEUED if launched else RevokeAction.DEQUEUED)
    assert not redis_client.exists(KEYS.launch_secret(job_id))


def test_a_duplicate_with_other_names_does_not_refresh_the_launch_secret(redis_client: redis.Redis) -> None:
    queue = task_queue(redis_client)
    secret_key = KEYS.launch_secret(job_id_for(KEY))
    queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    assert (
        text_hash(redis_client, KEYS.try_record(job_id_for(KEY)))["secret_env"]
        == "KBRIDGE_WORKLOAD_JSON,OTHER"
    )
    renamed = LaunchRequest(
        KEY, ("true",), QUEUE, {}, "2026-11-24T00:00:00.000+00:00", ("KBRIDGE_WORKLOAD_JSON",)
    )
    assert flags(queue.enqueue([queue.build(renamed, {"KBRIDGE_WORKLOAD_JSON": "fresher"})])) == [False]
    assert text_hash(redis_client, secret_key) == SECRET_ENV  # the queued job reads both of its names
    reordered = LaunchRequest(
        KEY, ("true",), QUEUE, {}, "2026-11-24T00:00:00.000+00:00", ("OTHER", "KBRIDGE_WORKLOAD_JSON")
    )
    fresher = {"KBRIDGE_WORKLOAD_JSON": "fresher token", "OTHER": "fresher"}
    assert flags(queue.enqueue([queue.build(reordered, fresher)])) == [False]
    assert text_hash(redis_client, secret_key) == fresher  # the same names in another order: refreshed


def test_too_many_secret_names_refuse_that_job_before_any_write_and_the_next_is_enqueued(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    names = tuple(f"V{index}" for index in range(MAX_SECRET_ENV_NAMES + 1))
    many = LaunchRequest(KEY, ("true",), QUEUE, {}, "2026-11-24T00:00:00.000+00:00", names)
    after = TaskKey("etl", "after", "run")
    refused, enqueued = queue.enqueue(
        [queue.build(many, dict.fromkeys(names, "value")), queue.build(secret_request(after), SECRET_ENV)]
    )
    assert refused.status is EnqueueStatus.REFUSED
    assert f"has 65 names, more than {MAX_SECRET_ENV_NAMES}" in refused.message
    assert enqueued.status is EnqueueStatus.ENQUEUED
    job_id = job_id_for(KEY)
    for written in (Keys.rq_job(job_id), KEYS.try_record(job_id), KEYS.launch_secret(job_id)):
        assert not redis_client.exists(written), written
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [job_id_for(after).encode()]


def test_revoke_with_forget_deletes_a_never_run_try_so_it_can_be_enqueued_again(
    redis_client: redis.Redis,
) -> None:
    queue = task_queue(redis_client)
    job_id = job_id_for(KEY)
    queue.enqueue([queue.build(secret_request(), SECRET_ENV)])
    result = queue.revoke(KEY, "ns", forget=True)
    assert (result.action, result.state) == (RevokeAction.FORGOTTEN, TryState.QUEUED)
    for gone in (Keys.rq_job(job_id), KEYS.try_record(job_id), KEYS.launch_secret(job_id)):
        assert not redis_client.exists(gone), gone
    assert redis_client.llen(Keys.rq_queue(QUEUE)) == 0
    assert redis_client.xlen(KEYS.results) == 0  # no outcome for a try that is forgotten
    assert flags(queue.enqueue([queue.build(secret_request(), SECRET_ENV)])) == [True]  # new again
    assert text_hash(redis_client, KEYS.launch_secret(job_id)) == SECRET_ENV

    # a try a dispatcher ran before (its pod may exist) is revoked as without forget: pod deletion queued
    redis_client.hset(Keys.rq_job(job_id), "worker_name", "kbridge-dispatcher-gone")
    result = queue.revoke(KEY, "ns", forget=True)
    assert result.action is RevokeAction.DEQUEUED
    assert redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1) == [f"{job_id}-delete".encode()]
    assert text_hash(redis_client, KEYS.try_record(job_id))["state"] == "revoked"
