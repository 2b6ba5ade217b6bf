"""The result stream reader on a real Redis: batches, pending re-reads, lost groups, trimming, blocking."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis

import bridge.results
from bridge.protocol import Keys, Outcome, TryState
from bridge.redis_server import RedisServer
from bridge.results import ResultReader
from bridge.task_key import TaskKey
from tests.test_queue import CountingConnection, counting_client

pytestmark = pytest.mark.timeout(60)

KEYS = Keys("kbridge")
GROUP = "executor"


def reader(client: redis.Redis, consumer: str = "scheduler-1", batch_size: int = 3) -> ResultReader:
    result_reader = ResultReader(client, KEYS, GROUP, consumer, batch_size)
    result_reader.ensure_group()
    return result_reader


def outcome(index: int) -> Outcome:
    key = TaskKey("etl", f"task-{index}", "run")
    return Outcome(key, TryState.SUCCESS, exit_code=0, at="2026-11-24T00:00:00.000+00:00", source="watcher")


def append(client: redis.Redis, *indexes: int) -> list[str]:
    """Stream entries as the watcher's script writes them (the same fields, via XADD)."""
    fields: list[dict[Any, Any]] = [outcome(index).to_fields() for index in indexes]
    return [text(client.xadd(KEYS.results, entry)) for entry in fields]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_ids(client: redis.Redis) -> list[str]:
    entries: Any = client.xrange(KEYS.results)
    return [text(entry_id) for entry_id, _ in entries]


def pending(client: redis.Redis, group: str = GROUP) -> int:
    summary: Any = client.xpending(KEYS.results, group)
    return int(summary["pending"])


def task_ids(entries: list[tuple[str, Outcome | None]]) -> list[str]:
    return [found.key.task_id if found is not None else "?" for _, found in entries]


def test_outcomes_are_read_in_batches(redis_client: redis.Redis) -> None:
    results = reader(redis_client)
    ids = append(redis_client, *range(7))
    batches = [results.read() for _ in range(4)]
    assert [len(batch) for batch in batches] == [3, 3, 1, 0]
    assert [entry_id for batch in batches for entry_id, _ in batch] == ids
    assert batches[0][0][1] == Outcome.from_fields(outcome(0).to_fields())
    assert pending(redis_client) == 7
    assert results.ack([entry_id for batch in batches for entry_id, _ in batch]) == 7
    assert pending(redis_client) == 0


def test_a_restarted_consumer_first_reads_its_own_pending_entries(redis_client: redis.Redis) -> None:
    ids = append(redis_client, 0, 1, 2, 3)
    crashed = reader(redis_client, batch_size=2)
    assert [entry_id for entry_id, _ in crashed.read()] == ids[:2]  # read, never acknowledged
    other = reader(redis_client, consumer="scheduler-2", batch_size=2)
    assert [entry_id for entry_id, _ in other.read()] == ids[2:]
    append(redis_client, 4)
    restarted = reader(redis_client, batch_size=1)  # same consumer name as the crashed one
    assert task_ids(restarted.read()) == ["task-0"]
    restarted.ack([ids[0]])
    assert task_ids(restarted.read()) == ["task-1"]  # its pending list, even after an ack in between
    assert task_ids(restarted.read()) == ["task-4"]  # then new entries, not the other consumer's
    assert restarted.read() == []


