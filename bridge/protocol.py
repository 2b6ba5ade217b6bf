"""Every Redis key and every message of the bridge, defined once.

The scheduler, the dispatchers and the watcher are separate processes that only meet in Redis, so the key
names and the message shapes *are* the interface between them. Keeping them in one module means a reader
(or ``redis-cli``) finds the whole contract in one place, and ``docs/redis.md`` is rendered from
:data:`KEY_TABLE` (a test compares them).

Payloads are JSON or flat string fields, readable with ``redis-cli``; nothing is pickled. Every decoder
here treats its input as untrusted: a malformed message raises :class:`MessageError` naming the field, and
the process that read it fails that one task (or drops that one entry) and keeps going.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from bridge.errors import UserInputError
from bridge.naming import create_pod_id
from bridge.task_key import TaskKey, TaskKeyError

SCHEMA_VERSION = 1

# rq looks job functions up by these names. They are symbols, not import paths: a dispatcher resolves them
# through its allowlist, and a stock rq worker cannot import them, so it fails such a job instead of running
# something else.
LAUNCH_POD = "kbridge.launch_pod"
DELETE_POD = "kbridge.delete_pod"
JOB_FUNCTIONS = (LAUNCH_POD, DELETE_POD)

# rq keeps a finished job (and its result) this long; the try record keeps the outcome for longer.
JOB_RESULT_TTL_SECONDS = 3600

# Names of secret env values (``execute_async(secret_env=...)``): each is a container environment variable
# and a key of the pod's Secret, so it must be both; the C identifier rule is valid everywhere.
SECRET_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECRET_ENV_NAME_RULE = "letters, digits and '_', not starting with a digit"  # noqa: S105 - a rule, not a secret
MAX_SECRET_ENV_NAME_LENGTH = 253  # the longest Secret key
# Names per launch: bounds the enqueue script's arguments (Lua's unpack has a limit) and the pod's env.
MAX_SECRET_ENV_NAMES = 64


class MessageError(UserInputError):
    """A message read from Redis is malformed or unauthentic; the text names the field."""


class TryState(StrEnum):
    """Where one task try is. Records only move forward in :data:`STATE_RANK` order."""

    QUEUED = "queued"  # the rq job exists, no dispatcher has launched it yet
    LAUNCHED = "launched"  # the pod was created (or found to exist already)
    PENDING = "pending"  # the watcher saw the pod Pending
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    REVOKED = "revoked"  # the executor asked for it to stop; a pod, if any, is being deleted


TERMINAL_STATES = frozenset({TryState.SUCCESS, TryState.FAILED, TryState.REVOKED})
# Outcomes the result stream carries: the executor needs "started" and "ended", not every phase.
STREAMED_STATES = frozenset({TryState.RUNNING, *TERMINAL_STATES})
STATE_RANK: dict[TryState, int] = {
    TryState.QUEUED: 0,
    TryState.LAUNCHED: 1,
    TryState.PENDING: 2,
    TryState.RUNNING: 3,
    TryState.SUCCESS: 4,
    TryState.FAILED: 4,
    TryState.REVOKED: 4,
}


def job_id_for(key: TaskKey) -> str:
    """The rq job id of a task try. It is the pod name too, so ``kubectl`` and ``redis-cli`` agree."""
    return create_pod_id(key)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- keys ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The Redis key names of one bridge instance (``[bridge] key_prefix``) and the rq keys it relies on.

    Bridges that share a Redis server must use different databases (``redis://host/1``): rq's own keys
    (``rq:*``) carry no prefix.
    """

    prefix: str = "kbridge"
    results: str = ""  # the result stream; empty means "<prefix>:results"

    def __post_init__(self) -> None:
        if not self.results:
            object.__setattr__(self, "results", f"{self.prefix}:results")

    def try_record(self, job_id: str) -> str:
        return f"{self.prefix}:try:{job_id}"

    def launch_secret(self, job_id: str) -> str:
        """Hash of a queued launch's secret env values (name -> value), until its pod's Secret exists."""
        return f"{self.prefix}:launch-secret:{job_id}"

    @property
    def in_flight(self) -> str:
        """Set of job ids whose pod was launched and has not reached a terminal state."""
        return f"{self.prefix}:in-flight"

    @property
    def dispatchers(self) -> str:
        """Sorted set: dispatcher name -> last heartbeat (Redis server time, ms)."""
        return f"{self.prefix}:dispatchers"

    def watcher_leader(self, namespace: str) -> str:
        return f"{self.prefix}:watcher:{namespace}:leader"

    def watcher_checkpoint(self, namespace: str) -> str:
        return f"{self.prefix}:watcher:{namespace}:resource-version"

    # rq's keys, named here so every key the bridge touches is listed in one place.
    @staticmethod
    def rq_queue(queue: str) -> str:
        return f"rq:queue:{queue}"

    @staticmethod
    def rq_intermediate(queue: str) -> str:
        return f"rq:queue:{queue}:intermediate"

    @staticmethod
    def rq_started(queue: str) -> str:
        return f"rq:wip:{queue}"

    @staticmethod
    def rq_failed(queue: str) -> str:
        return f"rq:failed:{queue}"

    @staticmethod
    def rq_job(job_id: str) -> str:
        return f"rq:job:{job_id}"

    @staticmethod
    def rq_worker(name: str) -> str:
        """rq's hash of a live worker; a dispatcher's heartbeat member is its rq worker name."""
        return f"rq:worker:{name}"

    RQ_QUEUES = "rq:queues"


