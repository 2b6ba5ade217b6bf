"""``kbridge status``: what the bridge is doing, read from Redis alone.

Why Redis alone: the scheduler, the dispatchers and the watcher only meet in Redis, so everything an operator
needs to judge the pipeline (is work piling up, are dispatchers alive, is the scheduler reading outcomes,
who watches the pods) is already there, and the command works from any host that can reach Redis, without
cluster credentials. It only reads: rq's registry helpers clean registries as a side effect, so the rq keys
are read with plain commands instead, and heartbeats are compared with Redis' own clock, as the dispatchers
write them, so a skewed local clock cannot make a live dispatcher look dead.

``--task`` shows one try (job id, record, rq job); ``--probe dispatcher`` is the readiness check of a
dispatcher container (exit 0 while a dispatcher of this host beats).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from bridge.config import KubeConfig, load_config, redact_url
from bridge.connection import redis_from_config
from bridge.errors import UserInputError
from bridge.protocol import Keys, decode_text, job_id_for
from bridge.records import TryRecords
from bridge.task_key import TaskKey

EXIT_UNREACHABLE = 1
EXIT_NOT_READY = 1
# Records are read in batches so a large in-flight set costs a few round trips, not one per try.
RECORD_BATCH = 1000
# rq job fields worth showing for one try; all plain text in the job hash.
RQ_JOB_FIELDS = ("status", "origin", "description", "enqueued_at", "started_at", "ended_at", "worker_name")
# A dispatcher's default rq worker name (workers/dispatcher.py): kbridge-dispatcher-<host>-<pid>-<hex>.
_DISPATCHER_OF_HOST = "kbridge-dispatcher-{host}-[0-9]+(-[0-9a-f]+)?"
# Redis replies as text. Only displayed, so bytes that are not UTF-8 (not written by the bridge) are shown
# with U+FFFD instead of stopping the report.
_shown = partial(decode_text, replace=True)


@dataclass
class QueueStatus:
    name: str
    waiting: int  # in rq:queue:<name>
    taken: int  # in the intermediate list: dequeued, not yet registered as started
    started: int  # in rq:wip:<name>
    failed: int  # in rq:failed:<name>


@dataclass
class DispatcherStatus:
    name: str
    alive: bool
    last_beat_seconds_ago: float
    rq_state: str  # from rq's worker hash; "" once rq has forgotten the worker
    current_job: str


@dataclass
class InFlightStatus:
    total: int
    by_state: dict[str, int]
    by_phase: dict[str, int]  # "" = the watcher has not reported the pod yet
    by_reason: dict[str, int]  # the record's reason, e.g. ContainerCreating while Pending
    without_record: int  # ids whose record expired or is unreadable


@dataclass
class ConsumerStatus:
    name: str
    pending: int
    idle_seconds: float


@dataclass
class GroupStatus:
    name: str
    pending: int
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    last_delivered_id: str
    consumers: list[ConsumerStatus]


@dataclass
class StreamStatus:
    key: str
    length: int
    first_id: str
    last_id: str
    groups: list[GroupStatus]


@dataclass
class WatcherStatus:
    namespace: str
    leader: str  # "" when no watcher holds the lease
    lease_expires_in_seconds: float | None
    checkpoint: str  # resourceVersion the watch resumes from; "" if none


@dataclass
class BridgeStatus:
    redis_url: str  # password redacted
    redis_time: str
    key_prefix: str
    dispatcher_lease_seconds: int
    queues: list[QueueStatus]
    dispatchers: list[DispatcherStatus]
    in_flight: InFlightStatus
    results: StreamStatus
    watchers: list[WatcherStatus]

    @property
    def alive_dispatchers(self) -> int:
        return sum(1 for dispatcher in self.dispatchers if dispatcher.alive)


@dataclass
class TaskStatus:
    key: dict[str, str | int]
    job_id: str
    in_flight: bool
    record: dict[str, str] = field(default_factory=dict)  # the raw hash; empty if there is none
    job: dict[str, str] = field(default_factory=dict)  # the rq launch job; empty if there is none
    delete_job: dict[str, str] = field(default_factory=dict)  # the rq job deleting a revoked try's pod


def _server_time_ms(redis: Redis) -> int:
    seconds, microseconds = redis.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# --- collection -------------------------------------------------------------------------------------------


def collect_status(redis: Redis, config: KubeConfig) -> BridgeStatus:
    """Everything ``kbridge status`` shows, read from Redis without writing anything."""
    keys = Keys(config.key_prefix, config.result_stream)
    now_ms = _server_time_ms(redis)
    return BridgeStatus(
        redis_url=redact_url(config.redis_url),
        redis_time=_iso(now_ms),
        key_prefix=config.key_prefix,
        dispatcher_lease_seconds=config.dispatcher_lease_seconds,
        queues=_queues(redis, config.queue_name),
        dispatchers=_dispatchers(redis, keys, now_ms, config.dispatcher_lease_seconds * 1000),
        in_flight=_in_flight(redis, keys, config.record_ttl_seconds),
        results=_results(redis, keys),
        watchers=_watchers(redis, keys, config.namespace),
    )


def _queues(redis: Redis, configured: str) -> list[QueueStatus]:
    # rq registers a queue on its first enqueue; the configured one is shown even before that.
    names = {configured}
    queue_prefix = Keys.rq_queue("")
    for member in redis.smembers(Keys.RQ_QUEUES):
        name = _shown(member)
        if name.startswith(queue_prefix):
            names.add(name.removeprefix(queue_prefix))
    ordered = sorted(names)
    pipe = redis.pipeline(transaction=False)
    for name in ordered:
        pipe.llen(Keys.rq_queue(name))
        pipe.llen(Keys.rq_intermediate(name))
        pipe.zcard(Keys.rq_started(name))
        pipe.zcard(Keys.rq_failed(name))
    counts = pipe.execute()
    return [QueueStatus(name, *counts[4 * i : 4 * i + 4]) for i, name in enumerate(ordered)]


def _dispatchers(redis: Redis, keys: Keys, now_ms: int, lease_ms: int) -> list[DispatcherStatus]:
    members: Any = redis.zrange(keys.dispatchers, 0, -1, withscores=True)  # [(name, score)]
    beats = [(_shown(name), int(score)) for name, score in members]
    pipe = redis.pipeline(transaction=False)
    for name, _ in beats:
        pipe.hmget(Keys.rq_worker(name), ["state", "current_job"])
    workers = pipe.execute()
    found = [
        DispatcherStatus(
            name=name,
            alive=now_ms - beat <= lease_ms,
            last_beat_seconds_ago=round(max(now_ms - beat, 0) / 1000, 1),
            rq_state=_shown(state or b""),
            current_job=_shown(job or b""),
        )
        for (name, beat), (state, job) in zip(beats, workers, strict=True)
    ]
    return sorted(found, key=lambda dispatcher: (not dispatcher.alive, dispatcher.name))


def _in_flight(redis: Redis, keys: Keys, ttl_seconds: int) -> InFlightStatus:
    job_ids = sorted(_shown(member) for member in redis.smembers(keys.in_flight))
    records = TryRecords(redis, keys, ttl_seconds)
    by_state: Counter[str] = Counter()
    by_phase: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    missing = 0
    for start in range(0, len(job_ids), RECORD_BATCH):
        for record in records.get_many(job_ids[start : start + RECORD_BATCH]).values():
            if record is None:
                missing += 1
                continue
            by_state[record.state.value] += 1
            by_phase[record.phase] += 1
            if record.reason:
                by_reason[record.reason] += 1
    return InFlightStatus(len(job_ids), dict(by_state), dict(by_phase), dict(by_reason), missing)


def _results(redis: Redis, keys: Keys) -> StreamStatus:
    try:
        info: Mapping[str, Any] = redis.xinfo_stream(keys.results)
        groups: Sequence[Mapping[str, Any]] = redis.xinfo_groups(keys.results)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return StreamStatus(keys.results, 0, "", "", [])  # nothing was ever reported yet
    first, last = info.get("first-entry"), info.get("last-entry")
    found = []
    for group in groups:
        name = _shown(group["name"])
        consumers = [
            ConsumerStatus(_shown(consumer["name"]), int(consumer["pending"]), int(consumer["idle"]) / 1000)
            for consumer in redis.xinfo_consumers(keys.results, name)
        ]
        lag = group.get("lag")
        found.append(
            GroupStatus(
                name=name,
                pending=int(group["pending"]),
                lag=None if lag is None else int(lag),
                last_delivered_id=_shown(group["last-delivered-id"]),
                consumers=consumers,
            )
        )
    return StreamStatus(
        key=keys.results,
        length=int(info["length"]),
        first_id=_shown(first[0]) if first else "",
        last_id=_shown(last[0]) if last else "",
        groups=found,
    )


def _watchers(redis: Redis, keys: Keys, configured: str) -> list[WatcherStatus]:
    # A watcher may run for another namespace (--namespace); its keys tell which.
    namespaces = {configured}
    for pattern in (keys.watcher_leader("*"), keys.watcher_checkpoint("*")):
        head, tail = pattern.split("*")
        for key in redis.scan_iter(match=pattern, count=1000):
            namespaces.add(_shown(key)[len(head) : -len(tail)])
    ordered = sorted(namespaces)
    pipe = redis.pipeline(transaction=False)
    for namespace in ordered:
        pipe.get(keys.watcher_leader(namespace))
        pipe.pttl(keys.watcher_leader(namespace))
        pipe.get(keys.watcher_checkpoint(namespace))
    values = pipe.execute()
    found = []
    for i, namespace in enumerate(ordered):
        leader, ttl_ms, checkpoint = values[3 * i : 3 * i + 3]
        found.append(
            WatcherStatus(
                namespace=namespace,
                leader=_shown(leader) if leader is not None else "",
                lease_expires_in_seconds=ttl_ms / 1000 if leader is not None and ttl_ms >= 0 else None,
                checkpoint=_shown(checkpoint) if checkpoint is not None else "",
            )
        )
    return found


def collect_task(redis: Redis, config: KubeConfig, key: TaskKey) -> TaskStatus:
    """One try: its job id (= pod name), try record and rq jobs."""
    keys = Keys(config.key_prefix, config.result_stream)
    job_id = job_id_for(key)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.try_record(job_id))
    pipe.sismember(keys.in_flight, job_id)
    pipe.hmget(Keys.rq_job(job_id), list(RQ_JOB_FIELDS))
    pipe.hmget(Keys.rq_job(f"{job_id}-delete"), list(RQ_JOB_FIELDS))
    record, in_flight, job, delete_job = pipe.execute()
    return TaskStatus(
        key=key.as_dict(),
        job_id=job_id,
        in_flight=bool(in_flight),
        record={_shown(name): _shown(value) for name, value in sorted(record.items())},
        job=_present(RQ_JOB_FIELDS, job),
        delete_job=_present(RQ_JOB_FIELDS, delete_job),
    )


def _present(names: Sequence[str], values: Sequence[object]) -> dict[str, str]:
    return {name: _shown(value) for name, value in zip(names, values, strict=True) if value}


def probe_dispatcher(redis: Redis, config: KubeConfig, host: str) -> DispatcherStatus | None:
    """The live dispatcher of ``host`` (a pod's name), or None: the readiness check of a dispatcher pod."""
    keys = Keys(config.key_prefix, config.result_stream)
    default_name = re.compile(_DISPATCHER_OF_HOST.format(host=re.escape(host)))
    lease_ms = config.dispatcher_lease_seconds * 1000
    for dispatcher in _dispatchers(redis, keys, _server_time_ms(redis), lease_ms):
        named_after_host = dispatcher.name == host or default_name.fullmatch(dispatcher.name) is not None
        if named_after_host and dispatcher.alive:
            return dispatcher
    return None


# --- rendering --------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], counts: Sequence[int] = ()) -> list[str]:
    """Aligned columns; the columns numbered in ``counts`` are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    numeric = [i in counts for i in range(len(header))]
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]
    lines = []
    for row in [list(header), *cells]:
        parts = [
            text.rjust(width) if numeric[i] else text.ljust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(parts).rstrip())
    return lines


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name or '(not reported)'} {count}" for name, count in sorted(counts.items()))


def render_status(status: BridgeStatus) -> str:
    """The human-readable report."""
    lines = [
        f"kbridge status: {status.redis_url} (prefix {status.key_prefix}, Redis time {status.redis_time})"
    ]

    lines += ["", "Queues"]
    lines += _table(
        ("QUEUE", "WAITING", "TAKEN", "STARTED", "FAILED"),
        ((q.name, q.waiting, q.taken, q.started, q.failed) for q in status.queues),
        counts=(1, 2, 3, 4),
    )

    lease = status.dispatcher_lease_seconds
    lines += [
        "",
        f"Dispatchers: {status.alive_dispatchers} alive of {len(status.dispatchers)} "
        f"(alive = heartbeat within {lease} s)",
    ]
    if status.dispatchers:
        lines += _table(
            ("NAME", "ALIVE", "LAST BEAT", "RQ STATE", "CURRENT JOB"),
            (
                (
                    d.name,
                    "yes" if d.alive else "NO",
                    f"{d.last_beat_seconds_ago:.1f} s ago",
                    d.rq_state or "-",
                    d.current_job or "-",
                )
                for d in status.dispatchers
            ),
        )

    in_flight = status.in_flight
    lines += ["", f"In-flight tries (pod launched, not finished): {in_flight.total}"]
    if in_flight.total:
        lines.append(f"  by state: {_counts(in_flight.by_state)}")
        lines.append(f"  by pod phase: {_counts(in_flight.by_phase)}")
        if in_flight.by_reason:
            lines.append(f"  reasons: {_counts(in_flight.by_reason)}")
        if in_flight.without_record:
            lines.append(f"  without a record (expired or unreadable): {in_flight.without_record}")

    results = status.results
    span = f", ids {results.first_id} .. {results.last_id}" if results.length else ""
    lines += ["", f"Result stream {results.key}: {results.length} entries{span}"]
    if results.groups:
        lines += _table(
            ("GROUP", "PENDING", "NOT DELIVERED", "LAST DELIVERED", "CONSUMERS"),
            (
                (
                    g.name,
                    g.pending,
                    "?" if g.lag is None else g.lag,
                    g.last_delivered_id,
                    ", ".join(
                        f"{c.name} ({c.pending} pending, idle {c.idle_seconds:.1f} s)" for c in g.consumers
                    )
                    or "-",
                )
                for g in results.groups
            ),
            counts=(1, 2),
        )
    else:
        lines.append("  no consumer group: the executor has not started reading")

    lines += ["", "Watchers"]
    lines += _table(
        ("NAMESPACE", "LEADER", "LEASE LEFT", "CHECKPOINT"),
        (
            (
                w.namespace,
                w.leader or "NONE",
                "-" if w.lease_expires_in_seconds is None else f"{w.lease_expires_in_seconds:.1f} s",
                w.checkpoint or "-",
            )
            for w in status.watchers
        ),
    )
    return "\n".join(lines) + "\n"


def render_task(task: TaskStatus) -> str:
    key = task.key
    lines = [
        f"task {key['dag_id']}.{key['task_id']} run={key['run_id']} try={key['try_number']} "
        f"map={key['map_index']}",
        f"  job id / pod name: {task.job_id}",
        f"  in flight: {'yes' if task.in_flight else 'no'}",
    ]
    if task.record:
        lines.append("  try record:")
        lines += [f"    {name}: {value}" for name, value in task.record.items()]
    else:
        lines.append("  try record: none (never queued, or expired)")
    for title, job in (("rq job", task.job), ("rq delete job", task.delete_job)):
        if job:
            lines.append(f"  {title}:")
            lines += [f"    {name}: {value}" for name, value in job.items()]
        elif title == "rq job":
            lines.append("  rq job: none (never queued, or expired)")
    return "\n".join(lines) + "\n"


# --- command ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbridge status", description=main.__doc__)
    parser.add_argument("--config", help="INI file (default: $KBRIDGE_CONFIG, else the built-in defaults)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--task", nargs=3, metavar=("DAG", "TASK", "RUN"), help="show one try: job id, try record, rq job"
    )
    parser.add_argument("--try", dest="try_number", type=int, help="try number, with --task (default 1)")
    parser.add_argument("--map-index", type=int, help="map index, with --task (default -1: not mapped)")
    parser.add_argument(
        "--probe",
        choices=("dispatcher",),
        help="exit 0 if a dispatcher of this host (pod) has a live heartbeat, else 1 (readiness probe)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Show queues, dispatchers, in-flight tries, the result stream and watcher leaders (from Redis)."""
    options = _parser().parse_args(argv)
    if options.task is None and (options.try_number is not None or options.map_index is not None):
        raise UserInputError("--try and --map-index select a try of --task DAG TASK RUN; add --task")
    if options.task is not None and options.probe is not None:
        raise UserInputError("--task and --probe are separate checks; use one of them")
    key = None
    if options.task is not None:
        dag_id, task_id, run_id = options.task
        key = TaskKey.from_dict(
            {
                "dag_id": dag_id,
                "task_id": task_id,
                "run_id": run_id,
                "try_number": 1 if options.try_number is None else options.try_number,
                "map_index": -1 if options.map_index is None else options.map_index,
            }
        )
    config = load_config(options.config)
    redis = redis_from_config(config)
    try:
        if options.probe is not None:
            return _probe(redis, config)
        if key is not None:
            report: BridgeStatus | TaskStatus = collect_task(redis, config, key)
        else:
            report = collect_status(redis, config)
    except RedisError as exc:
        print(f"kbridge status: cannot read Redis at {redact_url(config.redis_url)}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        redis.close()
    if options.json:
        print(json.dumps(asdict(report), indent=2))
    elif isinstance(report, TaskStatus):
        print(render_task(report), end="")
    else:
        print(render_status(report), end="")
    return 0


def _probe(redis: Redis, config: KubeConfig) -> int:
    host = socket.gethostname()
    dispatcher = probe_dispatcher(redis, config, host)
    if dispatcher is None:
        print(
            f"kbridge status: no dispatcher of host {host} has beaten in the last "
            f"{config.dispatcher_lease_seconds} s",
            file=sys.stderr,
        )
        return EXIT_NOT_READY
    print(f"dispatcher {dispatcher.name}: alive, last beat {dispatcher.last_beat_seconds_ago:.1f} s ago")
    return 0
