"""Reading the result stream with a consumer group: batched, acknowledged after use, restart-proof.

Why a consumer group and not a plain XREAD cursor: the executor may die between reading an outcome and
acting on it. With a group, every entry read stays *pending* for this consumer until it is acknowledged, so
a restarted executor with the same consumer name first re-reads its own pending entries, then new ones.
A reply lost on the wire leaves entries pending in the same way (Redis delivered them, we never saw them),
so after any Redis error the next read starts with the pending list again. A restarted executor with a
*new* consumer name (a scheduler pod with a new host name) cannot find the old name's entries, so entries
left pending longer than :data:`CLAIM_IDLE_SECONDS` by any consumer are claimed by the reader that runs
:meth:`ResultReader.reclaim`, and then read like its own.

Acknowledged entries are what may be trimmed, and only once *every* group has acknowledged them (another
reader, e.g. a dashboard, may have its own group); the check and the trim run as one script, so a group
reading in between cannot lose entries.

Redis may lose the group (restart without persistence, or the stream deleted by hand): a read then fails
with NOGROUP, and the reader re-creates the group from the start of whatever stream is left and reads
again; duplicates that this can deliver are harmless because the executor applies each outcome once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from bridge.connection import MAX_BLOCK_SECONDS
from bridge.protocol import Keys, MessageError, Outcome, decode_text

log = logging.getLogger(__name__)

Entry = tuple[str, Outcome | None]  # (stream entry id, outcome, or None when the entry was unreadable)

# An entry pending this long was read by a consumer that is gone (or stuck): another consumer of the
# group claims it. Far above the time an executor takes from reading an entry to acknowledging it.
CLAIM_IDLE_SECONDS = 60
# A consumer with nothing pending and silent this long is forgotten (it only clutters XINFO CONSUMERS).
STALE_CONSUMER_SECONDS = 24 * 3600
# Entries claimed per reclaim() call, so one call never blocks Redis for long; the next call goes on.
CLAIM_LIMIT = 10_000
_CLAIM_COUNT = 1000  # per XAUTOCLAIM

# KEYS: stream. ARGV: group, this consumer, claim idle ms, stale consumer idle ms, claim limit, count.
# Claims (ids only: the delivery count is not increased) entries pending longer than the idle time into
# this consumer, then deletes other consumers with nothing pending and long silent. Returns the number
# claimed. One script, so no consumer can read between checking its pending count and deleting it.
_RECLAIM = """
local claimed, cursor = 0, '0-0'
local limit, count = tonumber(ARGV[5]), tonumber(ARGV[6])
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', count, 'JUSTID')
  cursor = reply[1]
  claimed = claimed + #reply[2]
until cursor == '0-0' or claimed >= limit
local stale = tonumber(ARGV[4])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= stale then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
  end
end
return claimed
"""

# KEYS: stream. Per group the first entry still needed is its oldest pending one, else the one after its
# last delivered; entries before the earliest of those are removed (exact XTRIM MINID: approximate trimming
# only drops whole internal nodes, often nothing). Nothing is trimmed without groups, or while a group has
# not read anything. Returns the number of entries removed.
_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local min_ms, min_seq, min_ms_text
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local id, step = info['last-delivered-id'], 1
  if id == '0-0' then return 0 end
  if info['pending'] > 0 then
    id, step = redis.call('XPENDING', KEYS[1], info['name'])[2], 0
  end
  local ms_text, seq_text = string.match(id, '^(%d+)-(%d+)$')
  local ms, seq = tonumber(ms_text), tonumber(seq_text) + step
  if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq, min_ms_text = ms, seq, ms_text
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', min_ms_text .. '-' .. string.format('%.0f', min_seq))
"""


