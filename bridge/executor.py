"""The scheduler-side executor: queue task tries as rq jobs, turn the result stream into task states.

It keeps the interface of Airflow's ``KubernetesExecutor`` (``start``, ``execute_async``, ``sync``, ``end``,
``terminate``, ``running``, ``event_buffer``), but never talks to Kubernetes. The scheduler loop must stay
fast and must survive Redis outages, so:

* ``execute_async`` only validates the task and builds its rq job in memory (microseconds, no I/O);
  a bad command, ``executor_config``, queue name or ``secret_env`` fails that task alone, with the reason
  in the event buffer, instead of raising into the scheduler.
* ``secret_env`` values (a task try's own secrets, e.g. Airflow 3's workload token) are never in the rq
  job, a try record, the result stream, a log line or an exception message: they go to a launch-secret
  hash that expires after ``launch_secret_ttl_seconds`` (:mod:`bridge.queue`), from which a dispatcher
  moves them into a Secret the pod reads by ``secretKeyRef``, then deletes the hash.
* ``sync`` writes every job queued since the last call in one round trip (:class:`~bridge.queue.TaskQueue`)
  and then applies outcomes from the result stream (:class:`~bridge.results.ResultReader`), acknowledging
  them only after they are applied. When Redis is unreachable it logs, keeps the unsent jobs and returns;
  the next call sends them. Nothing raises into the scheduler loop.
* Each try's record in Redis (:mod:`bridge.records`) is the memory that survives a scheduler restart:
  ``adopt`` (and ``clear_not_launched_queued_tasks``) adopts tries that are queued or running and reports
  terminal ones.

One executor (one scheduler) per bridge instance (``[bridge] key_prefix`` in one Redis database): the
executor acknowledges every outcome it reads, including those of tries it does not know, so a second
executor reading the same consumer group would swallow the first one's outcomes. Outcomes of tries not (yet)
known are kept for a while (the last :data:`UNADOPTED_OUTCOMES`), so tries adopted after a restart by
``adopt`` still get outcomes that were read before they were adopted. Give the
executor a stable ``[bridge] consumer_name`` (e.g. a StatefulSet pod name) so a restart re-reads its own
unacknowledged outcomes at once; with a changing name they are claimed from the old name after
:data:`bridge.results.CLAIM_IDLE_SECONDS`.

Task keys: anything Airflow passes as a ``TaskInstanceKey`` works, i.e. a
:class:`~bridge.task_key.TaskKey` or any 5-tuple ``(dag_id, task_id, run_id, try_number, map_index)``.
``running`` and ``event_buffer`` hold :class:`~bridge.task_key.TaskKey` objects, which compare and hash
equal to the plain tuples.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.config import QUEUE_NAME, KubeConfig, load_config
from bridge.connection import MAX_BLOCK_SECONDS, redis_from_config
from bridge.errors import UserInputError
from bridge.executor_config import parse_executor_config
from bridge.protocol import (
    MAX_SECRET_ENV_NAMES,
    TERMINAL_STATES,
    Keys,
    LaunchRequest,
    Outcome,
    TryRecord,
    TryState,
    decode_text,
    job_id_for,
    secret_env_name_problem,
    utc_now,
)
from bridge.queue import DEAD_JOB_STATUSES, EnqueueStatus, PreparedJob, RevokeAction, RevokeResult, TaskQueue
from bridge.records import TryRecords
from bridge.results import Entry, ResultReader
from bridge.task_key import TaskKey, TaskKeyError

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# The states the event buffer reports, as Airflow's TaskInstanceState values.
RUNNING, SUCCESS, FAILED = "running", "success", "failed"
_EVENT_STATE = {TryState.RUNNING: RUNNING, TryState.SUCCESS: SUCCESS}  # anything else terminal: failed
# Record states that mean a dispatcher launched the pod (or is about to report on it).
_LAUNCHED_STATES = frozenset({TryState.LAUNCHED, TryState.PENDING, TryState.RUNNING})
TRIM_INTERVAL_SECONDS = 30.0  # also how often outcomes left pending by a gone consumer are claimed
UNADOPTED_OUTCOMES = 10_000  # outcomes of unknown tries kept for a later adoption (oldest dropped first)
READS_PER_SYNC = 10  # batches of outcomes applied per sync(), so one call never runs unbounded
_RETRY_PAUSE_SECONDS = 1.0  # end() between attempts while Redis is unreachable
# Linux's MAX_ARG_STRLEN: the longest single environment string (``NAME=value`` and its NUL) or argument;
# a value reaches the container as env and, through ``$(NAME)``, in its args.
MAX_ARG_STRLEN = 128 * 1024
# All values of one try (names included): Kubernetes limits a Secret's decoded data to 1 MiB, and env and
# args together must fit Linux's ARG_MAX (often 2 MiB), where each value may count twice.
MAX_SECRET_ENV_BYTES = 512 * 1024


class InvalidTask(UserInputError):
    """A task handed to ``execute_async`` cannot be run as given; the message says what to change."""


TaskKeyLike = TaskKey | tuple[Any, ...]


def task_key(key: TaskKeyLike) -> TaskKey:
    """``key`` as a :class:`TaskKey`; raises :class:`TaskKeyError` if it is not a valid 5-tuple."""
    if not isinstance(key, tuple) or len(key) != 5:
        raise TaskKeyError(f"task key must be (dag_id, task_id, run_id, try_number, map_index), got {key!r}")
    return TaskKey.from_dict(TaskKey(*key).as_dict())


class KubernetesExecutor:
    """Runs Airflow task tries as Kubernetes pods through Redis (see the module docstring).

    ``config`` defaults to :func:`bridge.config.load_config` (``$KBRIDGE_CONFIG`` and ``KBRIDGE__*``);
    ``redis`` defaults to a client for ``[bridge] redis_url``.
    """

    def __init__(self, config: KubeConfig | None = None, *, redis: Redis | None = None) -> None:
        self.config = config if config is not None else load_config()
        self.redis = redis if redis is not None else redis_from_config(self.config)
        self.keys = Keys(self.config.key_prefix, self.config.result_stream)
        self.queue = TaskQueue(self.redis, self.keys, self.config)
        self.records = TryRecords(self.redis, self.keys, self.config.record_ttl_seconds)
        self.reader = ResultReader(
            self.redis,
            self.keys,
            self.config.consumer_group,
            self.config.consumer_name,
            self.config.result_batch_size,
        )
        self.running: set[TaskKey] = set()
        self.event_buffer: dict[TaskKey, tuple[str, Outcome]] = {}
        self._batch: list[PreparedJob] = []  # built by execute_async, not yet written to Redis
        self._duplicates: list[TaskKey] = []  # enqueued before by someone: settle from their records
        self._unacked: list[str] = []  # applied outcomes whose XACK has not gone through yet
        self._reported_running: set[TaskKey] = set()
        # Outcomes read for tries not in ``running`` (not adopted yet after a restart), latest per try.
        self._unadopted: OrderedDict[TaskKey, Outcome] = OrderedDict()
        self._last_maintenance = time.monotonic()
        self._redis_down = False

    # --- the scheduler's interface ------------------------------------------------------------------

    def start(self) -> None:
        """Make sure the consumer group exists and claim outcomes a gone consumer left unacknowledged.

        An unreachable Redis is retried by every sync().
        """
        log.info(
            "Starting the Kubernetes executor (queue %s, results %s, group %s, consumer %s)",
            self.config.queue_name,
            self.keys.results,
            self.reader.group,
            self.reader.consumer,
        )
        self._guard(self._start_reading)

    def execute_async(
        self,
        key: TaskKeyLike,
        command: Sequence[str],
        queue: str | None = None,
        executor_config: Any = None,
        *,
        secret_env: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one task try; it reaches Redis at the next :meth:`sync` (or :meth:`flush`).

        ``command`` is the argv list of the worker container. ``secret_env`` maps environment variable
        names of the worker container to secret values (e.g. a token for this try); the pod reads them
        from a Secret of its own, so ``command`` may use them as ``$(NAME)``, which Kubernetes expands.
        A task that cannot be run as given (a command that is a string, an invalid ``executor_config``,
        queue name or ``secret_env``) is failed at once: its event says why, and nothing is raised. A
        malformed ``key`` raises :class:`TaskKeyError`: there is no task to fail.
        """
        task = task_key(key)
        if task in self.running:
            log.warning("Task %s is already running here; not queueing it again", task)
            return
        try:
            secrets = _secret_env(secret_env)
            request = LaunchRequest(
                key=task,
                argv=_argv(command),
                queue=self._queue_name(queue),
                pod_config=parse_executor_config(executor_config).as_dict() if executor_config else {},
                enqueued_at=utc_now(),
                secret_env=tuple(secrets),
            )
            prepared = self.queue.build(request, secrets)
        except (UserInputError, TypeError, ValueError) as exc:
            log.error("Task %s cannot be queued: %s", task, exc)
            self._event(
                Outcome(task, TryState.FAILED, reason="InvalidTask", message=str(exc), source="executor")
            )
            return
        self.running.add(task)
        self._batch.append(prepared)

    def flush(self) -> bool:
        """Write the queued jobs in one round trip; False (jobs kept for the next call) if Redis failed."""
        if not self._batch:
            return True
        batch = self._batch
        results = self._guard(self.queue.enqueue, batch)
        if results is None:
            return False
        self._batch = []
        for job, result in zip(batch, results, strict=True):
            if result.status is EnqueueStatus.DUPLICATE:
                self._duplicates.append(job.key)
            elif result.status is EnqueueStatus.REFUSED:
                message = result.message
                if not message.startswith("secret_env"):  # a key of its queue holds another type
                    message = f"queue {job.queue!r} cannot be used: {message}"
                log.error("Task %s cannot be queued: %s", job.key, message)
                failed = Outcome(job.key, TryState.FAILED, "InvalidTask", message, source="executor")
                self._event(failed)
        fresh = sum(result.fresh for result in results)
        log.debug("Queued %d task(s), %d not (already known or refused)", fresh, len(batch) - fresh)
        return True

    def sync(self) -> None:
        """Send queued jobs, apply available outcomes (up to a cap per call), ack them, trim now and then."""
        # Outcomes are still read when only the enqueue script failed, not when Redis is unreachable.
        if self.flush() or not self._redis_down:
            self._guard(self._sync, None)

    def get_event_buffer(self, dag_ids: Iterable[str] | None = None) -> dict[TaskKey, tuple[str, Outcome]]:
        """Return and forget the events (of ``dag_ids`` only, if given)."""
        if dag_ids is None:
            events, self.event_buffer = self.event_buffer, {}
            return events
        wanted = set(dag_ids)
        events = {key: event for key, event in self.event_buffer.items() if key.dag_id in wanted}
        for key in events:
            del self.event_buffer[key]
        return events

    def end(self, timeout: float | None = None) -> None:
        """Send queued jobs, then wait for every running try to finish (or ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        block_ms: int | None = None
        while True:
            sent = self.flush()
            healthy = (sent or not self._redis_down) and self._guard(self._sync, block_ms) is not None
            if not self.running:
                log.info("All tasks finished")
                return
            left = MAX_BLOCK_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                log.warning("Stopped waiting with %d task(s) still running", len(self.running))
                return
            block_ms = max(1, int(min(left, MAX_BLOCK_SECONDS) * 1000)) if healthy else None
            if not healthy:
                time.sleep(min(left, _RETRY_PAUSE_SECONDS))  # Redis unreachable: try again shortly

    def terminate(self) -> None:
        """Revoke every running try: queued ones leave their queue, launched ones get their pod deleted.

        Outcomes already in the result stream are applied first, and a try whose record already ended is
        reported as it ended; every other running try is reported failed at once, the scheduler does not
        wait for the pods to go.
        """
        self.flush()
        self._guard(self._sync, None)
        for key in sorted(self.running):
            result = self._revoke(key)
            if key not in self.running:  # it was never sent: already reported
                continue
            if result is not None and result.action is RevokeAction.FINISHED:
                record = self._guard(self.records.get, job_id_for(key))
                if record is not None and record.terminal:
                    self._event(_outcome_from_record(record))
                    continue
            message = "executor terminated"
            self._event(Outcome(key, TryState.REVOKED, reason="Revoked", message=message, source="executor"))

    def revoke(self, key: TaskKeyLike, *, report: bool = True) -> bool:
        """Stop one try; True if it was taken off its queue or its pod deletion was queued.

        With ``report``, its outcome (revoked, reported as failed) arrives through the result stream as
        usual. Without it (Airflow's ``revoke_task``, which settles the task itself), the try leaves
        ``running`` at once and no event is ever put in the event buffer for it. A try no dispatcher ever
        ran (still queued, or never sent) is then forgotten: its record, rq job and launch-secret hash are
        deleted, so :meth:`execute_async` with the same key queues it as new (Airflow revokes a try stuck
        in queued and queues the same key again). Outcomes read later for a launched one are kept like
        those of a try this executor does not know.
        """
        task = task_key(key)
        result = self._revoke(task, report=report)
        if not report:
            self.running.discard(task)
            self._reported_running.discard(task)
            if result is not None and result.action is RevokeAction.FORGOTTEN:
                self._unadopted.pop(task, None)
                self._duplicates = [duplicate for duplicate in self._duplicates if duplicate != task]
        return result is not None and result.action in (
            RevokeAction.DEQUEUED,
            RevokeAction.DELETE_QUEUED,
            RevokeAction.FORGOTTEN,
        )

    def clear_not_launched_queued_tasks(self, queued: Iterable[TaskKeyLike]) -> list[TaskKey]:
        """:meth:`adopt`, with an unreachable Redis reported as the empty list (call again later)."""
        return self.adopt(queued) or []

    def adopt(self, keys: Iterable[TaskKeyLike]) -> list[TaskKey] | None:
        """After a scheduler restart: of the tries the scheduler believes queued, return those never launched.

        Per try, from its record and rq job (one round trip): a try that ended (its record, or an outcome
        read before this call) reports its outcome now, as does a try revoked before any dispatcher ran it;
        a launched (or pending, running) record, or a live rq job (queued, started), is adopted into
        ``running``; anything else was never launched and is returned, for the scheduler to queue again.
        If Redis is unreachable, nothing is decided and None is returned (call again later).
        """
        tasks = [task_key(key) for key in keys]
        found = self._guard(self._records_and_statuses, tasks)
        if found is None:
            return None
        not_launched: list[TaskKey] = []
        for key, (record, status) in zip(tasks, found, strict=True):
            early = self._unadopted.pop(key, None)
            live_job = status is not None and status not in DEAD_JOB_STATUSES
            if early is not None and early.state in TERMINAL_STATES:
                self._event(early)
            elif record is not None and record.terminal:
                self._event(_outcome_from_record(record))
            elif (record is not None and record.state in _LAUNCHED_STATES) or live_job:
                self.running.add(key)
                log.info("Adopted %s (%s)", key, record.state.value if record else f"rq job {status}")
                if early is not None:  # it started running before we adopted it
                    self._apply_outcome(early)
            elif record is not None and record.revoked:
                message = "revoked before a dispatcher launched it"
                self._event(Outcome(key, TryState.REVOKED, "Revoked", message, source="record"))
            else:
                not_launched.append(key)
        if not_launched:
            log.info("%d queued task(s) were never launched: %s", len(not_launched), not_launched)
        return not_launched

    # --- internals ----------------------------------------------------------------------------------

    def _start_reading(self) -> None:
        self.reader.ensure_group()
        self.reader.reclaim()

    def _sync(self, block_ms: int | None) -> bool:
        self._settle_duplicates()
        if self._unacked:
            self.reader.ack(self._unacked)
            self._unacked = []
        maintenance = time.monotonic() - self._last_maintenance >= TRIM_INTERVAL_SECONDS
        if maintenance:
            self.reader.reclaim()  # what it claims is read below, with our own pending entries
        for _read in range(READS_PER_SYNC):
            entries = self.reader.read(block_ms)
            block_ms = None
            if not entries:
                break
            self._apply(entries)
            self._unacked = [entry_id for entry_id, _ in entries]
            self.reader.ack(self._unacked)
            self._unacked = []
            if len(entries) < self.reader.batch_size:
                break
        if maintenance:
            self.reader.trim_acknowledged()
            self._last_maintenance = time.monotonic()
        return True

    def _apply(self, entries: list[Entry]) -> None:
        for _entry_id, outcome in entries:
            if outcome is not None:  # None: malformed, logged by the reader
                self._apply_outcome(outcome)

    def _apply_outcome(self, outcome: Outcome) -> None:
        if outcome.key not in self.running:
            self._remember(outcome)  # a duplicate, or a try not adopted yet
            return
        if outcome.state is TryState.RUNNING:
            if outcome.key in self._reported_running:
                return
            self._reported_running.add(outcome.key)
        self._event(outcome)

    def _remember(self, outcome: Outcome) -> None:
        """Keep the latest outcome of a try we do not know (a terminal one is never replaced)."""
        earlier = self._unadopted.pop(outcome.key, None)
        self._unadopted[outcome.key] = (
            earlier if earlier is not None and earlier.state in TERMINAL_STATES else outcome
        )
        while len(self._unadopted) > UNADOPTED_OUTCOMES:
            self._unadopted.popitem(last=False)

    def _event(self, outcome: Outcome) -> None:
        state = _EVENT_STATE.get(outcome.state, FAILED)
        key = outcome.key
        if outcome.state in TERMINAL_STATES:
            self.running.discard(key)
            self._reported_running.discard(key)
        detail = " ".join(part for part in (outcome.reason, outcome.message) if part)
        log.info("Changing state of %s to %s%s", key, state, f" ({detail})" if detail else "")
        self.event_buffer[key] = (state, outcome)

    def _settle_duplicates(self) -> None:
        """Tries enqueued before (e.g. by an earlier scheduler): report finished ones from their record."""
        if not self._duplicates:
            return
        records = self.records.get_many([job_id_for(key) for key in self._duplicates])
        for key in self._duplicates:
            record = records[job_id_for(key)]
            early = self._unadopted.pop(key, None)
            if key not in self.running:
                continue
            if early is not None and early.state in TERMINAL_STATES:
                self._event(early)
            elif record is not None and record.terminal:
                self._event(_outcome_from_record(record))
            else:
                log.info("Task %s was queued before; waiting for its outcome", key)
                if early is not None:
                    self._apply_outcome(early)
        self._duplicates = []

    def _revoke(self, task: TaskKey, *, report: bool = True) -> RevokeResult | None:
        """Revoke one try (see :meth:`revoke`); None if Redis failed or it was never sent."""
        unsent = [job for job in self._batch if job.key == task]
        if unsent:  # never reached Redis: nothing else will report on it
            self._batch = [job for job in self._batch if job.key != task]
            if not report:
                return RevokeResult(RevokeAction.FORGOTTEN, None)
            message = "revoked before it was queued"
            self._event(Outcome(task, TryState.REVOKED, "Revoked", message, source="executor"))
            return RevokeResult(RevokeAction.DEQUEUED, None)
        result = self._guard(self.queue.revoke, task, self.config.namespace, forget=not report)
        if result is not None:
            log.info("Revoking %s: %s (was %s)", task, result.action.value, result.state)
        return result

    def _records_and_statuses(self, keys: list[TaskKey]) -> list[tuple[TryRecord | None, str | None]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            job_id = job_id_for(key)
            pipe.hgetall(self.keys.try_record(job_id))
            pipe.hget(self.keys.rq_job(job_id), "status")
        replies = pipe.execute()
        found: list[tuple[TryRecord | None, str | None]] = []
        for raw, status in zip(replies[::2], replies[1::2], strict=True):
            try:
                record = TryRecord.from_hash(raw) if raw else None
            except UserInputError as exc:
                log.warning("Unreadable try record, treated as missing: %s", exc)
                record = None
            found.append((record, None if status is None else decode_text(status, replace=True)))
        return found

    def _queue_name(self, queue: object) -> str:
        if queue is None:
            return self.config.queue_name
        if not isinstance(queue, str):
            raise InvalidTask(f"queue must be a string naming an rq queue, got {type(queue).__name__}")
        try:
            return str(QUEUE_NAME.parse(queue))
        except ValueError as exc:
            raise InvalidTask(f"queue {queue!r} is not a valid rq queue name: {exc}") from None

    def _guard(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``call(...)``, or None after logging if it failed: the scheduler loop must go on.

        Redis errors are expected (outages, a refused command). Anything else is a bug or input nobody
        foresaw; it is logged with its traceback and the outcomes read since the last acknowledgement are
        read again next time, so nothing is lost while the scheduler keeps running.
        """
        try:
            result = call(*args, **kwargs)
        except RedisError as exc:
            # An outage is logged once; a refused command (e.g. Redis out of memory) every time.
            outage = isinstance(exc, RedisConnectionError | RedisTimeoutError)
            level = logging.DEBUG if outage and self._redis_down else logging.WARNING
            what = "unavailable" if outage else "refused a command"
            log.log(level, "Redis %s (%s: %s); will retry on the next sync", what, type(exc).__name__, exc)
            self._redis_down = self._redis_down or outage
            return None
        except Exception:
            log.exception("Unexpected error in the executor (%s); will retry on the next sync", call.__name__)
            self.reader.reread_pending()
            return None
        if self._redis_down:
            log.info("Redis reachable again")
            self._redis_down = False
        return result


def _argv(command: object) -> tuple[str, ...]:
    if isinstance(command, str | bytes):
        raise InvalidTask(
            f"command must be a list of strings (argv), got a string {command!r}; "
            "pass e.g. ['airflow', 'tasks', 'run', ...] instead of one shell line"
        )
    if not isinstance(command, list | tuple) or not command:
        raise InvalidTask(f"command must be a non-empty list of strings (argv), got {command!r}")
    bad = [arg for arg in command if not isinstance(arg, str)]
    if bad:
        raise InvalidTask(f"command must contain only strings, got {bad!r} in {command!r}")
    return tuple(command)


def _secret_env(secret_env: object) -> dict[str, str]:
    """The checked ``secret_env`` of a task; messages name the field, never a value."""
    if secret_env is None:
        return {}
    if not isinstance(secret_env, Mapping):
        raise InvalidTask(
            f"secret_env must be a mapping of environment variable name to string value, got "
            f"{type(secret_env).__name__}"
        )
    if len(secret_env) > MAX_SECRET_ENV_NAMES:
        raise InvalidTask(
            f"secret_env has {len(secret_env)} names, more than the {MAX_SECRET_ENV_NAMES} allowed; pass "
            "fewer values (e.g. several in one JSON value)"
        )
    size = 0
    for name, value in secret_env.items():
        problem = secret_env_name_problem(name)
        if problem is not None:
            raise InvalidTask(f"secret_env: a name {problem}; rename the variable")
        if not isinstance(value, str):
            raise InvalidTask(
                f"secret_env[{name!r}] must be a string, got {type(value).__name__}; pass the value as text"
            )
        if "\x00" in value:
            raise InvalidTask(
                f"secret_env[{name!r}] contains a NUL character, which an environment variable cannot hold; "
                "encode the value (e.g. base64)"
            )
        try:
            entry = len(name) + 1 + len(value.encode()) + 1  # NAME=value and its terminating NUL
        except UnicodeEncodeError:  # its message would quote the offending character
            raise InvalidTask(
                f"secret_env[{name!r}] is not valid Unicode text (it holds a lone surrogate); pass text "
                "that encodes as UTF-8"
            ) from None
        if entry > MAX_ARG_STRLEN:
            raise InvalidTask(
                f"secret_env[{name!r}] is {entry - len(name) - 2} bytes; as '{name}=<value>' it takes "
                f"{entry} bytes, more than the {MAX_ARG_STRLEN} Linux allows one environment variable or "
                "argument (MAX_ARG_STRLEN), so the container could not start; pass large data another way, "
                "e.g. a Secret or volume of your own in executor_config"
            )
        size += entry - 2
    if size > MAX_SECRET_ENV_BYTES:
        raise InvalidTask(
            f"secret_env holds {size} bytes (names and values), more than the {MAX_SECRET_ENV_BYTES} allowed "
            "(Kubernetes limits the pod's Secret to 1 MiB of data, and the values also fill the container's "
            "environment and arguments); pass large data another way, e.g. a Secret or volume of your own "
            "in executor_config"
        )
    return dict(secret_env)


def _outcome_from_record(record: TryRecord) -> Outcome:
    return Outcome(
        key=record.key,
        state=record.state,
        reason=record.reason,
        message=record.message,
        exit_code=record.exit_code,
        pod=record.pod,
        namespace=record.namespace,
        at=record.updated_at,
        source="record",
    )