def test_a_lost_group_is_created_again(redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    results = reader(redis_client)
    append(redis_client, 0)
    results.ack([entry_id for entry_id, _ in results.read()])
    redis_client.delete(KEYS.results)  # stream and group gone, as after a restart without persistence
    assert results.read() == []
    assert "re-creating" in caplog.text
    append(redis_client, 1)
    assert task_ids(results.read()) == ["task-1"]


def test_group_and_pending_entries_survive_a_hard_redis_restart(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    results = reader(redis_client)
    ids = append(redis_client, 0, 1)
    assert [entry_id for entry_id, _ in results.read()] == ids
    redis_server.restart(hard=True)  # SIGKILL; the AOF brings everything back
    client = redis_server.client()
    restarted = reader(client)
    assert [entry_id for entry_id, _ in restarted.read()] == ids
    assert restarted.ack(ids) == 2
    assert restarted.read() == []
    client.close()


def test_only_entries_every_group_acknowledged_are_trimmed(redis_client: redis.Redis) -> None:
    assert reader(redis_client).trim_acknowledged() == 0  # empty stream
    ids = append(redis_client, *range(6))
    ours = reader(redis_client, batch_size=10)
    ours.ack([entry_id for entry_id, _ in ours.read()])
    redis_client.xgroup_create(KEYS.results, "dashboard", id="0")
    assert ours.trim_acknowledged() == 0  # the dashboard has read nothing yet
    dashboard = ResultReader(redis_client, KEYS, "dashboard", "d", 4)
    dashboard.ack([entry_id for entry_id, _ in dashboard.read()][:2])  # read 4, acknowledged 2
    assert ours.trim_acknowledged() == 2  # up to the dashboard's oldest pending entry
    assert stream_ids(redis_client) == ids[2:]
    dashboard.ack(ids[2:4])
    assert ours.trim_acknowledged() == 2  # its last delivered entry and all before it are done
    assert stream_ids(redis_client) == ids[4:]
    assert ours.trim_acknowledged() == 0


def test_no_trimming_without_any_group(redis_client: redis.Redis) -> None:
    append(redis_client, 0, 1)
    assert ResultReader(redis_client, KEYS, GROUP, "c", 10).trim_acknowledged() == 0
    assert redis_client.xlen(KEYS.results) == 2


def test_blocking_reads_stay_below_a_short_socket_timeout(redis_server: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=0.3)
    client.flushall()
    results = reader(client)
    assert results.max_block_ms == 150
    started = time.monotonic()
    assert results.read(block_ms=5000) == []  # asked for 5 s: waits 150 ms; 0.3 s would raise a timeout
    assert time.monotonic() - started > 0.1
    append(client, 0)
    assert task_ids(results.read(block_ms=5000)) == ["task-0"]
    client.close()


def test_malformed_entries_come_back_as_none_and_can_be_acknowledged(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    results = reader(redis_client, batch_size=10)
    bad: dict[Any, Any] = {"key": "not json", "state": "success"}
    redis_client.xadd(KEYS.results, bad)
    append(redis_client, 0)
    redis_client.xadd(KEYS.results, {"key": '{"dag_id": "d"}', "state": "success"})
    with caplog.at_level(logging.WARNING, logger="bridge.results"):
        entries = results.read()
    assert task_ids(entries) == ["?", "task-0", "?"]
    assert "field 'key' is not JSON" in caplog.text
    assert "field 'task_id'" in caplog.text
    assert results.ack([entry_id for entry_id, _ in entries]) == 3
    # an entry deleted while pending comes back without fields: also None, never a crash
    append(redis_client, 1)
    deleted = results.read()
    redis_client.xdel(KEYS.results, deleted[0][0])
    assert [(entry_id, found) for entry_id, found in reader(redis_client).read()] == [(deleted[0][0], None)]


def test_entries_whose_read_reply_was_lost_are_read_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = reader(redis_client)
    assert results.read() == []  # past its own (empty) pending list: it reads new entries now
    ids = append(redis_client, 0, 1)
    real_read = redis_client.xreadgroup

    def reply_lost(*args: Any, **kwargs: Any) -> Any:
        real_read(*args, **kwargs)  # Redis delivers the entries (they are pending now) ...
        raise redis.ConnectionError("Connection reset by peer")  # ... and the reply never arrives

    monkeypatch.setattr(redis_client, "xreadgroup", reply_lost)
    with pytest.raises(redis.ConnectionError):
        results.read()
    monkeypatch.setattr(redis_client, "xreadgroup", real_read)
    assert pending(redis_client) == 2
    assert [entry_id for entry_id, _ in results.read()] == ids
    assert results.ack(ids) == 2
    assert results.read() == []


def test_an_entry_that_is_not_utf8_is_malformed_and_its_neighbours_are_read(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    results = reader(redis_client, batch_size=10)
    append(redis_client, 0)
    redis_client.xadd(KEYS.results, {"key": b"\xff\xfe", "state": "success"})
    append(redis_client, 1)
    with caplog.at_level(logging.WARNING, logger="bridge.results"):
        entries = results.read()
    assert task_ids(entries) == ["task-0", "?", "task-1"]
    assert "not UTF-8" in caplog.text
    assert results.ack([entry_id for entry_id, _ in entries]) == 3


def test_entries_left_pending_by_a_gone_consumer_are_claimed(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = append(redis_client, 0, 1, 2)
    gone = reader(redis_client, consumer="scheduler-old-pod")
    assert len(gone.read()) == 3  # read, never acknowledged: that pod is gone
    successor = reader(redis_client, consumer="scheduler-new-pod")
    assert successor.reclaim() == 0  # only entries idle for CLAIM_IDLE_SECONDS are taken
    assert successor.read() == []
    monkeypatch.setattr(bridge.results, "CLAIM_IDLE_SECONDS", 0)
    monkeypatch.setattr(bridge.results, "STALE_CONSUMER_SECONDS", 0)
    assert successor.reclaim() == 3
    assert [entry_id for entry_id, _ in successor.read()] == ids
    successor.ack(ids)
    consumers: Any = redis_client.xinfo_consumers(KEYS.results, GROUP)
    assert [text(consumer["name"]) for consumer in consumers] == ["scheduler-new-pod"]  # the old one left
    assert successor.trim_acknowledged() == 3  # nothing pins the stream any more


def test_reclaiming_without_a_group_or_stream_does_nothing(redis_client: redis.Redis) -> None:
    assert ResultReader(redis_client, KEYS, GROUP, "c", 10).reclaim() == 0
    assert not redis_client.exists(KEYS.results)


def test_trimming_checks_and_trims_in_one_script(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    client = counting_client(redis_server)
    results = reader(client, batch_size=10)
    results.trim_acknowledged()  # loads the script
    ids = append(redis_client, 0, 1, 2)
    results.ack([entry_id for entry_id, _ in results.read()])
    CountingConnection.sends = 0
    assert results.trim_acknowledged() == 3
    assert CountingConnection.sends == 1  # no other reader can act between the check and the trim
    assert stream_ids(redis_client) == []
    assert ids
    client.close()