class KeyDoc(NamedTuple):
    pattern: str
    type: str
    writer: str
    reader: str
    ttl: str
    meaning: str


KEY_TABLE: tuple[KeyDoc, ...] = (
    KeyDoc("rq:queue:<queue>", "list", "executor", "dispatchers (BLMOVE)", "none",
           "job ids waiting for a dispatcher"),
    KeyDoc("rq:queue:<queue>:intermediate", "list", "dispatchers (rq)", "dispatchers (reaper)", "none",
           "job ids taken off the queue, not yet registered as started"),
    KeyDoc("rq:wip:<queue>", "zset", "dispatchers (rq)", "dispatchers (reaper), status", "none",
           "started jobs (`<job id>:<execution id>`)"),
    KeyDoc("rq:failed:<queue>", "zset", "dispatchers (rq)", "operators", "record_ttl_seconds",
           "jobs that raised (a dispatcher bug or an unknown job function)"),
    KeyDoc("rq:job:<job id>", "hash", "executor, dispatchers", "dispatchers, executor, operators",
           f"{JOB_RESULT_TTL_SECONDS} s after success, record_ttl_seconds after failure",
           "the rq job; `data` is JSON `[function, null, [LaunchRequest], {}]`"),
    KeyDoc("rq:queues, rq:workers, rq:worker:<name>, rq:execution:*, rq:results:*", "various", "rq", "rq",
           "rq's", "rq's own bookkeeping"),
    KeyDoc("<prefix>:try:<job id>", "hash", "executor, dispatchers, watcher",
           "executor, dispatchers, status", "record_ttl_seconds, renewed on each write",
           "the try record: state, pod, reason, exit code, times"),
    KeyDoc("<prefix>:launch-secret:<job id>", "hash", "executor (dispatchers delete it)", "dispatchers",
           "launch_secret_ttl_seconds; deleted when its launch job ends or the try is revoked",
           "secret env values of a queued launch (`secret_env`), name -> value"),
    KeyDoc("<prefix>:in-flight", "set", "dispatchers (add), watcher (remove)", "watcher, status", "none",
           "job ids with a launched, unfinished pod"),
    KeyDoc("<prefix>:results", "stream", "watcher, dispatchers, executor (revoke)",
           "executor (consumer group)",
           "trimmed to the oldest entry a group has not acknowledged", "outcomes (`Outcome` fields)"),
    KeyDoc("<prefix>:dispatchers", "zset", "dispatchers", "dispatchers (reaper), status",
           "members dropped after an hour of silence", "dispatcher name -> last heartbeat, ms"),
    KeyDoc("<prefix>:watcher:<namespace>:leader", "string", "watchers", "watchers, status",
           "watcher_lease_seconds", "name of the watcher acting for the namespace"),
    KeyDoc("<prefix>:watcher:<namespace>:resource-version", "string", "watcher", "watcher", "none",
           "resourceVersion the watch resumes from"),
)  # fmt: skip


