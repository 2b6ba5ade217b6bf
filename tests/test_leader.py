"""The watcher lease against a real Redis: one holder at a time, renewal, release, expiry, loss."""

from __future__ import annotations

import time

import pytest
import redis

from bridge.redis_server import RedisServer
from tests.waiting import wait_until
from workers.leader import SAFETY_FRACTION, Lease

KEY = "test:watcher:default:leader"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_one_holder_at_a_time(redis_client: redis.Redis) -> None:
    first, second = Lease(redis_client, KEY, "a", 5), Lease(redis_client, KEY, "b", 5)
    assert first.acquire()
    assert not second.acquire()
    assert first.held()
    assert not second.held()
    assert second.current_holder() == "a"
    assert first.acquire(), "acquiring a lease we already hold extends it"
    assert 4000 < redis_client.pttl(KEY) <= 5000


def test_release_hands_over_at_once_and_never_deletes_a_successors_lease(redis_client: redis.Redis) -> None:
    first, second = Lease(redis_client, KEY, "a", 5), Lease(redis_client, KEY, "b", 5)
    assert first.acquire()
    first.release()
    assert not first.held()
    assert second.acquire()
    first.release()  # a stale holder releasing must leave the new holder's key alone
    assert second.current_holder() == "b"


def test_renewal_keeps_the_lease_past_its_ttl(redis_client: redis.Redis) -> None:
    # a 2 s lease renewed every 0.67 s: a loaded machine's scheduling delays cannot make it lapse
    holder, rival = Lease(redis_client, KEY, "a", 2.0), Lease(redis_client, KEY, "b", 2.0)
    assert holder.acquire()
    holder.start_renewing()
    try:
        deadline = time.monotonic() + 2 * holder.ttl_seconds  # what is tested is holding past the TTL
        while time.monotonic() < deadline:
            assert not rival.acquire()
            assert holder.held()
            time.sleep(0.05)
    finally:
        holder.release()
    assert rival.acquire()


def test_an_unrenewed_lease_expires_and_a_rival_takes_it(redis_client: redis.Redis) -> None:
    holder, rival = Lease(redis_client, KEY, "a", 0.5), Lease(redis_client, KEY, "b", 0.5)
    assert holder.acquire()
    took = wait_until(rival.acquire, "the rival to take the expired lease", timeout=3)
    assert took >= 0.3
    assert not holder.held()
    assert not holder.renew(), "renewing a lease someone else holds fails"
    assert rival.current_holder() == "b"


def test_a_holder_whose_key_was_taken_learns_it_lost_at_the_next_renewal(redis_client: redis.Redis) -> None:
    holder = Lease(redis_client, KEY, "a", 5)
    assert holder.acquire()
    redis_client.set(KEY, "b", px=5000)  # e.g. our key expired during a long pause and b took over
    assert not holder.renew()
    assert holder.lost.is_set()
    assert not holder.held()
    assert redis_client.get(KEY) == b"b"


def test_the_local_deadline_ends_leadership_before_the_key_can_expire(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    holder = Lease(redis_client, KEY, "a", 10, clock=clock)
    assert holder.acquire()
    clock.now += 10 * (1 - SAFETY_FRACTION) - 0.01
    assert holder.held()
    clock.now += 0.02
    assert not holder.held(), "past the local deadline the holder must stop acting"
    assert holder.lost.is_set()
    assert holder.acquire(), "the key is still ours in Redis, so acquiring again works"
    assert holder.held()
    assert not holder.lost.is_set()


@pytest.mark.timeout(30)
def test_a_leader_cut_off_from_redis_stops_acting_within_the_lease(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    holder = Lease(redis_server.client(), KEY, "a", 1.0)
    assert holder.acquire()
    holder.start_renewing()
    try:
        redis_server.stop()
        try:
            took = wait_until(lambda: not holder.held(), "the leader to give up without Redis", timeout=3)
        finally:
            redis_server.start()
        assert took <= 1.0 * (1 - SAFETY_FRACTION) + 0.2
        assert holder.lost.is_set()
        assert holder.acquire(), "once Redis is back the lease can be taken again"
    finally:
        holder.release()
