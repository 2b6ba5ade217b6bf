"""Container logs of the simulated cluster, kept in memory per (namespace, pod, container).

Why a separate store: the kubelet produces log bytes while the API server serves them, possibly to a
``follow`` stream that must see new lines as they arrive and end when the container exits. Keeping that
hand-over in one small thread-safe object lets both sides stay simple. Each line remembers when it was
written, as the container runtime does, for ``timestamps=true`` and ``sinceSeconds``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

# How often a blocked ``follow`` re-checks its stop event (the store wakes it at once on new data).
_FOLLOW_POLL_S = 0.1

_Key = tuple[str, str, str]


@dataclass
class _ContainerLog:
    data: bytearray = field(default_factory=bytearray)
    line_starts: list[int] = field(default_factory=list)  # offset of every line's first byte
    line_times: list[float] = field(default_factory=list)  # wall-clock time that byte was written
    closed: bool = False

    def append(self, data: bytes, now: float) -> None:
        offset = len(self.data)
        at_line_start = not self.data or self.data.endswith(b"\n")
        self.data += data
        starts = [offset] if at_line_start and data else []
        position = data.find(b"\n")
        while position != -1 and position + 1 < len(data):
            starts.append(offset + position + 1)
            position = data.find(b"\n", position + 1)
        self.line_starts += starts
        self.line_times += [now] * len(starts)

    def first_line_index(self, tail_lines: int | None, since: float | None) -> int:
        """Index of the first line to show for ``tail_lines`` / lines written at or after ``since``."""
        first = 0
        if since is not None:
            first = bisect.bisect_left(self.line_times, since)
        if tail_lines is not None:
            first = max(first, len(self.line_starts) - max(tail_lines, 0))
        return first

    def render(self, start: int, end: int, *, timestamps: bool) -> bytes:
        """Bytes ``[start, end)``, each line prefixed with its RFC 3339 (nanosecond) time if asked."""
        if not timestamps:
            return bytes(self.data[start:end])
        pieces: list[bytes] = []
        index = bisect.bisect_right(self.line_starts, start) - 1
        position = start
        while position < end:
            if index + 1 < len(self.line_starts) and self.line_starts[index + 1] == position:
                index += 1
            if index >= 0 and self.line_starts[index] == position:
                pieces.append(_rfc3339_nano(self.line_times[index]) + b" ")
            next_start = self.line_starts[index + 1] if index + 1 < len(self.line_starts) else end
            stop = min(next_start, end)
            pieces.append(bytes(self.data[position:stop]))
            position = stop
        return b"".join(pieces)


class LogStore:
    """Thread-safe log bytes of every started container; ``follow`` streams end at ``close`` or ``drop``."""

    def __init__(self) -> None:
        self._logs: dict[_Key, _ContainerLog] = {}
        self._changed = threading.Condition()

    def start(self, namespace: str, pod: str, container: str) -> None:
        """The container started: its (empty) log becomes readable; a restart keeps the earlier output."""
        with self._changed:
            log = self._logs.setdefault((namespace, pod, container), _ContainerLog())
            log.closed = False
            self._changed.notify_all()

    def append(self, namespace: str, pod: str, container: str, data: bytes) -> None:
        """Add output of a started container (appending to an unknown container starts it)."""
        with self._changed:
            self._logs.setdefault((namespace, pod, container), _ContainerLog()).append(data, time.time())
            self._changed.notify_all()

    def close(self, namespace: str, pod: str, container: str) -> None:
        """The container exited: its log stays readable, follow streams end after the last byte."""
        with self._changed:
            log = self._logs.get((namespace, pod, container))
            if log is not None:
                log.closed = True
                self._changed.notify_all()

    def drop(self, namespace: str, pod: str) -> None:
        """The pod is gone: forget the logs of all its containers and end their follow streams."""
        with self._changed:
            for key in [key for key in self._logs if key[0] == namespace and key[1] == pod]:
                del self._logs[key]
            self._changed.notify_all()

    def is_started(self, namespace: str, pod: str, container: str) -> bool:
        """Whether the container has started (so its log can be read)."""
        with self._changed:
            return (namespace, pod, container) in self._logs

    def read(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        tail_lines: int | None = None,
        limit_bytes: int | None = None,
        since_seconds: float | None = None,
        timestamps: bool = False,
    ) -> bytes | None:
        """The log so far, filtered like the kubelet does; None if the container never started or is gone."""
        with self._changed:
            log = self._logs.get((namespace, pod, container))
            if log is None:
                return None
            data = _select(log, tail_lines, since_seconds, timestamps)
        return data if limit_bytes is None else data[:limit_bytes]

    def follow(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        tail_lines: int | None = None,
        since_seconds: float | None = None,
        timestamps: bool = False,
        stop: threading.Event | None = None,
    ) -> Iterator[bytes]:
        """Yield the log (filtered), then new output as it arrives, until the container exits or is dropped
        (at once if it is already gone).

        ``stop`` ends the stream early (the API server sets it when it shuts down).
        """
        key = (namespace, pod, container)
        with self._changed:
            log = self._logs.get(key)
            if log is None:  # never started, or dropped before the stream began: nothing to follow
                return
            sent = len(log.data)
            first = _select(log, tail_lines, since_seconds, timestamps)
        if first:
            yield first
        while stop is None or not stop.is_set():
            with self._changed:
                if (
                    self._logs.get(key) is not log
                ):  # dropped (or dropped and started again: a new incarnation)
                    return
                if len(log.data) == sent and not log.closed:
                    self._changed.wait(_FOLLOW_POLL_S)
                    continue
                chunk = log.render(sent, len(log.data), timestamps=timestamps)
                sent = len(log.data)
                finished = log.closed and not chunk
            if finished:
                return
            if chunk:
                yield chunk


def _select(
    log: _ContainerLog, tail_lines: int | None, since_seconds: float | None, timestamps: bool
) -> bytes:
    since = time.time() - since_seconds if since_seconds is not None else None
    first = log.first_line_index(tail_lines, since)
    start = log.line_starts[first] if first < len(log.line_starts) else len(log.data)
    return log.render(start, len(log.data), timestamps=timestamps)


def _rfc3339_nano(moment: float) -> bytes:
    seconds = int(moment)
    nanoseconds = round((moment - seconds) * 1e9)
    if nanoseconds >= 1_000_000_000:
        seconds, nanoseconds = seconds + 1, nanoseconds - 1_000_000_000
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanoseconds:09d}Z").encode()