# --- messages --------------------------------------------------------------------------------------------


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(payload: Mapping[str, Any], signing_key: str) -> str:
    """HMAC-SHA256 of the payload without its ``sig`` field, hex."""
    body = {name: value for name, value in payload.items() if name != "sig"}
    return hmac.new(signing_key.encode(), _canonical(body), hashlib.sha256).hexdigest()


def check_signature(payload: Mapping[str, Any], signing_key: str | None) -> None:
    """Raise :class:`MessageError` unless ``payload`` carries a valid ``sig`` (no-op without a key)."""
    if signing_key is None:
        return
    given = payload.get("sig")
    if not isinstance(given, str):
        raise MessageError("message field 'sig' is missing: set the sender's [bridge] signing_key to ours")
    if not hmac.compare_digest(given, signature(payload, signing_key)):
        raise MessageError("message field 'sig' does not match: the sender's [bridge] signing_key differs")


def _field(data: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MessageError(f"{where} field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _key(data: Mapping[str, Any], where: str) -> TaskKey:
    try:
        return TaskKey.from_dict(data.get("key"))
    except TaskKeyError as exc:
        raise MessageError(f"{where} field 'key': {exc}") from None


@dataclass(frozen=True)
class LaunchRequest:
    """The only argument of a :data:`LAUNCH_POD` job: everything a dispatcher needs to create the pod.

    ``pod_config`` is :meth:`bridge.executor_config.TaskPodConfig.as_dict`; the dispatcher re-parses it
    (it is untrusted input) and builds the pod with its own configuration. ``secret_env`` names the
    variables whose values wait in :meth:`Keys.launch_secret` (never here): the dispatcher puts them in a
    Secret of the pod's name and gives the pod ``secretKeyRef``s to it.
    """

    key: TaskKey
    argv: tuple[str, ...]
    queue: str
    pod_config: dict[str, Any] = field(default_factory=dict)
    enqueued_at: str = ""
    secret_env: tuple[str, ...] = ()

    @property
    def job_id(self) -> str:
        return job_id_for(self.key)

    def to_payload(self, signing_key: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "key": self.key.as_dict(),
            "argv": list(self.argv),
            "queue": self.queue,
            "pod_config": self.pod_config,
            "enqueued_at": self.enqueued_at,
        }
        if self.secret_env:  # absent otherwise: launches without secrets keep the same payload
            payload["secret_env"] = list(self.secret_env)
        if signing_key is not None:
            payload["sig"] = signature(payload, signing_key)
        return payload

    @classmethod
    def from_payload(cls, payload: object, signing_key: str | None) -> LaunchRequest:
        where = "launch request"
        if not isinstance(payload, Mapping):
            raise MessageError(f"{where} must be a JSON object, got {type(payload).__name__}")
        check_signature(payload, signing_key)
        argv = _field(payload, "argv", list, where)
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise MessageError(f"{where} field 'argv' must be a non-empty list of strings")
        return cls(
            key=_key(payload, where),
            argv=tuple(argv),
            queue=_field(payload, "queue", str, where),
            pod_config=_field(payload, "pod_config", dict, where),
            enqueued_at=str(payload.get("enqueued_at", "")),
            secret_env=_secret_env_names(payload.get("secret_env", []), where),
        )


def secret_env_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a secret env name (an environment variable and a Secret key), or None."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if len(name) > MAX_SECRET_ENV_NAME_LENGTH or SECRET_ENV_NAME.fullmatch(name) is None:
        return (
            f"{name[:80]!r} is not a valid name ({SECRET_ENV_NAME_RULE}, at most "
            f"{MAX_SECRET_ENV_NAME_LENGTH} characters)"
        )
    return None


def _secret_env_names(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MessageError(f"{where} field 'secret_env' must be list, got {type(value).__name__}")
    if len(value) > MAX_SECRET_ENV_NAMES:
        raise MessageError(
            f"{where} field 'secret_env' names {len(value)} variables, more than the {MAX_SECRET_ENV_NAMES} "
            "allowed"
        )
    for name in value:
        problem = secret_env_name_problem(name)
        if problem is not None:
            raise MessageError(f"{where} field 'secret_env': a name {problem}")
    if len(set(value)) != len(value):
        raise MessageError(f"{where} field 'secret_env' names a variable twice")
    return tuple(value)


@dataclass(frozen=True)
class DeleteRequest:
    """The only argument of a :data:`DELETE_POD` job, queued when the executor revokes a launched try."""

    key: TaskKey
    namespace: str
    reason: str = "revoked"

    @property
    def job_id(self) -> str:
        return job_id_for(self.key)

    def to_payload(self, signing_key: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "key": self.key.as_dict(),
            "namespace": self.namespace,
            "reason": self.reason,
        }
        if signing_key is not None:
            payload["sig"] = signature(payload, signing_key)
        return payload

    @classmethod
    def from_payload(cls, payload: object, signing_key: str | None) -> DeleteRequest:
        where = "delete request"
        if not isinstance(payload, Mapping):
            raise MessageError(f"{where} must be a JSON object, got {type(payload).__name__}")
        check_signature(payload, signing_key)
        return cls(
            key=_key(payload, where),
            namespace=_field(payload, "namespace", str, where),
            reason=str(payload.get("reason", "revoked")),
        )


def decode_text(value: object, *, replace: bool = False) -> str:
    """A Redis reply value as text. Bytes that are not UTF-8 raise :class:`MessageError`, because they
    come from whoever can write to Redis; with ``replace`` (for display only) they become U+FFFD."""
    if not isinstance(value, bytes):
        return str(value)
    if replace:
        return value.decode(errors="replace")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"{value[:40]!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def field_pairs(fields: Mapping[str, Any]) -> list[Any]:
    """``{name: value}`` as ``[name, value, ...]``: the argument list of HSET, XADD and the Lua scripts."""
    return [item for pair in fields.items() for item in pair]


def _text_fields(raw: Mapping[Any, Any], where: str) -> dict[str, str]:
    try:
        return {decode_text(name): decode_text(value) for name, value in raw.items()}
    except MessageError as exc:
        raise MessageError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """One entry of the result stream: a try started running or ended.

    Stored as flat string fields (``redis-cli XRANGE kbridge:results - +`` reads them). ``reason`` is a
    short machine word (``OOMKilled``, ``Evicted``, ``ErrImagePull``, ``PendingTimeout``, ``Rejected`` ...);
    ``message`` is the sentence for a person.
    """

    key: TaskKey
    state: TryState
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    pod: str = ""
    namespace: str = ""
    at: str = ""
    source: str = ""  # "watcher" or "dispatcher"

    @property
    def job_id(self) -> str:
        return job_id_for(self.key)

    def to_fields(self) -> dict[str, str]:
        return {
            "v": str(SCHEMA_VERSION),
            "job_id": self.job_id,
            "key": json.dumps(self.key.as_dict(), separators=(",", ":")),
            "state": self.state.value,
            "reason": self.reason,
            "message": self.message,
            "exit_code": "" if self.exit_code is None else str(self.exit_code),
            "pod": self.pod,
            "namespace": self.namespace,
            "at": self.at or utc_now(),
            "source": self.source,
        }

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> Outcome:
        """Decode a stream entry (bytes or str fields); raises :class:`MessageError`."""
        where = "result stream entry"
        fields = _text_fields(raw, where)
        try:
            key_data = json.loads(fields.get("key", ""))
        except ValueError:
            raise MessageError(f"{where} field 'key' is not JSON") from None
        key = _key({"key": key_data}, where)
        try:
            state = TryState(fields.get("state", ""))
        except ValueError:
            raise MessageError(f"{where} field 'state' is {fields.get('state')!r}") from None
        if state not in STREAMED_STATES:
            raise MessageError(f"{where} field 'state' is {state.value!r}, not a streamed state")
        exit_code_text = fields.get("exit_code", "")
        try:
            exit_code = int(exit_code_text) if exit_code_text else None
        except ValueError:
            raise MessageError(f"{where} field 'exit_code' is {exit_code_text!r}") from None
        return cls(
            key=key,
            state=state,
            reason=fields.get("reason", ""),
            message=fields.get("message", ""),
            exit_code=exit_code,
            pod=fields.get("pod", ""),
            namespace=fields.get("namespace", ""),
            at=fields.get("at", ""),
            source=fields.get("source", ""),
        )


@dataclass(frozen=True)
class TryRecord:
    """The hash ``<prefix>:try:<job id>``: what the bridge last knew about one try.

    Written forward only (see :data:`STATE_RANK`) by the script in :mod:`bridge.records`; read by the
    executor to adopt tries after a restart and by ``kbridge status``.
    """

    key: TaskKey
    state: TryState
    queue: str = ""
    pod: str = ""
    namespace: str = ""
    phase: str = ""
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    revoked: bool = False
    updated_at: str = ""

    @property
    def job_id(self) -> str:
        return job_id_for(self.key)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_fields(self) -> dict[str, str]:
        """The fields this record sets. Empty identity fields (queue, pod, ...) are left out, so one
        writer never erases another's; ``reason`` and ``message`` always describe the newest state."""
        fields = {
            "key": json.dumps(self.key.as_dict(), separators=(",", ":")),
            "state": self.state.value,
            "queue": self.queue,
            "pod": self.pod,
            "namespace": self.namespace,
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "exit_code": "" if self.exit_code is None else str(self.exit_code),
            "updated_at": self.updated_at or utc_now(),
        }
        return {name: value for name, value in fields.items() if value or name in ("reason", "message")}

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> TryRecord:
        where = "try record"
        fields = _text_fields(raw, where)
        try:
            key_data = json.loads(fields.get("key", ""))
            state = TryState(fields.get("state", ""))
            exit_code = int(fields["exit_code"]) if fields.get("exit_code") else None
        except ValueError as exc:
            raise MessageError(f"{where} is malformed: {exc}") from None
        return cls(
            key=_key({"key": key_data}, where),
            state=state,
            queue=fields.get("queue", ""),
            pod=fields.get("pod", ""),
            namespace=fields.get("namespace", ""),
            phase=fields.get("phase", ""),
            reason=fields.get("reason", ""),
            message=fields.get("message", ""),
            exit_code=exit_code,
            revoked=fields.get("revoked") == "1",
            updated_at=fields.get("updated_at", ""),
        )


def render_key_table_markdown() -> str:
    """The key table of ``docs/redis.md``."""
    lines = ["| Key | Type | Written by | Read by | Expires | Holds |", "|---|---|---|---|---|---|"]
    for doc in KEY_TABLE:
        lines.append(
            f"| `{doc.pattern}` | {doc.type} | {doc.writer} | {doc.reader} | {doc.ttl} | {doc.meaning} |"
        )
    return "\n".join(lines) + "\n"
