"""A leader lease in Redis, so exactly one watcher acts for a namespace while others stand by.

Two watchers acting at once would not corrupt anything (try records only move forward), but they would
double the API load and race each other's checkpoint and pod deletions; and with none acting, outcomes
stop. So watchers compete for one key (``SET NX PX``); the holder renews it well before it expires and a
standby takes over within one lease after the holder dies. Renewal and release are compare-and-set Lua
scripts, so a holder that lost the key (it expired during a pause) can never extend or delete a
successor's lease.

The holder also keeps a local deadline, measured from the *start* of its last successful renewal and cut
short by a safety margin: it stops acting before Redis could have let the key expire, even if it cannot
reach Redis to find out. That is what keeps a partitioned leader from acting next to its successor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from bridge.protocol import decode_text

log = logging.getLogger(__name__)

# KEYS: lease; ARGV: holder, ttl ms. Take a free lease, or extend our own; 1 if we hold it afterwards.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease; ARGV: holder, ttl ms. Extend the lease only while we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease; ARGV: holder. Delete the lease only if it is ours, so a successor's lease survives.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Part of the lease kept in reserve for clock drift between us and Redis.
SAFETY_FRACTION = 0.2


class Lease:
    """One holder's view of the lease ``key``: acquire, renew in a background thread, release.

    ``held()`` is what a leader checks before every action; ``lost`` is set when a held lease is lost.
    Errors talking to Redis are not raised by the renewal thread: the lease simply runs out locally.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        holder: str,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"lease ttl_seconds must be positive, got {ttl_seconds}")
        self.key = key
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self.lost = threading.Event()
        self._redis = redis
        self._clock = clock
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._valid_until = 0.0
        self._state_lock = threading.Lock()
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def renew_interval(self) -> float:
        """Renew three times per lease, so two renewals may fail before the lease is at risk."""
        return self.ttl_seconds / 3

    def acquire(self) -> bool:
        """Take the lease if it is free (or already ours). Raises RedisError if Redis cannot be reached."""
        started = self._clock()
        if self._acquire(keys=[self.key], args=[self.holder, self._ttl_ms]) != 1:
            return False
        self._extend(started)
        self.lost.clear()
        return True

    def renew(self) -> bool:
        """Extend the lease if we still hold it; False (and ``lost`` set) if someone else holds it now.

        Raises RedisError when Redis cannot be reached; the lease then stays valid until its local deadline.
        """
        started = self._clock()
        if self._renew(keys=[self.key], args=[self.holder, self._ttl_ms]) == 1:
            self._extend(started)
            return True
        self._drop("the lease key expired or another holder took it")
        return False

    def release(self) -> None:
        """Stop renewing and give the lease up, so a standby takes over at once (best effort)."""
        self.stop_renewing()
        with self._state_lock:
            self._valid_until = 0.0
        try:  # even past our local deadline the key may still be ours; the script checks
            self._release(keys=[self.key], args=[self.holder])
        except RedisError as exc:  # it expires by itself within one lease
            log.warning(
                "could not release lease %s (%s); it expires within %s s", self.key, exc, self.ttl_seconds
            )

    def held(self) -> bool:
        """True while this holder may act: acquired, not lost, and within the local deadline."""
        with self._state_lock:
            if not self._valid_until:
                return False
            if self._valid_until > self._clock():
                return True
        self._drop("no successful renewal within the lease")
        return False

    def current_holder(self) -> str | None:
        """Who holds the lease according to Redis (None when free)."""
        value = self._redis.get(self.key)
        if value is None:
            return None
        return decode_text(value)

    def start_renewing(self) -> None:
        """Renew from a daemon thread every :attr:`renew_interval` until released or lost."""
        self.stop_renewing()
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_loop, args=(self._stop_renewing,), name=f"lease-{self.holder}", daemon=True
        )
        self._renewer.start()

    def stop_renewing(self) -> None:
        self._stop_renewing.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join()

    def _renew_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.renew_interval):
            try:
                if not self.renew():
                    return
            except RedisError as exc:
                log.warning("could not renew lease %s: %s", self.key, exc)
            if not self.held():
                return

    def _extend(self, started: float) -> None:
        with self._state_lock:
            self._valid_until = started + self.ttl_seconds * (1 - SAFETY_FRACTION)

    def _drop(self, why: str) -> None:
        with self._state_lock:
            if not self._valid_until:
                return
            self._valid_until = 0.0
        log.warning("%s lost the lease %s: %s", self.holder, self.key, why)
        self.lost.set()
