"""``kbridge dispatcher``: turn queued launch jobs into worker pods, exactly one pod per task try.

Why an rq worker and not a loop of our own: rq already gives an atomic hand-off from the queue (BLMOVE into
a per-queue intermediate list), a started registry, warm shutdown on SIGTERM and job bookkeeping that
``rq info`` and ``kbridge status`` can read. What rq does not give, this module adds:

* no fork per job: a launch is one API call, so :class:`DispatcherWorker` is a ``SimpleWorker``;
* only the two job functions of :mod:`bridge.protocol`, through :func:`bridge.jobs.job_class_with`; a job
  naming anything else is failed without being called (and its try, if it has one, is failed too);
* an API policy: 429 (honouring Retry-After), 5xx and dropped connections are retried with jittered
  backoff, at most ``task_publish_max_retries`` times and within ``dispatch_deadline_seconds`` (shorter than
  the rq job timeout); 409 AlreadyExists counts as launched only after the existing pod's annotations prove it
  is this very try; any other 4xx fails the task at once with the API server's own message;
* task input never crashes a dispatcher: a bad message, executor_config or pod spec fails that one try with a
  reason naming the field, and the worker takes the next job;
* seconds, not minutes, to recover the job of a dispatcher that died mid-job (:mod:`workers.reaper`);
  a job during which Redis failed goes back to its queue instead of being recorded failed;
* one deadline per job (``dispatch_deadline_seconds`` from its start) for every API call and Redis retry;
* a request older than ``record_ttl_seconds`` is refused ("Expired"): replayed after its try record expired,
  it would launch the try again; and a pod created for a try that is already finished (two runs of one
  job raced) is deleted at once;
* secret env values (a request's ``secret_env`` names, their values in the launch-secret hash) reach the
  pod through a Secret named like it, created *before* the pod (a pod whose secretKeyRef is missing shows
  ``CreateContainerConfigError``, which the watcher treats as fatal), then owned by the pod so Kubernetes
  deletes it with the pod. The hash is deleted once the job has answered; a hash already gone fails the try
  ("LaunchSecretExpired") unless its pod exists or its record shows another run of the job launched it
  (or that it was revoked). A Secret left by a failed create, a refused pod or a run that died before its
  pod is deleted on the way out, by a revoke or by a delete_pod job, always after checking it is this
  try's and with its uid as a precondition. Values are never logged nor put in a message, a record or the
  job result; refused Secret writes are reported by status and reason only.

Every try moves through :class:`bridge.records.TryRecords` only: ``queued`` → ``launched`` here (or
``failed``/``revoked``, streamed to the executor with ``source="dispatcher"``); the watcher does the rest.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes.client import ApiException, V1DeleteOptions, V1Preconditions
from kubernetes.config import ConfigException
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DeserializationError
from rq.job import Job, get_current_job
from rq.queue import Queue
from rq.worker import SimpleWorker, WorkerStatus
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any
from tenacity.stop import stop_base

from bridge.config import QUEUE_NAME, KubeConfig, load_config, redact_url
from bridge.connection import redis_from_config
from bridge.errors import UserInputError
from bridge.executor_config import parse_executor_config
from bridge.jobs import SERIALIZER, UnknownJobFunction, job_class_with
from bridge.kube_client import backoff_seconds, core_v1, request_args
from bridge.protocol import (
    DELETE_POD,
    LAUNCH_POD,
    STATE_RANK,
    DeleteRequest,
    Keys,
    LaunchRequest,
    MessageError,
    Outcome,
    TryRecord,
    TryState,
    decode_text,
    job_id_for,
)
from bridge.records import TryRecords
from bridge.task_key import TaskKey, TaskKeyError
from bridge.worker_pod import build_launch_secret, build_worker_pod, key_text, ownership_problem
from workers.reaper import Heartbeat, Reaper, heartbeat_age, requeue_own_job

log = logging.getLogger(__name__)

SOURCE = "dispatcher"
# Longest Retry-After the dispatcher obeys; a longer one is shortened (the deadline still bounds the total).
MAX_RETRY_AFTER_SECONDS = 30.0
# How long a Redis operation outside a job (failing the try of a broken job) rides out a restart.
REDIS_RETRY_SECONDS = 30.0
# Redis errors worth waiting out: the server restarts, fails over or is briefly unreachable.
REDIS_TRANSIENT = (RedisConnectionError, RedisTimeoutError)
# Longest pause between reconnection attempts of an idle dispatcher.
REDIS_MAX_PAUSE_SECONDS = 5.0

T = TypeVar("T")


class _RevokedMeanwhile(Exception):
    """The try was revoked while its launch ran (its launch-secret hash went with the revoke)."""


class DispatchRejected(Exception):
    """The API server refused or could not take a request; ``reason`` is the outcome's machine word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- API errors ----------------------------------------------------------------------------------------

_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)


