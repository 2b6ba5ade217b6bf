"""``kbridge watcher``: turn the bridge's worker pods into task outcomes in Redis, surviving everything.

Why it is built this way:

* **One acting watcher per namespace.** Watchers compete for a lease (:mod:`workers.leader`); the holder
  acts, the others stand by and take over within one lease when it stops or dies.
* **Nothing is lost across restarts.** Every applied watch event moves the try record, appends the
  outcome and stores the event's resourceVersion as the checkpoint in *one* Redis script
  (:meth:`bridge.records.TryRecords.advance`), so a new leader resumes exactly where the last one
  stopped. Bookmarks move the checkpoint while nothing changes.
* **Nothing is reported twice.** Records only move forward and the stream is appended only when one
  moves, so replays (a resumed watch, a re-list) cost no duplicate outcome.
* **410 Gone is routine.** When the checkpoint is too old (an ERROR event with code 410, or an HTTP 410
  when the watch opens), the watcher lists every pod (paged), applies each one, and fails the launched
  tries whose pod is no longer there (``PodVanished``), then watches from the list's resourceVersion.
* **A silent connection cannot hang it.** Each watch asks the server to end it within the lease (or the
  sweep interval), reads have a client-side timeout (``[kubernetes] request_timeout_seconds``) and the
  API client turns on TCP keepalive; a read that times out just re-opens the watch from the checkpoint.
* **Pending pods cannot wait forever.** Every few seconds a sweep lists the pods that are not Running and
  applies them with the pending timeout (a replayed old event never trips the timeout: only the current
  state, read by the sweep, does). The same sweep retries deleting or labelling finished pods.
* **Finished pods are cleaned up** per ``delete_worker_pods`` / ``delete_worker_pods_on_failure``, on a few
  threads so that a slow delete never holds up the events behind it; a kept pod gets the label
  ``kbridge/done=true`` and drops out of the watch. A pod the watcher failed while it was still Pending (a
  fatal waiting reason, the pending timeout) is always deleted: kept, it could start the task after the try
  was already failed. Its waiting message is in the outcome. A pod is never deleted while its try's launch
  job is still queued or running: that run could create the freed name again; the sweep deletes it once
  the job has ended. A finished pod's launch Secret (annotation ``kbridge/launch-secret``: the try's own
  secret env values) is deleted first, whether the pod is deleted or kept: a pod kept for debugging must not
  keep a live token around; while that delete fails the pod is neither deleted nor labelled (either would
  drop the only pointer to a Secret the pod may not own), and the sweep retries. The Secret of a pod
  deleted by someone else (by hand, evicted) goes when its deletion is seen. A Secret is deleted only
  after a read shows it is this try's, and only with that uid as a precondition.
* **Errors never stop it.** Redis or API failures back off and retry; a pod without readable task-key
  annotations is skipped with a warning, once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import urllib3
import yaml
from kubernetes.client import V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines
from redis import Redis
from redis.exceptions import RedisError

from bridge.config import KubeConfig, load_config
from bridge.connection import redis_from_config
from bridge.errors import UserInputError
from bridge.kube_client import backoff_seconds, core_v1, request_args
from bridge.naming import DNS1123_LABEL_RULE, is_dns1123_label, task_key_from_annotations
from bridge.protocol import STREAMED_STATES, Keys, TryState, decode_text, job_id_for
from bridge.records import TryRecords
from bridge.task_key import TaskKey, TaskKeyError
from bridge.worker_pod import instance_selector, launch_secret_of, ownership_problem
from workers.leader import Lease
from workers.pod_state import PodReport, is_deleting, pod_report, vanished_report

log = logging.getLogger(__name__)

DONE_LABEL = "kbridge/done"
LIST_PAGE_SIZE = 500
SWEEP_SECONDS = 5.0
# Deleting or labelling a finished pod is an API call (tens of ms on a busy cluster); done inline it would
# hold up every event behind it, so a few threads do it while the watch loop keeps reading.
CLEANUP_THREADS = 4
# Phases the sweep looks at: Pending pods (timeouts) and finished ones not yet cleaned up.
SWEEP_FIELD_SELECTOR = "status.phase!=Running"
STANDBY_POLL_MAX_SECONDS = 1.0
_LATER = "; the sweep retries"


class _Expired(Exception):
    """The watch position is gone (410, or a resourceVersion the server does not know): re-list."""


class _WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


@dataclass
class WatcherStats:
    """Counters for logs and tests: what this watcher did while it led."""

    terms: int = 0  # times it became the leader
    events: int = 0  # watch events applied
    relists: int = 0
    moves: int = 0  # try records it moved to a new state
    sweeps: int = 0


class _Backoff:
    """Exponential backoff with jitter, so several watchers do not retry in step."""

    def __init__(self) -> None:
        self._attempt = 0

    def delay(self) -> float:
        self._attempt += 1
        return backoff_seconds(self._attempt)

    def reset(self) -> None:
        self._attempt = 0


class Watcher:
    """Watches the worker pods of one namespace and reports them; :meth:`run` until :meth:`stop`.

    ``redis`` and ``api`` (a ``CoreV1Api``) default to clients built from ``config``.
    """

    def __init__(
        self,
        config: KubeConfig,
        *,
        namespace: str | None = None,
        name: str | None = None,
        redis: Redis | None = None,
        api: Any = None,
    ) -> None:
        self.config = config
        self.namespace = namespace or config.namespace
        self.name = name or default_watcher_name()
        self.stats = WatcherStats()
        self._redis = redis if redis is not None else redis_from_config(config)
        self._api = api if api is not None else core_v1(config)
        keys = Keys(config.key_prefix, config.result_stream)
        self._records = TryRecords(self._redis, keys, config.record_ttl_seconds)
        self._checkpoint_key = keys.watcher_checkpoint(self.namespace)
        self.lease = Lease(
            self._redis, keys.watcher_leader(self.namespace), self.name, config.watcher_lease_seconds
        )
        self._selector = f"{instance_selector(config)},{DONE_LABEL}!=true"
        self._request_args = request_args(config)
        self._fatal_reasons = frozenset(config.worker_pod_pending_fatal_container_state_reasons)
        pending_timeout = config.worker_pods_pending_timeout
        self._sweep_seconds = (
            max(1.0, min(SWEEP_SECONDS, pending_timeout / 2)) if pending_timeout else SWEEP_SECONDS
        )
        self._watch_seconds = max(
            1, min(config.watch_timeout_seconds, config.watcher_lease_seconds, math.ceil(self._sweep_seconds))
        )
        self._standby_poll = min(STANDBY_POLL_MAX_SECONDS, config.watcher_lease_seconds / 4)
        self._stop = threading.Event()
        self._response: Any = None
        self._position: str | None = None
        self._next_sweep = 0.0
        self._skipped: set[str] = set()  # pods already warned about
        self._cleanup: ThreadPoolExecutor  # one per run(), shut down when it returns
        self._cleaning: set[str] = set()  # pods (and "Secret <name>"s) whose clean-up is queued or running
        self._secret_retries: dict[str, TaskKey] = {}  # launch Secrets of gone pods still to delete
        self._cleaning_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return soon; safe from a signal handler or another thread."""
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()  # wakes the blocked read of the current watch

    def run(self) -> None:
        """Stand by until holding the lease, then act until the lease is lost; repeat until stopped."""
        backoff = _Backoff()
        self._cleanup = ThreadPoolExecutor(CLEANUP_THREADS, thread_name_prefix="kbridge-pod-cleanup")
        log.info(
            "watcher %s started for namespace %s (selector %s)", self.name, self.namespace, self._selector
        )
        try:
            while not self._stop.is_set():
                try:
                    if not self.lease.acquire():
                        self._stop.wait(self._standby_poll)
                        continue
                except RedisError as exc:
                    log.warning("cannot reach Redis to take the lease: %s", exc)
                    self._stop.wait(backoff.delay())
                    continue
                backoff.reset()
                self.stats.terms += 1
                log.info("watcher %s now leads namespace %s", self.name, self.namespace)
                self.lease.start_renewing()
                try:
                    self._lead()
                except Exception:  # a bug must not end the watcher: log it, stand by, try again
                    log.exception("watcher %s failed unexpectedly; retrying", self.name)
                    self._stop.wait(backoff.delay())
                finally:
                    self.lease.release()
                if not self._stop.is_set():
                    log.warning("watcher %s lost the lease of %s: standing by", self.name, self.namespace)
        finally:
            self._cleanup.shutdown(wait=True, cancel_futures=True)
            self.lease.release()
            log.info("watcher %s stopped", self.name)

    def _acting(self) -> bool:
        return not self._stop.is_set() and self.lease.held()

    def _lead(self) -> None:
        """Act while holding the lease. ``_position`` is the version of the last event applied (and
        checkpointed), so whatever interrupts a watch, the next one resumes right after it."""
        backoff = _Backoff()
        self._position = None
        loaded = False
        while self._acting():
            try:
                if not loaded:
                    self._position = self._load_checkpoint()
                    loaded = True
                if self._position is None:
                    self._position = self._relist()
                self._sweep_if_due()
                self._watch(self._position)
                backoff.reset()
            except _Expired as exc:
                log.info("watch position %s expired (%s): re-listing", self._position, exc)
                self._position = None
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch position %s expired (HTTP 410): re-listing", self._position)
                    self._position = None
                    continue
                log.warning("Kubernetes API error %s %s: retrying", exc.status, exc.reason)
                self._stop.wait(backoff.delay())
            except urllib3.exceptions.ReadTimeoutError:
                log.info("the watch was silent for the read timeout: reconnecting from %s", self._position)
            except (urllib3.exceptions.HTTPError, OSError, _WatchError) as exc:
                if not self._stop.is_set():
                    log.warning("Kubernetes API connection problem (%s): retrying", exc)
                    self._stop.wait(backoff.delay())
            except RedisError as exc:
                log.warning("Redis error (%s): retrying", exc)
                self._stop.wait(backoff.delay())

    def _load_checkpoint(self) -> str | None:
        value = self._redis.get(self._checkpoint_key)
        if value is None:
            return None
        return decode_text(value)

    # --- watch -----------------------------------------------------------------------------------------

    def _watch(self, resource_version: str) -> None:
        """One watch from ``resource_version`` until the server ends it, moving ``_position`` along."""
        response = self._api.list_namespaced_pod(
            self.namespace,
            label_selector=self._selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            **self._request_args,
        )
        self._response = response
        try:
            if self._stop.is_set():
                return
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not self._acting():
                    break
                if line:
                    self._on_event(line)
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _on_event(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            version = str(obj["metadata"]["resourceVersion"]) if kind != "ERROR" else ""
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed watch event: %.200s", line)
            return
        if kind == "ERROR":
            code, message = obj.get("code"), str(obj.get("message", ""))
            if code == 410 or (code == 504 and "too large resource version" in message.lower()):
                raise _Expired(f"{code}: {message}")
            raise _WatchError(f"watch ended with error {code}: {message}")
        if kind == "BOOKMARK":
            self._redis.set(self._checkpoint_key, version)
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(obj, deleted=kind == "DELETED", checkpoint=version, pending_timeout=0)
            self.stats.events += 1
        else:
            log.warning("ignoring a watch event of unknown type %r", kind)
            return
        self._position = version

    # --- applying pods ---------------------------------------------------------------------------------

    def _apply(
        self, pod: Mapping[str, Any], *, deleted: bool, checkpoint: str | None, pending_timeout: int
    ) -> None:
        """Report one pod's state (moving the checkpoint along), then clean the pod up if it finished.

        A replayed old event must not trip the pending timeout, so stream events pass 0; only the sweep
        and the re-list, which read the current state, apply the configured timeout.
        """
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        try:
            key = task_key_from_annotations(metadata.get("annotations"))
            if job_id_for(key) != name:
                raise TaskKeyError(f"its name is not the pod name of the task in its annotations ({key})")
        except TaskKeyError as exc:
            self._skip(name, str(exc), checkpoint)
            return
        try:
            report, settled = self._report(pod, name, deleted=deleted, pending_timeout=pending_timeout)
        except (RedisError, ApiException, urllib3.exceptions.HTTPError, OSError):
            raise
        except Exception:  # a pod this code cannot read must not stop every other pod's outcome
            log.exception("cannot read the status of pod %s; skipping it", name)
            self._skip(name, "unreadable status", checkpoint)
            return
        target = (self._checkpoint_key, checkpoint) if checkpoint else None
        if report is None or settled:
            if target is not None:
                self._redis.set(*target)
        else:
            outcome = report.outcome(key, name, self.namespace) if report.state in STREAMED_STATES else None
            if self._records.advance(report.record(key, name, self.namespace), outcome, checkpoint=target):
                self.stats.moves += 1
                if outcome is not None:
                    detail = ": ".join(part for part in (report.reason, report.message) if part)
                    log.info("pod %s: task %s%s", name, report.state.value, f" ({detail})" if detail else "")
        secret = launch_secret_of(pod)
        if report is not None and not deleted and _needs_cleanup(pod, report):
            self._finish_soon(name, key, report, secret)
        elif secret is not None and (deleted or is_deleting(pod)):
            # hand-deleted, evicted ...: its Secret goes now (the pod may not own it, so no garbage
            # collector would), not once the pod is kept or deleted by _finish
            self._delete_secret_soon(secret, key)

    def _report(
        self, pod: Mapping[str, Any], name: str, *, deleted: bool, pending_timeout: int
    ) -> tuple[PodReport | None, bool]:
        """The pod's report, and whether its try is settled already.

        A settled (terminal) record keeps the details of the first terminal report: later events of the
        same pod (the label patch, the deletion) must not overwrite its reason. A deletion the executor
        asked for (the record is flagged revoked) makes a failure a revocation.
        """

        def report_for(revoked: bool) -> PodReport | None:
            return pod_report(
                pod,
                fatal_reasons=self._fatal_reasons,
                pending_timeout_seconds=pending_timeout,
                now=datetime.now(UTC),
                deleted=deleted,
                revoked=revoked,
            )

        report = report_for(False)
        if report is None or not report.terminal:
            return report, False
        record = self._records.get(name)
        if record is None:
            return report, False
        if record.terminal:
            return report, True
        if record.revoked and report.state != TryState.SUCCESS and (deleted or is_deleting(pod)):
            report = report_for(True)
        return report, False

    def _skip(self, name: str, why: str, checkpoint: str | None) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            log.warning("skipping pod %s: %s", name, why)
        if checkpoint:
            self._redis.set(self._checkpoint_key, checkpoint)

    def _finish_soon(self, name: str, key: TaskKey, report: PodReport, secret: str | None) -> None:
        """Queue :meth:`_finish` on the clean-up threads, once per pod at a time."""
        with self._cleaning_lock:
            if name in self._cleaning:
                return
            self._cleaning.add(name)
        self._cleanup.submit(self._finish_guarded, name, key, report, secret)

    def _delete_secret_soon(self, name: str, key: TaskKey) -> None:
        """Queue the deletion of the launch Secret of a pod that is going; the sweep retries a failure."""
        tag = f"Secret {name}"
        with self._cleaning_lock:
            self._secret_retries.pop(name, None)
            if tag in self._cleaning:
                return
            self._cleaning.add(tag)
        self._cleanup.submit(self._delete_secret_guarded, name, key, tag)

    def _delete_secret_guarded(self, name: str, key: TaskKey, tag: str) -> None:
        gone = False
        try:
            gone = self._delete_secret(name, key)
        except Exception:  # a clean-up thread must outlive any one Secret
            log.exception("could not delete launch Secret %s; the sweep retries", name)
        finally:
            with self._cleaning_lock:
                self._cleaning.discard(tag)
                if not gone:
                    self._secret_retries[name] = key

    def _finish_guarded(self, name: str, key: TaskKey, report: PodReport, secret: str | None) -> None:
        try:
            self._finish(name, key, report, secret)
        except RedisError as exc:
            log.warning("could not clean up pod %s (Redis: %s); the sweep retries", name, exc)
        except Exception:  # a clean-up thread must outlive any one pod
            log.exception("could not clean up pod %s; the sweep retries", name)
        finally:
            with self._cleaning_lock:
                self._cleaning.discard(name)

    def _finish(self, name: str, key: TaskKey, report: PodReport, secret: str | None) -> None:
        """Delete or keep (labelled done) a pod whose outcome is recorded, after deleting its launch Secret
        (``secret``); the sweep retries failures. While the Secret cannot be deleted the pod stays as it
        is: a deleted or done-labelled pod drops out of the sweep, and with it the only pointer to a
        Secret the pod does not own."""
        config = self.config
        delete = (
            report.phase == "Pending"  # failed before it started: it must never start later
            or (config.delete_worker_pods and report.state == TryState.SUCCESS)
            or (config.delete_worker_pods and config.delete_worker_pods_on_failure)
        )
        if secret is not None and not self._delete_secret(secret, key):
            return
        if delete and self._launch_pending(name):
            log.info(
                "pod %s: not deleted yet, its launch job is still queued or running; the sweep retries", name
            )
            return
        try:
            if delete:
                self._api.delete_namespaced_pod(
                    name,
                    self.namespace,
                    body=V1DeleteOptions(**config.delete_option_kwargs),
                    **self._request_args,
                )
            else:
                patch = {"metadata": {"labels": {DONE_LABEL: "true"}}}
                self._api.patch_namespaced_pod(name, self.namespace, patch, **self._request_args)
        except ApiException as exc:
            if exc.status != 404:
                log.warning(
                    "could not %s pod %s (%s %s); the sweep retries",
                    _verb(delete),
                    name,
                    exc.status,
                    exc.reason,
                )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("could not %s pod %s (%s); the sweep retries", _verb(delete), name, exc)

    def _delete_secret(self, name: str, key: TaskKey) -> bool:
        """Delete the launch Secret ``name`` of try ``key``; True once no Secret of this try has the name.

        A Secret with the name that is not this try's (checked as dispatchers check it) is left alone,
        and the delete names the uid that was checked.
        """
        try:
            response = self._api.read_namespaced_secret(
                name, self.namespace, _preload_content=False, **self._request_args
            )
            secret = json.loads(response.data)
            problem = ownership_problem(secret, key, self.config.key_prefix, kind="Secret")
            if problem is not None:
                log.warning("launch Secret %s left alone: %s", name, problem)
                return True
            uid = (secret.get("metadata") or {}).get("uid")
            self._api.delete_namespaced_secret(
                name,
                self.namespace,
                body=V1DeleteOptions(preconditions=V1Preconditions(uid=uid)),
                **self._request_args,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # 409: the precondition, another Secret has the name now
                log.warning(
                    "could not delete launch Secret %s (%s %s)%s", name, exc.status, exc.reason, _LATER
                )
                return False
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            log.warning("could not delete launch Secret %s (%s)%s", name, exc, _LATER)
            return False
        return True

    def _launch_pending(self, name: str) -> bool:
        """Whether the try's rq launch job may still run: deleting its finished pod now would free the name
        for that run to create a second pod for the same try."""
        status = self._redis.hget(Keys.rq_job(name), "status")
        return status in (b"queued", b"started", "queued", "started")

    # --- re-list and sweep ------------------------------------------------------------------------------

    def _relist(self) -> str:
        """Apply the current state of every pod, fail tries whose pod vanished; the list's version."""
        self.stats.relists += 1
        pods, resource_version = self._list()
        timeout = self.config.worker_pods_pending_timeout
        seen = set()
        for pod in pods:
            if not self._acting():
                raise _Expired("lost the lease during a re-list")
            self._apply(pod, deleted=False, checkpoint=None, pending_timeout=timeout)
            seen.add(str((pod.get("metadata") or {}).get("name", "")))
        self._fail_vanished(seen)
        self._redis.set(self._checkpoint_key, resource_version)
        log.info("re-listed %d pods at resourceVersion %s", len(pods), resource_version)
        return resource_version

    def _fail_vanished(self, listed: set[str]) -> None:
        """Launched tries of this namespace whose pod is not in the list: read each; gone means vanished.

        Reading the pod (instead of comparing times) settles the race with a dispatcher that created a
        pod after the list: its record says launched only after the create succeeded, and the watch from
        the list's version will deliver that pod's events.
        """
        missing = [job_id for job_id in self._records.in_flight() if job_id not in listed]
        for job_id, record in self._records.get_many(missing).items():
            if record is None or record.terminal or record.namespace != self.namespace:
                continue
            try:
                self._api.read_namespaced_pod(
                    job_id, self.namespace, _preload_content=False, **self._request_args
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                report = vanished_report(record.revoked)
                outcome = report.outcome(record.key, job_id, self.namespace)
                if self._records.advance(report.record(record.key, job_id, self.namespace), outcome):
                    self.stats.moves += 1
                    log.info("pod %s: task %s (%s)", job_id, report.state.value, report.reason)

    def _sweep_if_due(self) -> None:
        """Fail pods Pending for too long; retry cleaning up finished pods whose outcome is recorded.

        The list is newer than the watch position, so a finished pod is only cleaned up here once the
        watch has recorded its outcome: applying it from the list could skip its ``running`` outcome.
        A pod still Pending never ran, so failing it from the list skips nothing.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_seconds
        self.stats.sweeps += 1
        pods, _ = self._list(field_selector=SWEEP_FIELD_SELECTOR)
        names = [str((pod.get("metadata") or {}).get("name", "")) for pod in pods]
        records = self._records.get_many(names)
        timeout = self.config.worker_pods_pending_timeout
        for name, pod in zip(names, pods, strict=True):
            if not self._acting():
                return
            if (pod.get("status") or {}).get("phase") == "Pending":
                self._apply(pod, deleted=False, checkpoint=None, pending_timeout=timeout)
                continue
            record = records[name]
            report = pod_report(
                pod, fatal_reasons=self._fatal_reasons, pending_timeout_seconds=0, now=datetime.now(UTC)
            )
            if record is not None and record.terminal and report is not None and _needs_cleanup(pod, report):
                self._finish_soon(name, record.key, report, launch_secret_of(pod))
        with self._cleaning_lock:
            retries = list(self._secret_retries.items())
        for secret, key in retries:
            self._delete_secret_soon(secret, key)

    def _list(self, *, field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Every matching pod as API JSON, in pages of one snapshot, and the snapshot's resourceVersion."""
        while True:
            pods: list[dict[str, Any]] = []
            continue_token: str | None = None
            resource_version = ""
            try:
                while True:
                    response = self._api.list_namespaced_pod(
                        self.namespace,
                        label_selector=self._selector,
                        field_selector=field_selector,
                        limit=LIST_PAGE_SIZE,
                        _continue=continue_token,
                        _preload_content=False,
                        **self._request_args,
                    )
                    page = json.loads(response.data)
                    pods.extend(page.get("items") or [])
                    metadata = page.get("metadata") or {}
                    resource_version = resource_version or str(metadata.get("resourceVersion", ""))
                    continue_token = metadata.get("continue") or None
                    if continue_token is None:
                        return pods, resource_version
            except ApiException as exc:
                if exc.status != 410 or continue_token is None:
                    raise
                log.info("the list snapshot expired while paging: listing again")


def default_watcher_name() -> str:
    """``kbridge-watcher-<host>-<pid>-<random>``: the lease holder must be unique per process, and a
    restarted container can have the same host name and pid as its predecessor."""
    return f"kbridge-watcher-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _needs_cleanup(pod: Mapping[str, Any], report: PodReport) -> bool:
    """A finished pod nobody has deleted or labelled done yet."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return report.terminal and not is_deleting(pod) and labels.get(DONE_LABEL) != "true"


def _verb(delete: bool) -> str:
    return "delete" if delete else "label"


# --- command line ----------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Watch the worker pods of a namespace and report task outcomes to Redis (one active per namespace)."""
    parser = argparse.ArgumentParser(prog="kbridge watcher", description=main.__doc__)
    parser.add_argument("--config", help="INI file (default: $KBRIDGE_CONFIG, else the built-in defaults)")
    parser.add_argument("--namespace", help="namespace to watch (default: [kubernetes] namespace)")
    parser.add_argument(
        "--name",
        help="this watcher's name in the leader lease; must be unique per process (default: host, pid and a "
        "random suffix)",
    )
    options = parser.parse_args(argv)
    config = load_config(options.config)
    namespace = options.namespace or config.namespace
    if not is_dns1123_label(namespace):
        raise UserInputError(f"--namespace {namespace!r} is not a namespace name: {DNS1123_LABEL_RULE}")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        watcher = Watcher(config, namespace=namespace, name=options.name)
    except (ConfigException, yaml.YAMLError) as exc:
        where = "the pod's service account" if config.in_cluster else f"kubeconfig {config.config_file}"
        raise UserInputError(
            f"cannot configure the Kubernetes client from {where}: {' '.join(str(exc).split())}; check "
            "[kubernetes] in_cluster (False outside a cluster), config_file and cluster_context"
        ) from None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        watcher.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    watcher.run()
    return 0
