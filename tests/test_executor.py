"""The executor on a real Redis, with the test playing dispatcher and watcher through the try records.

Outcomes are produced exactly as the watcher produces them (``TryRecords.advance``), so what ``sync()``
reads is what it reads in production.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis

import bridge.cli
import bridge.executor
import bridge.results
from bridge.config import KubeConfig
from bridge.executor import KubernetesExecutor
from bridge.protocol import Keys, Outcome, TryRecord, TryState, job_id_for
from bridge.records import TryRecords
from bridge.redis_server import RedisServer
from bridge.results import ResultReader
from bridge.task_key import TaskKey, TaskKeyError
from tests.test_queue import CountingConnection, counting_client, text_hash
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

KEYS = Keys("kbridge")
QUEUE = Keys.rq_queue("kbridge")
COMMAND = ["airflow", "tasks", "run", "etl", "load", "run"]


def key(task: str, dag: str = "etl") -> TaskKey:
    return TaskKey(dag, task, "manual__2026-11-24", 1)


def make_executor(server: RedisServer, redis_client: Any = None, **bridge: str) -> KubernetesExecutor:
    settings = {"redis_url": server.url, "consumer_name": "scheduler-1", **bridge}
    executor = KubernetesExecutor(KubeConfig({"bridge": settings}), redis=redis_client)
    executor.start()
    return executor


def watcher(client: redis.Redis) -> TryRecords:
    return TryRecords(client, KEYS, 600)


def report(client: redis.Redis, task: TaskKey, state: TryState, **fields: Any) -> None:
    """What a dispatcher (launched) or the watcher (running, terminal) writes for a try."""
    records = watcher(client)
    if state is TryState.LAUNCHED:
        records.advance(TryRecord(task, state, pod=job_id_for(task), namespace="default"))
        return
    outcome = Outcome(task, state, source="watcher", **fields)
    records.advance(TryRecord(task, state, **fields), outcome)


def queued_ids(client: redis.Redis, queue: str = QUEUE) -> list[str]:
    return [item.decode() for item in client.lrange(queue, 0, -1)]  # type: ignore[union-attr]


def events(executor: KubernetesExecutor) -> dict[TaskKey, tuple[str, str]]:
    return {task: (state, outcome.reason) for task, (state, outcome) in executor.get_event_buffer().items()}


def pending(client: redis.Redis, group: str = "executor") -> int:
    summary: Any = client.xpending(KEYS.results, group)
    return int(summary["pending"])


def sync_until_finished(executor: KubernetesExecutor, task: TaskKey, what: str) -> None:
    """sync() until ``task`` finished: after a Redis restart the first call may meet a dead connection."""

    def finished() -> bool:
        executor.sync()
        return task not in executor.running

    wait_until(finished, what)


def test_execute_async_does_no_io_and_sync_sends_the_batch_in_one_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    client = counting_client(redis_server)
    executor = make_executor(redis_server, client)
    executor.execute_async(key("warm-up"), COMMAND)
    executor.flush()  # loads the script
    CountingConnection.sends = 0
    tasks = [key(f"task-{index}") for index in range(50)]
    for task in tasks:
        executor.execute_async(task, COMMAND)
    assert CountingConnection.sends == 0
    assert executor.flush()
    assert CountingConnection.sends == 1
    assert queued_ids(redis_client)[1:] == [job_id_for(task) for task in tasks]
    assert executor.running == {key("warm-up"), *tasks}
    client.close()


def test_sync_reports_each_state_change_once(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(redis_server)
    done, oom, busy = key("done"), key("oom"), key("busy")
    for task in (done, oom, busy):
        executor.execute_async(tuple(task), COMMAND)  # Airflow passes its own key type: a 5-tuple
    executor.sync()
    assert executor.get_event_buffer() == {}
    for task in (done, oom, busy):
        report(redis_client, task, TryState.LAUNCHED)
        report(redis_client, task, TryState.RUNNING)
    report(redis_client, done, TryState.SUCCESS, exit_code=0)
    report(redis_client, oom, TryState.FAILED, exit_code=137, reason="OOMKilled")
    with caplog.at_level(logging.INFO, logger="bridge.executor"):
        executor.sync()
    assert events(executor) == {done: ("success", ""), oom: ("failed", "OOMKilled"), busy: ("running", "")}
    assert executor.running == {busy}
    assert f"Changing state of {oom} to failed (OOMKilled)" in caplog.text
    assert pending(redis_client) == 0  # acknowledged once applied
    # replayed outcomes (e.g. a record that expired and was written again) change nothing
    entries: Any = redis_client.xrange(KEYS.results)
    for _, fields in entries:
        redis_client.xadd(KEYS.results, fields)
    executor.sync()
    assert events(executor) == {}
    assert pending(redis_client) == 0
    report(redis_client, busy, TryState.SUCCESS, exit_code=0)
    executor.sync()
    assert events(executor) == {busy: ("success", "")}
    assert executor.running == set()


def test_one_sync_applies_a_bounded_number_of_batches(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server, result_batch_size="2")
    tasks = [key(f"task-{index:02}") for index in range(25)]
    for task in tasks:
        executor.execute_async(task, COMMAND)
    executor.sync()
    for task in tasks:
        report(redis_client, task, TryState.SUCCESS)
    executor.sync()
    assert len(executor.get_event_buffer()) == 2 * bridge.executor.READS_PER_SYNC
    executor.sync()
    assert len(executor.get_event_buffer()) == 25 - 2 * bridge.executor.READS_PER_SYNC
    assert executor.running == set()


def test_a_restarted_executor_adopts_its_tries_and_rereads_its_pending_outcomes(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first = make_executor(redis_server)
    busy, done, fresh, lost, unknown = (key(name) for name in ("busy", "done", "fresh", "lost", "unknown"))
    for task in (busy, done, fresh, lost):
        first.execute_async(task, COMMAND)
    first.sync()
    report(redis_client, busy, TryState.LAUNCHED)
    report(redis_client, busy, TryState.RUNNING)
    report(redis_client, done, TryState.FAILED, reason="Evicted", message="node pressure")
    redis_client.hset(Keys.rq_job(job_id_for(lost)), "status", "failed")  # a dispatcher bug failed it
    redis_client.lrem(QUEUE, 0, job_id_for(lost))
    # the first scheduler read both outcomes and died before acknowledging them
    crashed = ResultReader(redis_client, KEYS, "executor", "scheduler-1", 10)
    assert len(crashed.read()) == 2

    second = make_executor(redis_server)  # same consumer name
    assert second.clear_not_launched_queued_tasks([busy, done, fresh, lost, unknown]) == [lost, unknown]
    assert second.running == {busy, fresh}
    assert events(second) == {done: ("failed", "Evicted")}  # from the record, at once
    second.sync()
    # both outcomes the first scheduler had read are read again; done's is a duplicate by now
    assert events(second) == {busy: ("running", "")}
    assert pending(redis_client) == 0
    # the scheduler queues the never-launched tries again: they are enqueued anew, not taken as duplicates
    second.execute_async(lost, COMMAND)
    second.execute_async(unknown, COMMAND)
    second.sync()
    assert queued_ids(redis_client)[-2:] == [job_id_for(lost), job_id_for(unknown)]
    assert text_hash(redis_client, Keys.rq_job(job_id_for(lost)))["status"] == "queued"
    assert second.running == {busy, fresh, lost, unknown}


def test_queueing_a_try_that_already_finished_reports_its_outcome(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first = make_executor(redis_server)
    first.execute_async(key("done"), COMMAND)
    first.sync()
    report(redis_client, key("done"), TryState.SUCCESS, exit_code=0)
    first.sync()
    second = make_executor(redis_server, consumer_name="scheduler-2")
    second.execute_async(key("done"), COMMAND)
    second.sync()
    assert events(second) == {key("done"): ("success", "")}
    assert second.running == set()
    assert queued_ids(redis_client) == [job_id_for(key("done"))]  # not queued twice


def test_nothing_is_lost_while_redis_is_down(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.executor")
    executor = make_executor(redis_server)
    executor.execute_async(key("before"), COMMAND)
    executor.sync()
    redis_server.stop()
    try:
        executor.execute_async(key("during"), COMMAND)
        executor.sync()  # logs, does not raise
        executor.sync()
        assert not executor.flush()
        assert executor.clear_not_launched_queued_tasks([key("before")]) == []
        executor.end(timeout=0.2)
    finally:
        redis_server.start()
    assert caplog.text.count("Redis unavailable") == 1  # once per outage, not once per loop
    client = redis_server.client()
    report(client, key("before"), TryState.SUCCESS)
    sync_until_finished(executor, key("before"), "the outcome after the outage")
    assert "Redis reachable again" in caplog.text
    assert queued_ids(client) == [job_id_for(key("before")), job_id_for(key("during"))]
    assert events(executor) == {key("before"): ("success", "")}
    client.close()


def test_sync_recovers_from_an_outage_with_nothing_to_send(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("a"), COMMAND)
    executor.sync()
    redis_server.stop()
    try:
        executor.sync()
    finally:
        redis_server.start()
    client = redis_server.client()
    report(client, key("a"), TryState.SUCCESS)
    sync_until_finished(executor, key("a"), "the outcome after the outage")
    assert events(executor) == {key("a"): ("success", "")}
    client.close()


def test_sync_recovers_the_group_after_the_stream_is_lost_or_redis_restarts(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    tasks = [key("one"), key("two"), key("three")]
    for task in tasks:
        executor.execute_async(task, COMMAND)
    executor.sync()
    redis_client.delete(KEYS.results)  # group gone: the next read gets NOGROUP
    report(redis_client, tasks[0], TryState.SUCCESS)
    executor.sync()
    assert events(executor) == {tasks[0]: ("success", "")}
    redis_server.restart(hard=True)
    client = redis_server.client()
    report(client, tasks[1], TryState.SUCCESS)
    sync_until_finished(executor, tasks[1], "sync after the restart")
    client.delete(KEYS.results)
    report(client, tasks[2], TryState.FAILED, reason="Error", exit_code=1)
    executor.sync()
    assert events(executor) == {tasks[1]: ("success", ""), tasks[2]: ("failed", "Error")}
    client.close()


def test_malformed_entries_are_acknowledged_and_skipped(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("ok"), COMMAND)
    executor.sync()
    redis_client.xadd(KEYS.results, {"state": "success", "key": "{}"})
    report(redis_client, key("ok"), TryState.SUCCESS)
    executor.sync()
    assert events(executor) == {key("ok"): ("success", "")}
    assert "Skipping malformed entry" in caplog.text
    assert pending(redis_client) == 0


def test_sync_trims_only_what_every_group_acknowledged(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.executor, "TRIM_INTERVAL_SECONDS", 0.0)
    executor = make_executor(redis_server)
    executor.execute_async(key("a"), COMMAND)
    executor.execute_async(key("b"), COMMAND)
    executor.sync()
    report(redis_client, key("a"), TryState.SUCCESS)
    executor.sync()
    assert redis_client.xlen(KEYS.results) == 0
    redis_client.xgroup_create(KEYS.results, "audit", id="$")
    report(redis_client, key("b"), TryState.SUCCESS)
    executor.sync()
    assert redis_client.xlen(KEYS.results) == 1  # the audit group has not read it
    assert events(executor) == {key("a"): ("success", ""), key("b"): ("success", "")}


def test_end_waits_until_every_running_task_finished(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    first, second = key("first"), key("second")
    executor.execute_async(first, COMMAND)
    executor.execute_async(second, COMMAND)
    ender = threading.Thread(target=executor.end, kwargs={"timeout": 30})
    ender.start()
    wait_until(lambda: redis_client.llen(QUEUE) == 2, "end() to send the queued tasks")
    report(redis_client, first, TryState.SUCCESS)
    wait_until(
        lambda: pending(redis_client) == 0 and redis_client.xlen(KEYS.results) == 1, "the first outcome"
    )
    wait_until(lambda: first not in executor.running, "the first outcome applied")
    assert ender.is_alive()  # still waiting for the second task
    report(redis_client, second, TryState.FAILED, reason="Error")
    ender.join(timeout=10)
    assert not ender.is_alive()
    assert executor.running == set()
    assert events(executor) == {first: ("success", ""), second: ("failed", "Error")}


def test_end_gives_up_after_its_timeout(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("slow"), COMMAND)
    started = time.monotonic()
    executor.end(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 30  # the bound only shows it stopped: no timing claim
    assert executor.running == {key("slow")}
    assert queued_ids(redis_client) == [job_id_for(key("slow"))]


def test_terminate_revokes_queued_and_launched_tries(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    waiting, launched, unsent = key("waiting"), key("launched"), key("unsent")
    executor.execute_async(waiting, COMMAND)
    executor.execute_async(launched, COMMAND)
    executor.sync()
    redis_client.lrem(QUEUE, 0, job_id_for(launched))  # a dispatcher took it and created the pod
    report(redis_client, launched, TryState.LAUNCHED)
    executor.execute_async(unsent, COMMAND)
    executor.terminate()
    assert executor.running == set()
    assert events(executor) == dict.fromkeys((waiting, launched, unsent), ("failed", "Revoked"))
    assert queued_ids(redis_client) == [f"{job_id_for(launched)}-delete"]
    records = watcher(redis_client).get_many([job_id_for(task) for task in (waiting, launched, unsent)])
    assert [(record.state, record.revoked) for record in records.values() if record is not None] == [
        (TryState.REVOKED, True),
        (TryState.LAUNCHED, True),  # the dispatcher's delete job moves it on once the pod is gone
        (TryState.REVOKED, True),
    ]


def test_revoke_one_try_and_get_its_outcome_from_the_stream(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("a"), COMMAND)
    executor.sync()
    assert executor.revoke(key("a"))
    assert not executor.revoke(key("never-queued"))
    executor.sync()
    assert events(executor) == {key("a"): ("failed", "Revoked")}
    assert queued_ids(redis_client) == []


def test_revoking_a_task_not_yet_sent_fails_it_without_touching_redis(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("a"), COMMAND)
    executor.execute_async(key("b"), COMMAND)
    assert executor.revoke(key("a"))
    assert events(executor) == {key("a"): ("failed", "Revoked")}
    executor.sync()
    assert queued_ids(redis_client) == [job_id_for(key("b"))]
    assert executor.running == {key("b")}


def test_bad_task_input_fails_only_that_task(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("shell"), "airflow tasks run etl load run")
    executor.execute_async(key("numbers"), ["sleep", 5])  # type: ignore[list-item]
    executor.execute_async(
        key("config"), COMMAND, executor_config={"KubernetesExecutor": {"request_cpu": "x"}}
    )
    executor.execute_async(key("queue"), COMMAND, queue="no spaces please")
    executor.execute_async(key("good"), COMMAND)
    executor.sync()
    failed = executor.get_event_buffer()
    assert {task: (state, outcome.reason) for task, (state, outcome) in failed.items()} == {
        key(task): ("failed", "InvalidTask") for task in ("shell", "numbers", "config", "queue")
    }
    messages = {task.task_id: outcome.message for task, (_, outcome) in failed.items()}
    assert "must be a list of strings (argv), got a string" in messages["shell"]
    assert "only strings, got [5]" in messages["numbers"]
    assert "request_cpu" in messages["config"]
    assert "queue 'no spaces please' is not a valid rq queue name" in messages["queue"]
    assert executor.running == {key("good")}
    assert queued_ids(redis_client) == [job_id_for(key("good"))]
    assert "cannot be queued" in caplog.text
    with pytest.raises(TaskKeyError, match="try_number"):
        executor.execute_async(("etl", "load", "run", "1", -1), COMMAND)


def test_a_task_with_executor_config_and_a_queue_carries_both(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    config = {"KubernetesExecutor": {"request_cpu": "500m", "limit_memory": "1Gi"}}
    executor.execute_async(key("gpu"), COMMAND, queue="gpu", executor_config=config)
    executor.sync()
    job = text_hash(redis_client, Keys.rq_job(job_id_for(key("gpu"))))
    assert '"pod_config": {"KubernetesExecutor": {' in job["data"]
    assert queued_ids(redis_client, Keys.rq_queue("gpu")) == [job_id_for(key("gpu"))]


def test_the_event_buffer_can_be_read_per_dag(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("x", dag="a"), "bad")
    executor.execute_async(key("x", dag="b"), "bad")
    assert list(executor.get_event_buffer(["a"])) == [key("x", dag="a")]
    assert list(executor.get_event_buffer()) == [key("x", dag="b")]


def test_outcomes_whose_read_reply_was_lost_are_applied_on_the_next_sync(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    executor = make_executor(redis_server, client)
    executor.execute_async(key("lost"), COMMAND)
    executor.sync()
    report(redis_client, key("lost"), TryState.SUCCESS)
    real_read = client.xreadgroup

    def reply_lost(*args: Any, **kwargs: Any) -> Any:
        real_read(*args, **kwargs)
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(client, "xreadgroup", reply_lost)
    executor.sync()  # logged, not raised; Redis delivered the outcome, the executor never saw it
    monkeypatch.setattr(client, "xreadgroup", real_read)
    assert pending(redis_client) == 1
    executor.sync()
    assert events(executor) == {key("lost"): ("success", "")}
    assert pending(redis_client) == 0
    client.close()


def test_an_entry_that_is_not_utf8_neither_stops_sync_nor_costs_its_neighbours(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(redis_server)
    first, second = key("first"), key("second")
    executor.execute_async(first, COMMAND)
    executor.execute_async(second, COMMAND)
    executor.sync()
    report(redis_client, first, TryState.SUCCESS)
    redis_client.xadd(KEYS.results, {"key": b"\xff\xfe", "state": "success"})
    report(redis_client, second, TryState.FAILED, reason="Error", exit_code=1)
    executor.sync()
    assert events(executor) == {first: ("success", ""), second: ("failed", "Error")}
    assert "not UTF-8" in caplog.text
    assert pending(redis_client) == 0  # the bad entry was acknowledged too
    restarted = make_executor(redis_server)  # same consumer name: nothing left to re-read
    restarted.sync()
    assert events(restarted) == {}
    assert pending(redis_client) == 0


def test_an_unexpected_error_in_sync_is_logged_and_nothing_is_lost(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor = make_executor(redis_server)
    executor.execute_async(key("a"), COMMAND)
    executor.sync()
    report(redis_client, key("a"), TryState.SUCCESS)
    real_apply = executor._apply

    def broken_apply(entries: Any) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(executor, "_apply", broken_apply)
    executor.sync()  # logged with its traceback, not raised into the scheduler loop
    assert "Unexpected error in the executor" in caplog.text
    assert "a bug nobody foresaw" in caplog.text
    monkeypatch.setattr(executor, "_apply", real_apply)
    executor.sync()  # the outcome read before the error is read again
    assert events(executor) == {key("a"): ("success", "")}
    assert pending(redis_client) == 0


def test_outcomes_read_before_a_try_is_adopted_are_applied_when_it_is(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first = make_executor(redis_server)
    busy, done = key("busy"), key("done")
    first.execute_async(busy, COMMAND)
    first.execute_async(done, COMMAND)
    first.sync()
    report(redis_client, busy, TryState.LAUNCHED)
    report(redis_client, busy, TryState.RUNNING)
    report(redis_client, done, TryState.SUCCESS, exit_code=0)
    redis_client.delete(KEYS.try_record(job_id_for(done)))  # its record expired meanwhile
    redis_client.hset(Keys.rq_job(job_id_for(done)), "status", "finished")
    # the restarted scheduler syncs before it hands over the tries it believes queued
    second = make_executor(redis_server)
    second.sync()
    assert events(second) == {}
    assert pending(redis_client) == 0
    assert second.clear_not_launched_queued_tasks([busy, done]) == []
    assert events(second) == {busy: ("running", ""), done: ("success", "")}
    assert second.running == {busy}


def test_outcomes_another_consumer_left_unacknowledged_are_claimed(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_executor(redis_server, consumer_name="scheduler-pod-a")
    tasks = [key("one"), key("two")]
    for task in tasks:
        first.execute_async(task, COMMAND)
    first.sync()
    for task in tasks:
        report(redis_client, task, TryState.SUCCESS)
    # the first scheduler pod read both outcomes and died before acknowledging them
    assert len(ResultReader(redis_client, KEYS, "executor", "scheduler-pod-a", 10).read()) == 2
    monkeypatch.setattr(bridge.results, "CLAIM_IDLE_SECONDS", 0)
    second = make_executor(redis_server, consumer_name="scheduler-pod-b")  # a new host name; claims at start
    assert second.clear_not_launched_queued_tasks(tasks) == []
    second.sync()
    assert events(second) == dict.fromkeys(tasks, ("success", ""))
    assert pending(redis_client) == 0
    # later losses are claimed by sync(), every TRIM_INTERVAL_SECONDS, and then the stream is trimmed
    monkeypatch.setattr(bridge.executor, "TRIM_INTERVAL_SECONDS", 0.0)
    third = key("three")
    second.execute_async(third, COMMAND)
    second.sync()
    report(redis_client, third, TryState.SUCCESS)
    assert len(ResultReader(redis_client, KEYS, "executor", "scheduler-pod-c", 10).read()) == 1
    second.sync()
    assert events(second) == {third: ("success", "")}
    assert pending(redis_client) == 0
    assert redis_client.xlen(KEYS.results) == 0  # trimmed: nothing pins the stream any more


def test_a_queue_whose_key_holds_another_type_fails_only_its_tasks(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.set(Keys.rq_queue("other"), "not a list")
    executor = make_executor(redis_server)
    executor.execute_async(key("good1"), COMMAND)
    executor.execute_async(key("bad"), COMMAND, queue="other")
    executor.sync()
    failed = executor.get_event_buffer()
    assert {task: (state, outcome.reason) for task, (state, outcome) in failed.items()} == {
        key("bad"): ("failed", "InvalidTask")
    }
    assert failed[key("bad")][1].message == (
        "queue 'other' cannot be used: Redis key rq:queue:other is a string, not a list"
    )
    executor.execute_async(key("good2"), COMMAND)
    executor.sync()
    assert queued_ids(redis_client) == [job_id_for(key("good1")), job_id_for(key("good2"))]
    assert executor.running == {key("good1"), key("good2")}
    assert not redis_client.exists(KEYS.try_record(job_id_for(key("bad"))))


def test_adoption_follows_the_rq_job_without_a_record_and_settles_dead_revoked_tries(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first = make_executor(redis_server)
    recordless, revoked = key("recordless"), key("revoked")
    first.execute_async(recordless, COMMAND)
    first.execute_async(revoked, COMMAND)
    first.sync()
    redis_client.delete(KEYS.try_record(job_id_for(recordless)))  # expired; its rq job is still queued
    # revoked while a dispatcher had it; the launch job then failed without a word on the record
    redis_client.hset(KEYS.try_record(job_id_for(revoked)), "revoked", "1")
    redis_client.lrem(QUEUE, 0, job_id_for(revoked))
    redis_client.hset(Keys.rq_job(job_id_for(revoked)), "status", "failed")

    second = make_executor(redis_server)
    assert second.clear_not_launched_queued_tasks([recordless, revoked]) == []
    assert second.running == {recordless}
    assert events(second) == {revoked: ("failed", "Revoked")}


def test_terminate_reports_tries_that_already_ended_as_they_ended(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    done, ended, busy = key("done"), key("ended"), key("busy")
    for task in (done, ended, busy):
        executor.execute_async(task, COMMAND)
    executor.sync()
    report(redis_client, done, TryState.SUCCESS, exit_code=0)  # in the stream, not synced yet
    # recorded as ended, its outcome not in the stream (e.g. the stream was lost)
    watcher(redis_client).advance(TryRecord(ended, TryState.FAILED, reason="OOMKilled", exit_code=137))
    report(redis_client, busy, TryState.LAUNCHED)
    executor.terminate()
    assert events(executor) == {
        done: ("success", ""),
        ended: ("failed", "OOMKilled"),
        busy: ("failed", "Revoked"),
    }
    assert executor.running == set()


def test_outcomes_of_unknown_tries_are_kept_up_to_a_bound(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.executor, "UNADOPTED_OUTCOMES", 2)
    first = make_executor(redis_server)
    tasks = [key(f"task-{index}") for index in range(3)]
    for task in tasks:
        first.execute_async(task, COMMAND)
    first.sync()
    for task in tasks:
        report(redis_client, task, TryState.LAUNCHED)
        report(redis_client, task, TryState.RUNNING)
    second = make_executor(redis_server)
    second.sync()
    assert second.clear_not_launched_queued_tasks(tasks) == []
    assert second.running == set(tasks)  # all adopted from their records ...
    assert events(second) == dict.fromkeys(tasks[1:], ("running", ""))  # ... the oldest outcome was dropped


# --- secret env values -------------------------------------------------------------------------------------

TOKEN = "eyJhbGciOiJIUzI1NiJ9.the-workload-token.c2lnbmF0dXJl"


def stored_text(client: redis.Redis) -> dict[str, str]:
    """Every key of the database with everything it holds (names and values), as one text per key."""
    untyped: Any = client  # redis-py types its replies as unions of everything a reply may be
    found: dict[str, str] = {}
    for raw_key in untyped.scan_iter():
        name = raw_key.decode()
        kind = untyped.type(name).decode()
        if kind == "string":
            parts = [untyped.get(name)]
        elif kind == "hash":
            parts = [item for pair in untyped.hgetall(name).items() for item in pair]
        elif kind == "list":
            parts = untyped.lrange(name, 0, -1)
        elif kind == "set":
            parts = list(untyped.smembers(name))
        elif kind == "zset":
            parts = untyped.zrange(name, 0, -1)
        else:
            parts = [item for _, fields in untyped.xrange(name) for pair in fields.items() for item in pair]
        found[name] = "\n".join(part.decode(errors="replace") for part in parts)
    return found


def test_secret_env_values_are_only_ever_in_their_launch_secret_hash(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    executor = make_executor(redis_server)
    command = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "$(WORKLOAD)"]
    workload = f'{{"token": "{TOKEN}"}}'
    executor.execute_async(key("secret"), command, secret_env={"WORKLOAD": workload})
    executor.execute_async(key("plain"), COMMAND)
    executor.sync()
    job_id = job_id_for(key("secret"))
    report(redis_client, key("secret"), TryState.LAUNCHED)
    report(redis_client, key("secret"), TryState.FAILED, reason="Error", message="exit 1", exit_code=1)
    executor.sync()
    assert events(executor) == {key("secret"): ("failed", "Error")}

    holding = {name for name, text in stored_text(redis_client).items() if TOKEN in text}
    assert holding == {KEYS.launch_secret(job_id)}
    assert text_hash(redis_client, KEYS.launch_secret(job_id)) == {"WORKLOAD": workload}
    assert "$(WORKLOAD)" in text_hash(redis_client, Keys.rq_job(job_id))["data"]  # the command as given
    config_file = tmp_path / "kbridge.cfg"
    config_file.write_text(f"[bridge]\nredis_url = {redis_server.url}\n")
    for args in ([], ["--json"], ["--task", "etl", "secret", "manual__2026-11-24", "--json"]):
        assert bridge.cli.main(["status", "--config", str(config_file), *args]) == 0
        output = capsys.readouterr().out
        assert TOKEN not in output
    assert '"task_id": "secret"' in output  # the last one did describe the try
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("secret_env", "expected"),
    [
        (
            ["WORKLOAD", TOKEN],
            "secret_env must be a mapping of environment variable name to string value, got list",
        ),
        ({"BAD-NAME": TOKEN}, "secret_env: a name 'BAD-NAME' is not a valid name (letters, digits and '_'"),
        ({"1ST": TOKEN}, "secret_env: a name '1ST' is not a valid name"),
        ({5: TOKEN}, "secret_env: a name must be a string, got int"),
        ({"WORKLOAD": 5}, "secret_env['WORKLOAD'] must be a string, got int; pass the value as text"),
        ({"WORKLOAD": TOKEN + "\ud800"}, "secret_env['WORKLOAD'] is not valid Unicode text"),
        ({"WORKLOAD": TOKEN + "\x00"}, "secret_env['WORKLOAD'] contains a NUL character"),
        (
            {"WORKLOAD": TOKEN + "x" * (128 * 1024 - len("WORKLOAD=") - len(TOKEN))},
            "as 'WORKLOAD=<value>' it takes 131073 bytes, more than the 131072 Linux allows one environment",
        ),
        (
            {f"V{index}": TOKEN + "x" * (110 * 1024) for index in range(5)},
            "(names and values), more than the 524288 allowed (Kubernetes limits the pod's Secret to 1 MiB",
        ),
        (
            {f"V{index}": TOKEN for index in range(65)},
            "secret_env has 65 names, more than the 64 allowed",
        ),
    ],
    ids=[
        "list",
        "dash",
        "digit",
        "not-a-string-name",
        "not-a-string-value",
        "surrogate",
        "nul",
        "value-too-long",
        "too-big",
        "too-many",
    ],
)
def test_bad_secret_env_fails_only_that_task_naming_the_field_never_the_value(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    secret_env: Any,
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    executor = make_executor(redis_server)
    executor.execute_async(key("bad"), COMMAND, secret_env=secret_env)
    executor.execute_async(key("good"), COMMAND, secret_env={"WORKLOAD": "fine"})
    executor.sync()
    (state, outcome) = executor.get_event_buffer()[key("bad")]
    assert (state, outcome.reason) == ("failed", "InvalidTask")
    assert expected in outcome.message
    assert TOKEN not in outcome.message
    assert TOKEN not in caplog.text
    assert executor.running == {key("good")}
    assert all(TOKEN not in text for text in stored_text(redis_client).values())


def test_secret_env_values_of_exactly_the_limits_are_accepted(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    # one value as long as Linux lets an environment string be: "WORKLOAD=" + value + NUL = 128 KiB
    longest = "x" * (128 * 1024 - len("WORKLOAD=") - 1)
    executor.execute_async(key("long"), COMMAND, secret_env={"WORKLOAD": longest})
    # names and values of exactly 512 KiB in all: four values of 128 KiB ("Vn=" + value + NUL), and a fifth
    values = {f"V{index}": "x" * (128 * 1024 - 4) for index in range(4)}
    values["V4"] = "x" * (512 * 1024 - sum(len(name) + len(value) for name, value in values.items()) - 2)
    executor.execute_async(key("big"), COMMAND, secret_env=values)
    executor.execute_async(key("many"), COMMAND, secret_env={f"V{index}": "v" for index in range(64)})
    executor.sync()
    assert executor.get_event_buffer() == {}
    assert executor.running == {key("long"), key("big"), key("many")}
    assert redis_client.hstrlen(KEYS.launch_secret(job_id_for(key("long"))), "WORKLOAD") == len(longest)
    assert redis_client.hlen(KEYS.launch_secret(job_id_for(key("many")))) == 64


def test_revoke_without_report_never_puts_an_event_in_the_buffer(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    queued, launched, unsent = key("queued"), key("launched"), key("unsent")
    executor.execute_async(queued, COMMAND)
    executor.execute_async(launched, COMMAND)
    executor.sync()
    redis_client.lrem(QUEUE, 0, job_id_for(launched))  # a dispatcher took it and created the pod
    report(redis_client, launched, TryState.LAUNCHED)
    report(redis_client, launched, TryState.RUNNING)
    executor.execute_async(unsent, COMMAND)
    assert executor.revoke(queued, report=False)
    assert executor.revoke(launched, report=False)
    assert executor.revoke(unsent, report=False)
    assert executor.running == set()  # at once
    executor.sync()  # reads the revoked outcome the executor streamed itself, and the running one
    report(redis_client, launched, TryState.REVOKED, reason="Revoked")  # the dispatcher deleted the pod
    executor.sync()
    assert executor.get_event_buffer() == {}
    assert queued_ids(redis_client) == [f"{job_id_for(launched)}-delete"]  # unsent never reached Redis
    # outcomes read meanwhile are kept as for an unknown try: an adoption would report them
    assert executor.adopt([launched]) == []
    assert events(executor) == {launched: ("failed", "Revoked")}


def test_revoke_without_report_forgets_a_try_never_launched_so_the_same_key_runs_again(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    executor = make_executor(redis_server)
    queued, unsent = key("queued"), key("unsent")
    executor.execute_async(queued, COMMAND, secret_env={"WORKLOAD": TOKEN})
    executor.sync()
    executor.execute_async(unsent, COMMAND)
    # an outcome of an earlier life of the key, read before: it must not settle the try queued again
    executor._remember(Outcome(queued, TryState.FAILED, "Error", source="watcher"))
    assert executor.revoke(queued, report=False)
    assert executor.revoke(unsent, report=False)
    job_id = job_id_for(queued)
    assert stored_text(redis_client).keys() <= {KEYS.results, "rq:queues", QUEUE}  # nothing of the try
    assert queued_ids(redis_client) == []
    for task in (queued, unsent):  # Airflow's stuck-in-queued recovery queues the same keys again
        executor.execute_async(task, COMMAND, secret_env={"WORKLOAD": TOKEN})
    executor.sync()
    assert queued_ids(redis_client) == [job_id, job_id_for(unsent)]
    assert executor.running == {queued, unsent}
    report(redis_client, queued, TryState.LAUNCHED)
    report(redis_client, queued, TryState.SUCCESS, exit_code=0)
    executor.sync()
    assert events(executor) == {queued: ("success", "")}


def test_adopt_says_none_while_redis_is_unreachable_and_clear_says_nothing_was_decided(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first = make_executor(redis_server)
    first.execute_async(key("a"), COMMAND)
    first.sync()
    second = make_executor(redis_server)
    redis_server.stop()
    try:
        assert second.adopt([key("a"), key("never")]) is None
        assert second.clear_not_launched_queued_tasks([key("a"), key("never")]) == []
    finally:
        redis_server.start()
    wait_until(lambda: second.adopt([key("a"), key("never")]) == [key("never")], "an answer after the outage")
    assert second.running == {key("a")}