class ResultReader:
    """One consumer of the result stream ``keys.results`` in consumer group ``group``."""

    def __init__(self, redis: Redis, keys: Keys, group: str, consumer: str, batch_size: int) -> None:
        self._redis = redis
        self.stream = keys.results
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        # Id after which to re-read this consumer's pending entries; None once they are all read.
        self._pending_after: str | None = "0"
        self._reclaim = redis.register_script(_RECLAIM)
        self._trim = redis.register_script(_TRIM)
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        # A blocking read must return before the socket times out, or the client reports an error.
        longest = MAX_BLOCK_SECONDS if timeout is None else min(MAX_BLOCK_SECONDS, float(timeout) / 2)
        self.max_block_ms = max(1, int(longest * 1000))

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; reading from the start, so nothing is skipped."""
        try:
            self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("Created consumer group %s on %s", self.group, self.stream)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def read(self, block_ms: int | None = None) -> list[Entry]:
        """The next batch: this consumer's pending entries first (never blocking), then new ones.

        ``block_ms`` waits for new entries at most that long, capped below the socket timeout; None or
        0 does not wait. Malformed entries come back as ``(id, None)``: acknowledge them like the rest.
        Redis errors are raised, and the next read starts over with the pending entries.
        """
        try:
            try:
                return self._read(block_ms)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning(
                    "Consumer group %s of %s is gone (%s); re-creating it", self.group, self.stream, exc
                )
                self._pending_after = None  # the group's pending list went with it
                self.ensure_group()
                return self._read(block_ms)
        except RedisError:
            # Redis may have run the read and the reply been lost: the entries it delivered are pending
            # for us now, and reading ">" would never return them.
            self.reread_pending()
            raise

    def reread_pending(self) -> None:
        """Make the next read start again with this consumer's pending entries."""
        self._pending_after = "0"

    def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge entries (one XACK); the number Redis had pending."""
        if not ids:
            return 0
        return int(self._redis.xack(self.stream, self.group, *ids))

    def reclaim(self) -> int:
        """Take over entries left pending by other consumers for :data:`CLAIM_IDLE_SECONDS`; the count.

        They are read by the next :meth:`read`, with this consumer's own pending entries. Consumers with
        nothing pending, silent for :data:`STALE_CONSUMER_SECONDS`, are deleted from the group.
        """
        try:
            claimed = int(
                self._reclaim(
                    keys=[self.stream],
                    args=[
                        self.group,
                        self.consumer,
                        CLAIM_IDLE_SECONDS * 1000,
                        STALE_CONSUMER_SECONDS * 1000,
                        CLAIM_LIMIT,
                        _CLAIM_COUNT,
                    ],
                )
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return 0  # no group (yet): the next read creates it, and nobody has anything pending
        if claimed:
            log.warning(
                "Claimed %d outcome(s) another consumer of group %s left unacknowledged for %d s",
                claimed,
                self.group,
                CLAIM_IDLE_SECONDS,
            )
            self.reread_pending()
        return claimed

    def trim_acknowledged(self) -> int:
        """Drop entries every group has acknowledged (XTRIM MINID, in one script); the number removed.

        Per group the first entry still needed is its oldest pending one, else the one after its last
        delivered. Nothing is trimmed while there is no group, or a group has not read anything yet.
        """
        return int(self._trim(keys=[self.stream]))

    def _read(self, block_ms: int | None) -> list[Entry]:
        if self._pending_after is not None:
            reply = self._xreadgroup(self._pending_after, None)
            if reply:
                self._pending_after = reply[-1][0]
                return reply
            self._pending_after = None
        block = min(block_ms, self.max_block_ms) if block_ms else None
        return self._xreadgroup(">", block)

    def _xreadgroup(self, after: str, block_ms: int | None) -> list[Entry]:
        reply: Any = self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=self.batch_size, block=block_ms
        )
        if not reply:
            return []
        entries: list[Entry] = []
        for raw_id, fields in reply[0][1]:
            entry_id = decode_text(raw_id)  # ids are ASCII, made by Redis
            entries.append((entry_id, self._decode(entry_id, fields)))
        return entries

    def _decode(self, entry_id: str, fields: dict[Any, Any] | None) -> Outcome | None:
        try:
            return Outcome.from_fields(fields or {})
        except MessageError as exc:
            log.warning("Skipping malformed entry %s of %s: %s", entry_id, self.stream, exc)
            return None