def _transient(exc: BaseException) -> bool:
    """Worth another try: throttling (429), a server error (5xx) or a connection that broke on the way."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (isinstance(exc.status, int) and exc.status >= 500)
    return isinstance(exc, _TRANSPORT_ERRORS)


def _retry_after(exc: BaseException | None) -> float | None:
    """The Retry-After of an API answer, in seconds, when it is a number (an HTTP date is ignored)."""
    if not isinstance(exc, ApiException) or not exc.headers:
        return None
    value = exc.headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _api_message(exc: ApiException) -> str:
    """The API server's own sentence: the Status ``message``, else the plain-text body, else the reason."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    if body:
        try:
            status = json.loads(body)
        except ValueError:
            return str(body).strip()
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    return f"{exc.status} {exc.reason}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".rstrip() + f": {_api_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _status(exc: BaseException) -> str:
    """An error without the API's response body (which may quote what the request sent)."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    return f"{type(exc).__name__}: {exc}"


def _read_json(response: Any) -> Any:
    """Body of a ``_preload_content=False`` answer as JSON; the connection goes back to the pool."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def _single_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str) -> Any:
    if len(args) != 1 or kwargs:
        raise MessageError(
            f"a {what} job takes exactly one argument (the request object), got {len(args)} positional and "
            f"{sorted(kwargs)} keyword arguments"
        )
    return args[0]


def _job_id_in(args: tuple[Any, ...]) -> str | None:
    """The try a malformed request is about, when at least its key is readable."""
    if len(args) == 1 and isinstance(args[0], Mapping):
        try:
            return job_id_for(TaskKey.from_dict(args[0].get("key")))
        except TaskKeyError:
            return None
    return None


