"""Try records: the bridge's memory of each task try, moved forward atomically with the result stream.

Dispatchers and the watcher both report on tries, a deposed watcher may still be finishing a batch, and a
re-list replays pods already seen. So every report goes through one Lua script that (1) moves the record
only forward in :data:`~bridge.protocol.STATE_RANK` order, the first terminal report winning with its
details, (2) appends the outcome to the result stream only when the record actually moved to a streamed
state, (3) keeps the in-flight set in step and (4) optionally stores the watcher's resourceVersion
checkpoint, all in one step. A crash between those writes is therefore impossible, and replays cost
nothing but a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis

from bridge.protocol import (
    STATE_RANK,
    STREAMED_STATES,
    Keys,
    MessageError,
    Outcome,
    TryRecord,
    TryState,
    decode_text,
    field_pairs,
)

log = logging.getLogger(__name__)

# KEYS: record, in-flight set, result stream[, checkpoint]
# ARGV: state, rank, ttl, stream it (0/1), checkpoint value, ranks JSON, n, n field pairs, outcome fields
_ADVANCE = """
local ranks = cjson.decode(ARGV[6])
local current = redis.call('HGET', KEYS[1], 'state')
local new_state, new_rank = ARGV[1], tonumber(ARGV[2])
local moved = 0
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[5]) end
local current_rank = -1
if current then current_rank = ranks[current] or -1 end
local n = tonumber(ARGV[7])
local record = {}
for i = 8, 7 + 2 * n do record[#record + 1] = ARGV[i] end
if current_rank > new_rank then return 0 end
if current_rank == new_rank and current ~= new_state then return 0 end
if current == new_state and new_rank >= 4 then return 0 end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if current == new_state then return 0 end
local job_id = string.match(KEYS[1], ':try:(.+)$')
if new_rank >= 4 then
  redis.call('SREM', KEYS[2], job_id)
elseif new_rank >= 1 then
  redis.call('SADD', KEYS[2], job_id)
end
if ARGV[4] == '1' then
  local outcome = {}
  for i = 8 + 2 * n, #ARGV do outcome[#outcome + 1] = ARGV[i] end
  redis.call('XADD', KEYS[3], '*', unpack(outcome))
end
return 1
"""

_RANKS_JSON = "{" + ",".join(f'"{state.value}":{rank}' for state, rank in STATE_RANK.items()) + "}"

# KEYS: record. Marks a try revoked; returns its state (or false when there is no record).
_MARK_REVOKED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then redis.call('HSET', KEYS[1], 'revoked', '1') end
return state
"""


class TryRecords:
    """Reads and forward-only writes of ``<prefix>:try:<job id>`` (:class:`~bridge.protocol.TryRecord`)."""

    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_seconds = ttl_seconds
        self._advance = redis.register_script(_ADVANCE)
        self._mark_revoked = redis.register_script(_MARK_REVOKED)

    def advance(
        self,
        record: TryRecord,
        outcome: Outcome | None = None,
        *,
        checkpoint: tuple[str, str] | None = None,
    ) -> bool:
        """Move ``record`` forward; stream ``outcome`` if it moved. True if the state changed.

        A record at the same unfinished state is refreshed (e.g. a new waiting reason) without streaming
        again; an older state, or any terminal state once one is recorded, changes nothing (a finished
        try keeps the details of its first terminal report).
        """
        if outcome is not None and outcome.state != record.state:
            raise ValueError(f"outcome state {outcome.state} differs from record state {record.state}")
        streamed = outcome is not None and record.state in STREAMED_STATES
        keys = [self._keys.try_record(record.job_id), self._keys.in_flight, self._keys.results]
        if checkpoint is not None:
            keys.append(checkpoint[0])
        fields = record.to_fields()
        args: list[Any] = [
            record.state.value,
            STATE_RANK[record.state],
            self._ttl_seconds,
            "1" if streamed else "0",
            checkpoint[1] if checkpoint is not None else "",
            _RANKS_JSON,
            len(fields),
            *field_pairs(fields),
        ]
        if streamed and outcome is not None:
            args.extend(field_pairs(outcome.to_fields()))
        return bool(self._advance(keys=keys, args=args) == 1)

    def mark_revoked(self, job_id: str) -> TryState | None:
        """Flag the try revoked (dispatchers then skip or delete its pod); its state before, if recorded.

        The executor's revoke script (:mod:`bridge.queue`) sets the same flag itself; this is the flag
        alone, for tests of the workers and for an operator's script.
        """
        state = self._mark_revoked(keys=[self._keys.try_record(job_id)])
        return TryState(decode_text(state, replace=True)) if state else None

    def get(self, job_id: str) -> TryRecord | None:
        return self.get_many([job_id])[job_id]

    def get_many(self, job_ids: Sequence[str]) -> dict[str, TryRecord | None]:
        """Records by job id, in one round trip; a missing or unreadable record is None."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._keys.try_record(job_id))
        found: dict[str, TryRecord | None] = {}
        for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
            try:
                found[job_id] = TryRecord.from_hash(raw) if raw else None
            except MessageError as exc:
                log.warning("Try record %s is unreadable, treated as missing: %s", job_id, exc)
                found[job_id] = None
        return found

    def in_flight(self) -> list[str]:
        # A member that is not UTF-8 was not written by the bridge; as U+FFFD text it matches no record.
        members = self._redis.smembers(self._keys.in_flight)
        return sorted(decode_text(member, replace=True) for member in members)
