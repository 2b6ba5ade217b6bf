"""Try records move forward only, and the result stream gets exactly one entry per move (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bridge.protocol import Keys, Outcome, TryRecord, TryState, job_id_for
from bridge.records import TryRecords
from bridge.task_key import TaskKey

KEY = TaskKey("dag", "task", "run", 1)
KEYS = Keys("test")


def records(client: redis.Redis, ttl: int = 600) -> TryRecords:
    return TryRecords(client, KEYS, ttl)


def advance(store: TryRecords, state: TryState, **fields: object) -> bool:
    record = TryRecord(KEY, state, **fields)  # type: ignore[arg-type]
    return store.advance(record, Outcome(KEY, state) if state not in {TryState.QUEUED} else None)


def stream_states(client: redis.Redis) -> list[str]:
    entries: Any = client.xrange(KEYS.results)  # redis-py types stream replies loosely
    return [Outcome.from_fields(fields).state.value for _, fields in entries]


def test_a_try_moves_forward_and_each_streamed_state_is_appended_once(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    assert advance(store, TryState.QUEUED, queue="q")
    assert store.advance(TryRecord(KEY, TryState.LAUNCHED, pod="p", namespace="ns"))
    assert store.in_flight() == [job_id_for(KEY)]
    assert advance(store, TryState.RUNNING)
    assert not advance(store, TryState.RUNNING)  # replayed event: no second entry
    assert not store.advance(TryRecord(KEY, TryState.LAUNCHED))  # late dispatcher write: ignored
    assert advance(store, TryState.SUCCESS, exit_code=0)
    assert stream_states(redis_client) == ["running", "success"]
    assert store.in_flight() == []
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert (record.state, record.pod, record.queue, record.exit_code) == (TryState.SUCCESS, "p", "q", 0)


def test_the_first_terminal_state_wins(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    assert advance(store, TryState.FAILED, reason="OOMKilled")
    assert not advance(store, TryState.SUCCESS)
    assert not advance(store, TryState.REVOKED)
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert (record.state, record.reason) == (TryState.FAILED, "OOMKilled")
    assert stream_states(redis_client) == ["failed"]


def test_a_finished_try_keeps_the_details_of_its_first_terminal_report(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    assert advance(store, TryState.FAILED, reason="OOMKilled", exit_code=137)
    assert not advance(store, TryState.FAILED, reason="PodDeleted")  # the later deletion of the same pod
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert (record.reason, record.exit_code) == ("OOMKilled", 137)
    assert stream_states(redis_client) == ["failed"]


def test_a_same_state_write_refreshes_fields_without_streaming(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    assert store.advance(TryRecord(KEY, TryState.PENDING, reason="ContainerCreating"))
    assert not store.advance(TryRecord(KEY, TryState.PENDING, reason="ImagePullBackOff"))
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert record.reason == "ImagePullBackOff"
    assert redis_client.xlen(KEYS.results) == 0


def test_the_checkpoint_is_written_even_when_the_record_does_not_move(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    checkpoint = KEYS.watcher_checkpoint("ns")
    assert advance(store, TryState.SUCCESS)
    assert not store.advance(
        TryRecord(KEY, TryState.RUNNING), Outcome(KEY, TryState.RUNNING), checkpoint=(checkpoint, "77")
    )
    assert redis_client.get(checkpoint) == b"77"


def test_every_write_renews_the_ttl(redis_client: redis.Redis) -> None:
    store = records(redis_client, ttl=120)
    store.advance(TryRecord(KEY, TryState.QUEUED))
    assert 0 < redis_client.ttl(KEYS.try_record(job_id_for(KEY))) <= 120


def test_revoking_flags_the_record_and_reports_its_state(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    assert store.mark_revoked(job_id_for(KEY)) is None  # nothing recorded: nothing flagged
    assert not redis_client.exists(KEYS.try_record(job_id_for(KEY)))
    store.advance(TryRecord(KEY, TryState.LAUNCHED))
    assert store.mark_revoked(job_id_for(KEY)) is TryState.LAUNCHED
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert record.revoked
    store.advance(TryRecord(KEY, TryState.RUNNING))  # later writes keep the flag
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert record.revoked


def test_get_many_skips_missing_and_unreadable_records(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = records(redis_client)
    store.advance(TryRecord(KEY, TryState.QUEUED))
    redis_client.hset(KEYS.try_record("broken"), mapping={"state": "??"})
    redis_client.hset(KEYS.try_record("binary"), mapping={"key": b"\xff", "state": "queued"})
    found = store.get_many([job_id_for(KEY), "missing", "broken", "binary"])
    assert found["missing"] is None
    assert found["broken"] is None
    assert found["binary"] is None
    assert found[job_id_for(KEY)] is not None
    assert "Try record binary is unreadable" in caplog.text


def test_in_flight_ids_that_are_not_utf8_do_not_break_the_listing(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    store.advance(TryRecord(KEY, TryState.LAUNCHED))
    redis_client.sadd(KEYS.in_flight, b"\xff")
    assert store.in_flight() == sorted([job_id_for(KEY), "\ufffd"])


def test_an_outcome_must_match_the_record_state(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    with pytest.raises(ValueError, match="differs"):
        store.advance(TryRecord(KEY, TryState.RUNNING), Outcome(KEY, TryState.SUCCESS))


def test_a_new_state_replaces_the_reason_of_the_last_one(redis_client: redis.Redis) -> None:
    store = records(redis_client)
    store.advance(TryRecord(KEY, TryState.LAUNCHED, pod="p", namespace="ns"))
    store.advance(TryRecord(KEY, TryState.PENDING, phase="Pending", reason="ContainerCreating"))
    assert advance(store, TryState.RUNNING, phase="Running")
    record = store.get(job_id_for(KEY))
    assert record is not None
    assert (record.state, record.reason, record.pod, record.namespace) == (TryState.RUNNING, "", "p", "ns")