class _PastDeadline(stop_base):
    """Stop when the next wait would end past the deadline: no attempt starts after it."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep > self._deadline


# --- the job functions -----------------------------------------------------------------------------------


class Dispatcher:
    """The two job functions (:meth:`launch`, :meth:`delete`) and the policy they share.

    ``api`` is a ``CoreV1Api`` (see :func:`bridge.kube_client.core_v1`). ``sleep`` and ``clock`` exist for
    tests that check the retry policy without waiting.
    """

    def __init__(
        self,
        config: KubeConfig,
        redis: Redis,
        api: Any,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._redis = redis
        self._api = api
        self._sleep = sleep
        self._clock = clock
        self._namespace = config.namespace
        self._keys = Keys(config.key_prefix, config.result_stream)
        self._records = TryRecords(redis, self._keys, config.record_ttl_seconds)
        self._request_args = request_args(config)
        # Told about every Redis error a job rides out (the worker quiets its reaper: heartbeats are stale).
        self.on_redis_error: Callable[[], None] = lambda: None

    def handlers(self) -> dict[str, Callable[..., dict[str, Any]]]:
        """The allowlist: job function symbol → the method that runs it."""
        return {LAUNCH_POD: self.launch, DELETE_POD: self.delete}

    # launch

    def launch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Create the pod of one try (the job's only argument is a LaunchRequest payload); never raises for
        task input. Returns a small JSON-able summary that rq keeps as the job result."""
        job = get_current_job()
        # One deadline for the whole job: every API call and every wait for Redis counts against it.
        deadline = self._clock() + self._config.dispatch_deadline_seconds
        try:
            request = LaunchRequest.from_payload(
                _single_argument(args, kwargs, "launch"), self._config.signing_key
            )
            if job is not None and job.id != request.job_id:
                raise MessageError(
                    f"launch request field 'key' is try {request.job_id}, but it came in job {job.id}; a "
                    "launch job's id must be the job id of its key (enqueue it with the bridge's executor)"
                )
        except MessageError as exc:
            job_id = job.id if job is not None else _job_id_in(args)
            log.error("rejected launch job %s: %s", job_id or "(unknown try)", exc)
            if job_id is not None:
                self.fail_queued(job_id, "InvalidMessage", str(exc), deadline=deadline)
            return {"job_id": job_id, "result": "failed", "reason": "InvalidMessage", "message": str(exc)}
        expired = self._expiry_problem(request)
        if expired is not None:  # a try whose record is gone gets no new one: it was never launched here
            log.error("refused launch job %s: %s", request.job_id, expired)
            self.fail_queued(request.job_id, "Expired", expired, deadline=deadline)
            result = {"job_id": request.job_id, "result": "failed", "reason": "Expired", "message": expired}
        else:
            result = self._launch(request, deadline)
        if request.secret_env:  # whatever the answer, the values are of no more use in Redis
            self._with_redis(self._redis.delete, self._keys.launch_secret(request.job_id), deadline=deadline)
        return result

    def _expiry_problem(self, request: LaunchRequest) -> str | None:
        """Why a request is too old to act on: once its try record has expired, a replayed request (signed
        or not) would launch the try again, so nothing older than ``record_ttl_seconds`` is launched."""
        ttl = self._config.record_ttl_seconds
        try:
            enqueued = datetime.fromisoformat(request.enqueued_at)
        except ValueError:
            if self._config.signing_key is None and not request.enqueued_at:
                return None  # unsigned requests from tools that do not stamp them stay accepted
            return (
                f"launch request field 'enqueued_at' is {request.enqueued_at!r}, not an ISO 8601 time; it "
                "cannot be checked against record_ttl_seconds, so it was not launched"
            )
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - enqueued).total_seconds()
        if age > ttl:
            return (
                f"launch request enqueued at {request.enqueued_at} is {age:.0f} s old, older than "
                f"[bridge] record_ttl_seconds = {ttl}; a replayed or forgotten request is never launched"
            )
        return None

    def _launch(self, request: LaunchRequest, deadline: float) -> dict[str, Any]:
        key, name = request.key, request.job_id
        record = self._with_redis(self._records.get, name, deadline=deadline)
        if record is not None and record.revoked:
            # an earlier run of this job (requeued by a reaper) may have created the pod: look for it
            return self._revoke(key, "revoked before its pod was created", deadline)
        if record is not None and STATE_RANK[record.state] >= STATE_RANK[TryState.LAUNCHED]:
            log.info("job %s: skipped, the try is already %s", name, record.state.value)
            return {"job_id": name, "result": "skipped", "state": record.state.value}
        try:
            pod = _build_pod(request, self._config)
        except UserInputError as exc:
            return self._fail(key, "InvalidPodSpec", str(exc), deadline)
        started = self._clock()
        try:
            if request.secret_env:
                how = self._create_with_secret(request, pod, deadline)
            else:
                how, _ = self._create(pod, key, deadline)
        except DispatchRejected as exc:
            return self._fail(key, exc.reason, exc.message, deadline)
        except _RevokedMeanwhile:
            return self._revoke(key, "revoked before its pod was created", deadline)
        latest = self._with_redis(self._records.get, name, deadline=deadline)
        if latest is not None and latest.revoked:  # revoked while we were creating it: take it back
            return self._revoke(key, "revoked while its pod was being created", deadline)
        if latest is not None and latest.terminal and how == "created":
            # Another run of this job launched the try, its pod finished and was deleted, and this run
            # then created the name again: a second pod for a finished try must not run.
            log.error(
                "job %s: duplicate launch: pod %s was created for a try that is already %s; deleting it",
                name,
                name,
                latest.state.value,
            )
            try:
                gone = self._delete_pod(name, key, deadline)
            except DispatchRejected as exc:
                log.error("job %s: could not delete the duplicate pod %s: %s", name, name, exc.message)
                gone = f"could not be deleted: {exc.message}"
            return {"job_id": name, "result": "duplicate", "pod": name, "message": f"pod {name} {gone}"}
        self._with_redis(
            self._records.advance,
            TryRecord(key, TryState.LAUNCHED, pod=name, namespace=self._namespace),
            deadline=deadline,
        )
        elapsed_ms = (self._clock() - started) * 1000
        log.info("job %s: pod %s %s in %.0f ms (%s)", name, name, how, elapsed_ms, key_text(key))
        return {"job_id": name, "result": "launched", "pod": name, "namespace": self._namespace, "how": how}

    def _create(self, pod: dict[str, Any], key: TaskKey, deadline: float) -> tuple[str, str | None]:
        """Create ``pod``: ("created" or "already existed" (this try's pod), its uid if known), else
        :class:`DispatchRejected`."""
        name = pod["metadata"]["name"]
        try:
            response = self._call(
                f"create pod {name}",
                lambda args: self._api.create_namespaced_pod(
                    self._namespace, pod, _preload_content=False, **args
                ),
                deadline,
            )
        except ApiException as exc:
            if exc.status != 409:
                raise DispatchRejected(
                    "Rejected", f"the API server rejected pod {name} (HTTP {exc.status}): {_api_message(exc)}"
                ) from None
        else:
            return "created", _uid(_read_json(response))
        return self._check_existing(name, key, deadline)

    def _read_pod(self, name: str, deadline: float) -> Any:
        return _read_json(
            self._call(
                f"read pod {name}",
                lambda args: self._api.read_namespaced_pod(
                    name, self._namespace, _preload_content=False, **args
                ),
                deadline,
            )
        )

    def _check_existing(self, name: str, key: TaskKey, deadline: float) -> tuple[str, str | None]:
        """A 409: launched (and the pod's uid) if the pod holding the name is this try's, else NameConflict.

        The name is fixed per try, so a pod that cannot be read (the API is failing) is taken for this
        try's: failing the try would leave its pod running unrecorded. Only a pod shown to belong to
        something else is a NameConflict.
        """
        try:
            pod = self._read_pod(name, deadline)
        except DispatchRejected as exc:
            return self._unverified(name, exc.message), None
        except ApiException as exc:
            if exc.status != 404:
                return self._unverified(name, _describe(exc)), None
            record = self._with_redis(self._records.get, name, deadline=deadline)
            if record is not None and STATE_RANK[record.state] >= STATE_RANK[TryState.LAUNCHED]:
                return "already existed", None
            raise DispatchRejected(
                "NameConflict",
                f"pod {name} existed when this try was launched but was deleted before it could be checked; "
                "retry the task",
            ) from None
        problem = ownership_problem(pod, key, self._config.key_prefix)
        if problem is not None:
            raise DispatchRejected("NameConflict", problem)
        return "already existed", _uid(pod)

    @staticmethod
    def _unverified(name: str, why: str) -> str:
        log.warning(
            "pod %s already exists and could not be read to check its owner (%s); taking it for this try's "
            "pod, whose name it has",
            name,
            why,
        )
        return "already existed (owner not verified)"

    # the launch Secret

    def _create_with_secret(self, request: LaunchRequest, pod: dict[str, Any], deadline: float) -> str:
        """Create the try's Secret from its launch-secret hash, then its pod, then make the pod own the
        Secret; "created" or "already existed" as :meth:`_create`, else :class:`DispatchRejected` (or
        :class:`_RevokedMeanwhile`)."""
        key, name = request.key, request.job_id
        values = self._with_redis(self._launch_secret_values, name, deadline=deadline)
        if not all(variable in values for variable in request.secret_env):
            return self._launched_without_secret(request, deadline)
        secret = build_launch_secret(
            key, {variable: values[variable] for variable in request.secret_env}, self._config
        )
        try:
            self._put_secret(secret, key, deadline)
        except DispatchRejected as exc:
            if exc.reason != "NameConflict":  # a create that timed out may have made it on the server
                self._delete_secret(name, key, deadline)
            raise
        try:
            how, uid = self._create(pod, key, deadline)
        except DispatchRejected:
            self._delete_secret(name, key, deadline)  # no pod will ever read it
            raise
        if uid is None:
            log.warning(
                "job %s: the uid of pod %s is unknown, so Secret %s is not owned by it; the watcher deletes "
                "the Secret once the pod ends",
                name,
                name,
                name,
            )
        else:
            self._own_secret(name, uid, deadline)
        return how

    def _launch_secret_values(self, job_id: str) -> dict[str, bytes]:
        raw: Mapping[Any, Any] = self._redis.hgetall(self._keys.launch_secret(job_id))
        return {
            decode_text(variable, replace=True): value if isinstance(value, bytes) else str(value).encode()
            for variable, value in raw.items()
        }

    def _launched_without_secret(self, request: LaunchRequest, deadline: float) -> str:
        """The launch-secret hash is gone: launched if this try's pod exists (another run of this job
        created it, then deleted the hash) or its record says so; revoked if it was; else the values
        expired and the try fails."""
        key, name = request.key, request.job_id
        try:
            pod = self._read_pod(name, deadline)
        except ApiException as exc:
            if exc.status != 404:
                raise DispatchRejected("Rejected", f"pod {name} cannot be read: {_describe(exc)}") from None
        else:
            problem = ownership_problem(pod, key, self._config.key_prefix)
            if problem is not None:
                raise DispatchRejected("NameConflict", problem)
            uid = _uid(pod)
            if uid is not None:  # the run that created it may have died before this
                self._own_secret(name, uid, deadline)
            return "already existed"
        # No pod: another run may have launched it and the pod ended and went, or the try was revoked
        # meanwhile (the revoke deleted the hash).
        record = self._with_redis(self._records.get, name, deadline=deadline)
        if record is not None and record.revoked:
            raise _RevokedMeanwhile
        if record is not None and STATE_RANK[record.state] >= STATE_RANK[TryState.LAUNCHED]:
            return "already existed"
        self._delete_secret(name, key, deadline)  # an earlier run may have made it before it died
        raise DispatchRejected(
            "LaunchSecretExpired",
            f"the secret env values of this try ({', '.join(request.secret_env)}) are no longer in Redis: "
            "the launch waited for a dispatcher longer than the executor's launch_secret_ttl_seconds "
            "allowed, or its values were already used; no pod was created. Queue the task again (it brings "
            "fresh values), and if launches often wait this long, add dispatchers or raise "
            "launch_secret_ttl_seconds in the executor's configuration",
        )

    def _put_secret(self, secret: dict[str, Any], key: TaskKey, deadline: float) -> None:
        """Create the Secret; one of this try's left by an earlier run of the job gets the current values.

        Errors name the API's status and reason only: the body of a refused write may quote the values.
        """
        name = secret["metadata"]["name"]
        try:
            _read_json(
                self._call(
                    f"create Secret {name}",
                    lambda args: self._api.create_namespaced_secret(
                        self._namespace, secret, _preload_content=False, **args
                    ),
                    deadline,
                    reveal=False,
                )
            )
            return
        except ApiException as exc:
            if exc.status != 409:
                raise DispatchRejected(
                    "Rejected", f"the API server rejected Secret {name} ({_status(exc)})"
                ) from None
        try:
            existing = self._read_secret(name, deadline)
        except ApiException as exc:
            raise DispatchRejected(
                "Rejected", f"Secret {name} exists and cannot be read: {_describe(exc)}"
            ) from None
        problem = ownership_problem(existing, key, self._config.key_prefix, kind="Secret")
        if problem is not None:
            raise DispatchRejected("NameConflict", problem)
        try:
            self._patch_secret(
                name, [{"op": "add", "path": "/data", "value": secret["data"]}], "update", deadline
            )
        except ApiException as exc:
            raise DispatchRejected(
                "Rejected", f"Secret {name} exists and could not be updated ({_status(exc)})"
            ) from None

    def _read_secret(self, name: str, deadline: float) -> Any:
        return _read_json(
            self._call(
                f"read Secret {name}",
                lambda args: self._api.read_namespaced_secret(
                    name, self._namespace, _preload_content=False, **args
                ),
                deadline,
            )
        )

    def _patch_secret(self, name: str, patch: list[dict[str, Any]], what: str, deadline: float) -> None:
        """Apply a JSON patch to Secret ``name``; errors never echo the body (it may hold the values)."""
        _read_json(
            self._call(
                f"{what} Secret {name}",
                lambda args: self._api.patch_namespaced_secret(
                    name, self._namespace, patch, _preload_content=False, **args
                ),
                deadline,
                reveal=False,
            )
        )

    def _own_secret(self, name: str, uid: str, deadline: float) -> None:
        """Make pod ``name`` (``uid``) the owner of its Secret, so that deleting the pod deletes the Secret.

        A failure is only logged: the pod runs, and the watcher deletes the Secret once the pod ends.
        """
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
        patch = [{"op": "add", "path": "/metadata/ownerReferences", "value": owner}]
        try:
            self._patch_secret(name, patch, "set the owner of", deadline)
        except DispatchRejected as exc:
            log.warning("job %s: %s; the watcher deletes the Secret once the pod ends", name, exc.message)
        except ApiException as exc:
            if exc.status != 404:  # 404: the pod ended already and the watcher deleted it
                log.warning(
                    "job %s: could not make pod %s own Secret %s (%s); the watcher deletes it once the pod "
                    "ends",
                    name,
                    name,
                    name,
                    _status(exc),
                )

    def _delete_secret(self, name: str, key: TaskKey, deadline: float) -> None:
        """Delete the try's Secret if it is this try's (404 is fine); a failure is logged, it never fails
        the job. The delete names the uid that was checked, so a Secret made anew meanwhile stays."""
        try:
            secret = self._read_secret(name, deadline)
            problem = ownership_problem(secret, key, self._config.key_prefix, kind="Secret")
            if problem is not None:
                log.warning("job %s: Secret %s left alone: %s", name, name, problem)
                return
            options = V1DeleteOptions(preconditions=V1Preconditions(uid=_uid(secret)))
            _read_json(
                self._call(
                    f"delete Secret {name}",
                    lambda args: self._api.delete_namespaced_secret(
                        name, self._namespace, body=options, _preload_content=False, **args
                    ),
                    deadline,
                )
            )
        except DispatchRejected as exc:
            log.error("job %s: could not delete Secret %s: %s", name, name, exc.message)
        except ApiException as exc:
            if exc.status == 409:  # the precondition: another Secret holds the name now
                log.info("job %s: Secret %s was replaced meanwhile; left alone", name, name)
            elif exc.status != 404:
                log.error("job %s: could not delete Secret %s: %s", name, name, _describe(exc))

    # delete

    def delete(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Delete a revoked try's pod (404 is fine) and record it revoked; never raises for task input."""
        deadline = self._clock() + self._config.dispatch_deadline_seconds
        try:
            request = DeleteRequest.from_payload(
                _single_argument(args, kwargs, "delete"), self._config.signing_key
            )
            if request.namespace != self._namespace:
                raise MessageError(
                    f"delete request field 'namespace' is {request.namespace!r}, but this bridge manages "
                    f"pods only in [kubernetes] namespace = {self._namespace!r}"
                )
        except MessageError as exc:
            log.error("rejected delete job: %s", exc)
            return {"result": "failed", "reason": "InvalidMessage", "message": str(exc)}
        return self._revoke(request.key, request.reason, deadline)

    def _revoke(self, key: TaskKey, why: str, deadline: float) -> dict[str, Any]:
        name = job_id_for(key)
        try:
            message = f"{why}; pod {name} {self._delete_pod(name, key, deadline)}"
        except DispatchRejected as exc:  # the executor asked to stop: it is told, and so is the operator
            log.error("job %s: could not delete pod %s: %s", name, name, exc.message)
            message = f"{why}; pod {name} could not be deleted: {exc.message}"
        outcome = Outcome(
            key, TryState.REVOKED, reason="Revoked", message=message, pod=name, namespace=self._namespace,
            source=SOURCE,
        )  # fmt: skip
        self._with_redis(
            self._records.advance,
            TryRecord(key, TryState.REVOKED, reason="Revoked", message=message),
            outcome,
            deadline=deadline,
        )
        log.info("job %s: revoked (%s)", name, message)
        return {"job_id": name, "result": "revoked", "message": message}

    def _delete_pod(self, name: str, key: TaskKey, deadline: float) -> str:
        """Delete this try's pod; "deleted" or "was already gone". A pod of another try is left alone.

        The try's launch Secret, if there is one, goes too: a run that died between creating the Secret
        and the pod left a Secret no pod owns (and one the pod owns is not left to the garbage collector).
        """
        try:
            pod = self._read_pod(name, deadline)
            problem = ownership_problem(pod, key, self._config.key_prefix)
            if problem is not None:
                raise DispatchRejected("NameConflict", f"not deleted: {problem}")
            _read_json(
                self._call(
                    f"delete pod {name}",
                    lambda args: self._api.delete_namespaced_pod(
                        name,
                        self._namespace,
                        body=V1DeleteOptions(**self._config.delete_option_kwargs),
                        _preload_content=False,
                        **args,
                    ),
                    deadline,
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise DispatchRejected("Rejected", _describe(exc)) from None
            gone = "was already gone"
        else:
            gone = "deleted"
        self._delete_secret(name, key, deadline)
        return gone

    # failing a try

    def fail_queued(self, job_id: str, reason: str, message: str, *, deadline: float | None = None) -> bool:
        """Fail the try ``job_id`` if it is still queued (a job that can never launch it); True if it was."""
        deadline = self._clock() + REDIS_RETRY_SECONDS if deadline is None else deadline
        record = self._with_redis(self._records.get, job_id, deadline=deadline)
        if record is None or record.state is not TryState.QUEUED:
            return False
        self._fail(record.key, reason, message, deadline)
        return True

    def _fail(self, key: TaskKey, reason: str, message: str, deadline: float) -> dict[str, Any]:
        name = job_id_for(key)
        outcome = Outcome(
            key, TryState.FAILED, reason=reason, message=message, namespace=self._namespace, source=SOURCE
        )
        self._with_redis(
            self._records.advance,
            TryRecord(key, TryState.FAILED, reason=reason, message=message),
            outcome,
            deadline=deadline,
        )
        log.warning("job %s: task failed, %s: %s", name, reason, message)
        return {"job_id": name, "result": "failed", "reason": reason, "message": message}

    # policies

    def _call(
        self, what: str, request: Callable[[dict[str, Any]], T], deadline: float, *, reveal: bool = True
    ) -> T:
        """Run one API request under the retry policy, within the job's ``deadline``; the last error is
        raised once it gives up.

        Transient errors that outlast the policy become :class:`DispatchRejected` ("ApiUnavailable"); an
        ApiException that is not transient is raised as is, for the caller to judge (409, 404, 422 ...).
        Without ``reveal`` (a request that carries secret values) errors are described by status and
        reason only, never by the response body.
        """
        describe = _describe if reveal else _status
        started = self._clock()
        attempts = 0
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_any(
                stop_after_attempt(self._config.task_publish_max_retries + 1),
                _PastDeadline(deadline, self._clock),
            ),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda state: log.warning(
                "%s: attempt %d failed (%s), retrying in %.2f s",
                what,
                state.attempt_number,
                describe(state.outcome.exception() or Exception("?")) if state.outcome else "?",
                state.upcoming_sleep,
            ),
        )
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    return request(self._attempt_args(deadline))
        except Exception as exc:
            if not _transient(exc):
                raise
            limit = self._config.task_publish_max_retries
            raise DispatchRejected(
                "ApiUnavailable",
                f"could not {what} in namespace {self._namespace}: {attempts} attempt(s) in "
                f"{self._clock() - started:.1f} s failed (at most {limit} retries within "
                f"dispatch_deadline_seconds = {self._config.dispatch_deadline_seconds}); last error: "
                f"{describe(exc)}",
            ) from None
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _attempt_args(self, deadline: float) -> dict[str, Any]:
        """Request arguments with the timeout cut so that one attempt cannot outlive the deadline."""
        args = dict(self._request_args)
        remaining = max(deadline - self._clock(), 0.5)
        timeout = args.get("_request_timeout")
        if isinstance(timeout, tuple):
            args["_request_timeout"] = tuple(min(part, remaining) for part in timeout)
        elif isinstance(timeout, int | float):
            args["_request_timeout"] = min(timeout, remaining)
        return args

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        retry_after = _retry_after(state.outcome.exception() if state.outcome else None)
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        return backoff_seconds(state.attempt_number)

    def _with_redis(self, operation: Callable[..., T], *args: Any, deadline: float) -> T:
        """Run an idempotent Redis operation, riding out a restart until ``deadline``; then the error is
        raised (the worker hands the job back to its queue)."""
        pause = 0.1
        while True:
            try:
                return operation(*args)
            except REDIS_TRANSIENT as exc:
                self.on_redis_error()
                if self._clock() + pause > deadline:
                    raise
                log.warning("Redis unavailable (%s), retrying in %.1f s", exc, pause)
                self._sleep(pause)
                pause = min(pause * 2, 2.0)


def _build_pod(request: LaunchRequest, config: KubeConfig) -> dict[str, Any]:
    """The pod of a request; the untrusted executor_config is parsed again here, with our own config."""
    return build_worker_pod(
        request.key,
        request.argv,
        parse_executor_config(request.pod_config),
        config,
        secret_env=request.secret_env,
    )


def _uid(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    uid = metadata.get("uid") if isinstance(metadata, dict) else None
    return uid if isinstance(uid, str) and uid else None


# --- the worker --------------------------------------------------------------------------------------------


def default_worker_name() -> str:
    """``kbridge-dispatcher-<host>-<pid>-<random>``: the suffix keeps a restarted container with the same
    host name and pid from inheriting the name (and the unfinished jobs) of its dead predecessor."""
    return f"kbridge-dispatcher-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class DispatcherWorker(SimpleWorker):
    """An rq ``SimpleWorker`` on one queue with the bridge's allowlist, heartbeat and reaper.

    rq's own registry cleaning keeps its ten-minute pace; the reaper runs every lease/4 s (before rq's
    cleaning at start-up, so a dead dispatcher's job is requeued rather than failed as abandoned).
    """

    def __init__(
        self,
        config: KubeConfig,
        redis: Redis,
        dispatcher: Dispatcher,
        *,
        queue: str | None = None,
        name: str | None = None,
    ) -> None:
        self._lease_seconds = config.dispatcher_lease_seconds  # read by rq's constructor (dequeue timeout)
        keys = Keys(config.key_prefix, config.result_stream)
        queue_name = queue or config.queue_name
        super().__init__(
            [queue_name],
            name=name or default_worker_name(),
            connection=redis,
            job_class=job_class_with(dispatcher.handlers()),
            serializer=SERIALIZER,
        )
        self.dispatcher = dispatcher
        self.queue_name = queue_name
        self.stopping = False  # a SIGTERM/SIGINT asked for a warm shutdown
        self.reaper = Reaper(redis, keys, queue_name, self._lease_seconds)
        self._keys = keys
        self._config = config
        self._liveness = Heartbeat(redis, keys, self.name, self._lease_seconds, on_error=self.reaper.hold_off)
        dispatcher.on_redis_error = self.reaper.hold_off
        self._requeue_job_id: str | None = None  # the job that failed on Redis, to hand back
        self.push_exc_handler(self._fail_try_of_failed_job)  # type: ignore[no-untyped-call]

    @property
    def dequeue_timeout(self) -> int:
        """An idle BLMOVE waits at most lease/8 s (rq wants whole seconds), so the reaper, checked after
        each wait, runs close to its lease/4 s pace."""
        return max(1, int(self._lease_seconds / 8))

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """rq's loop; the signal handlers rq installs are put back afterwards (the worker may be embedded)."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        saved = (
            {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
        )
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        self._claim_name()
        super().bootstrap(*args, **kwargs)
        self._liveness.start()
        self.reaper.hold_off()  # just connected: others' heartbeats may be stale after an outage

    def _claim_name(self) -> None:
        """Refuse a name a live dispatcher uses; take over the leftovers of a dead one with that name."""
        age = heartbeat_age(self.connection, self._keys, self.name)
        if age is not None and age <= self._lease_seconds:
            raise UserInputError(
                f"dispatcher name {self.name!r} is in use: a dispatcher with it beat {age:.1f} s ago; give "
                f"this one another --name, or stop the other and wait {self._lease_seconds} s "
                "(dispatcher_lease_seconds)"
            )
        if age is not None:  # our predecessor died: hand its jobs back before we take the name
            self.reaper.reap()
        if self.connection.exists(self.key) and not self.connection.hexists(self.key, "death"):
            self.register_death()  # type: ignore[no-untyped-call]  # lets rq register the name again

    def teardown(self) -> None:
        self._liveness.stop()
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            self.log.warning("Worker %s: could not register its death: %s", self.name, exc)

    def request_stop(self, signum: Any, frame: Any) -> None:
        if not self.stopping:
            log.info("dispatcher %s: stop requested, finishing the current job first", self.name)
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    @property
    def should_run_maintenance_tasks(self) -> bool:
        # rq's cleaning would fail the abandoned jobs the reaper hands back, so it waits for a first pass.
        return bool(self.reaper.due or (self.reaper.has_run and super().should_run_maintenance_tasks))

    def run_maintenance_tasks(self) -> None:
        # A Redis outage must not end the worker: the next dequeue backs off and reconnects.
        try:
            if self.reaper.due:
                self.reaper.reap()
            if self.reaper.has_run and super().should_run_maintenance_tasks:
                super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            self.reaper.hold_off()
            self.log.warning("Worker %s: maintenance skipped, Redis error: %s", self.name, exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_TRANSIENT as exc:
            self.reaper.hold_off()
            self.log.warning("Worker %s: Redis unavailable: %s", self.name, exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        try:
            super().heartbeat(timeout)
        except REDIS_TRANSIENT as exc:
            self.reaper.hold_off()
            self.log.warning("Worker %s: Redis unavailable: %s", self.name, exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except RedisError as exc:
            # rq could not record the end of the job; the reaper requeues it once it is older than a lease,
            # and the launch is idempotent.
            self.reaper.hold_off()
            self.log.error("Worker %s: Redis failed around job %s: %s", self.name, job.id, exc)
            self._state = WorkerStatus.IDLE
        finally:
            self._requeue_job_id = None

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        """rq records a failed job as failed; one that failed because Redis did goes back to its queue
        instead (a try whose job is failed but whose record is queued would wait forever)."""
        if self._requeue_job_id is not None and self._requeue_job_id == job.id:
            self._requeue_job_id = None
            self._hand_back(job, queue)
            return
        super().handle_job_failure(job, queue, started_job_registry, exc_string)

    def _hand_back(self, job: Job, queue: Queue) -> None:
        """Requeue ``job`` at the head of its queue, retrying until Redis answers or the job's timeout is
        near; past that the reaper hands it back (its started entry stays)."""
        execution = self.execution
        if execution is None:
            return
        timeout = job.timeout or self._config.job_timeout_seconds
        started = job.started_at or datetime.now(UTC)
        give_up = time.monotonic() + max(timeout - (datetime.now(UTC) - started).total_seconds(), 0.0)
        pause = 0.1
        while True:
            try:
                result = requeue_own_job(self.connection, queue.name, job.id, execution.id)
                self.set_current_job_id(None)
            except REDIS_TRANSIENT as exc:
                self.reaper.hold_off()
                if time.monotonic() + pause > give_up:
                    self.log.error(
                        "Worker %s: could not requeue job %s (%s); the reaper will", self.name, job.id, exc
                    )
                    return
                time.sleep(pause)
                pause = min(pause * 2, REDIS_MAX_PAUSE_SECONDS)
            else:
                self.execution = None
                if result == 1:
                    self.log.warning("Worker %s: Redis failed during job %s: requeued it", self.name, job.id)
                return

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """rq's dequeue, kept alive through Redis outages (rq would end the worker on some of them) and
        through job hashes too broken to load."""
        pause = 1.0
        failed = False
        while True:
            try:
                if failed:  # Redis is back: beat at once, before any reaper judges this dispatcher
                    self._liveness.beat()
                    failed = False
                result: tuple[Job, Queue] | None = super().dequeue_job_and_maintain_ttl(
                    timeout, max_idle_time
                )
            except REDIS_TRANSIENT as exc:
                self.reaper.hold_off()
                self.log.error("Worker %s: Redis unavailable (%s), retrying in %.0f s", self.name, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, REDIS_MAX_PAUSE_SECONDS)
                failed = True
            except Exception as exc:
                job_id = getattr(exc, "job_id", None)
                if not isinstance(job_id, str):  # not about one job (StopRequested ...)
                    raise
                self._discard_unreadable_job(job_id, exc)
            else:
                return result

    def _discard_unreadable_job(self, job_id: str, exc: Exception) -> None:
        """A job hash rq cannot even load: fail it by hand (rq would stop the worker) and fail its try."""
        message = f"rq job {Keys.rq_job(job_id)} cannot be read ({type(exc).__name__}: {exc}); it was not run"
        self.log.error("Worker %s: %s", self.name, message)
        try:
            with self.connection.pipeline() as pipe:
                pipe.lrem(Keys.rq_intermediate(self.queue_name), 1, job_id)
                pipe.hset(Keys.rq_job(job_id), "status", "failed")
                pipe.zadd(
                    Keys.rq_failed(self.queue_name), {job_id: time.time() + self._config.record_ttl_seconds}
                )
                pipe.execute()
            self.dispatcher.fail_queued(job_id, "InvalidMessage", message)
        except RedisError as redis_error:
            self.log.error("Worker %s: could not fail job %s: %s", self.name, job_id, redis_error)

    def _fail_try_of_failed_job(
        self, job: Job, exc_type: type[BaseException], exc: BaseException, _tb: Any
    ) -> bool:
        """rq exception handler: a job that raised (unknown function, undecodable data, a dispatcher bug,
        abandoned) will not launch its try, so a still-queued try is failed with the reason."""
        if isinstance(exc, REDIS_TRANSIENT):  # the launch may yet happen: the job goes back to its queue
            self._requeue_job_id = job.id
            return True
        reason = (
            "InvalidMessage"
            if isinstance(exc, UnknownJobFunction | DeserializationError)
            else "DispatchError"
        )
        try:
            self.dispatcher.fail_queued(job.id, reason, str(exc) or exc_type.__name__)
        except RedisError as redis_error:
            self.log.error("Worker %s: could not fail the try of job %s: %s", self.name, job.id, redis_error)
        return True


# --- command line ------------------------------------------------------------------------------------------


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name]


def build_worker(
    config: KubeConfig, *, queue: str | None = None, name: str | None = None, redis: Redis | None = None
) -> DispatcherWorker:
    """A dispatcher worker with its own Redis client and Kubernetes API client, as ``kbridge dispatcher``
    runs it."""
    try:
        api = core_v1(config)
    except ConfigException as exc:
        where = "in-cluster service account" if config.in_cluster else f"kubeconfig {config.config_file}"
        raise UserInputError(
            f"cannot load Kubernetes credentials ({where}): {exc}; outside a cluster set [kubernetes] "
            "in_cluster = False and config_file"
        ) from None
    redis = redis if redis is not None else redis_from_config(config)
    return DispatcherWorker(config, redis, Dispatcher(config, redis, api), queue=queue, name=name)


def main(argv: list[str]) -> int:
    """Launch worker pods for queued task tries (an rq worker; SIGTERM finishes the current job first)."""
    parser = argparse.ArgumentParser(prog="kbridge dispatcher", description=main.__doc__)
    parser.add_argument("--config", help="INI file (default: $KBRIDGE_CONFIG, else the built-in defaults)")
    parser.add_argument("--queue", help="rq queue to take launch jobs from (default: [bridge] queue_name)")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--name", help="worker name (default: kbridge-dispatcher-<host>-<pid>-<random>)")
    options = parser.parse_args(argv)
    config = load_config(options.config)
    if options.queue is not None:
        try:
            QUEUE_NAME.parse(options.queue)
        except ValueError as exc:
            raise UserInputError(f"--queue {options.queue!r}: {exc}") from None
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # rq writes four INFO lines per job; at hundreds of pods per second that is most of a dispatcher's
    # output and a measurable share of its CPU. Our own line per launch says what matters, so rq speaks
    # up only for warnings unless DEBUG is asked for.
    rq_level = "DEBUG" if config.log_level == "DEBUG" else max("WARNING", config.log_level, key=_level)
    try:
        worker = build_worker(config, queue=options.queue, name=options.name)
        log.info("dispatcher %s: launching pods for queue %s", worker.name, worker.queues[0].name)
        worker.work(burst=options.burst, logging_level=rq_level)
    except RedisConnectionError as exc:
        print(
            f"kbridge dispatcher: cannot reach Redis at {redact_url(config.redis_url)}: {exc}",
            file=sys.stderr,
        )
        return 1
    # rq leaves its loop on a burst's end, a stop request, or an error it already logged.
    return 0 if options.burst or worker.stopping else 1
