"""Reading the result stream with a consumer group: batched, acknowledged after use, restart-proof.

Why a consumer group and not a plain XREAD cursor: the executor may die between reading an outcome and
acting on it. With a group, every entry read stays *pending* for this consumer until it is acknowledged, so
a restarted executor with the same consumer name first re-reads its own pending entries, then new ones.
Acknowledged entries are what may be trimmed, and only once *every* group has acknowledged them (another
reader, e.g. a dashboard, may have its own group).

Redis may lose the group (restart without persistence, or the stream deleted by hand): a read then fails
with NOGROUP, and the reader re-creates the group from the start of whatever stream is left and reads
again; duplicates that this can deliver are harmless because the executor applies each outcome once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from bridge.connection import MAX_BLOCK_SECONDS
from bridge.protocol import Keys, MessageError, Outcome

log = logging.getLogger(__name__)

Entry = tuple[str, Outcome | None]  # (stream entry id, outcome, or None when the entry was unreadable)


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
        """
        try:
            return self._read(block_ms)
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            log.warning("Consumer group %s of %s is gone (%s); re-creating it", self.group, self.stream, exc)
            self._pending_after = None  # the group's pending list went with it
            self.ensure_group()
            return self._read(block_ms)

    def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge entries (one XACK); the number Redis had pending."""
        if not ids:
            return 0
        return int(self._redis.xack(self.stream, self.group, *ids))

    def trim_acknowledged(self) -> int:
        """Drop entries every group has acknowledged (XTRIM MINID); the number of entries removed.

        Per group the first entry still needed is its oldest pending one, else the one after its last
        delivered. Nothing is trimmed while there is no group, or a group has not read anything yet.
        """
        try:
            groups: list[dict[str, Any]] = self._redis.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            return 0
        if not groups:
            return 0
        needed: list[tuple[int, int]] = []
        for group in groups:
            last = _text(group["last-delivered-id"])
            if last == "0-0":
                return 0
            if int(group["pending"]):
                summary: dict[str, Any] = self._redis.xpending(self.stream, _text(group["name"]))
                needed.append(_id_tuple(_text(summary["min"])))
            else:
                ms, seq = _id_tuple(last)
                needed.append((ms, seq + 1))
        ms, seq = min(needed)
        # Exact, not "~": approximate trimming only drops whole internal nodes (often nothing at all).
        return int(self._redis.xtrim(self.stream, minid=f"{ms}-{seq}", approximate=False))

    def pending_count(self) -> int:
        """Entries delivered to this group and not yet acknowledged."""
        summary: dict[str, Any] = self._redis.xpending(self.stream, self.group)
        return int(summary["pending"])

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
            entry_id = _text(raw_id)
            entries.append((entry_id, self._decode(entry_id, fields)))
        return entries

    def _decode(self, entry_id: str, fields: dict[Any, Any] | None) -> Outcome | None:
        try:
            return Outcome.from_fields(fields or {})
        except MessageError as exc:
            log.warning("Skipping malformed entry %s of %s: %s", entry_id, self.stream, exc)
            return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
