"""What a worker pod's status means for its task try: one pure function, so every rule has a table test.

The watcher sees pods, the executor needs task states. Kubernetes spreads the answer over the pod phase,
the pod's own reason (``Evicted``), the task container's terminated or waiting state and the pod's
conditions, and some Pending pods will never start (a missing image or Secret) while Kubernetes keeps
retrying them forever. Deciding all of that here, from the API JSON alone and with the clock passed in,
keeps the watcher to plumbing and lets the rules be read, and tested, in one place.

The rules, in order:

* a ``ProviderFailed`` pod (virtual kubelets) failed, whatever its phase;
* ``Succeeded`` is success, with the task container's exit code (0);
* ``Failed`` is a failure carrying the task container's exit code, and the pod's reason if it has one
  (``Evicted``, ``DeadlineExceeded``) else the container's (``OOMKilled``, ``Error``, ``StartError``);
  a pod the executor revoked that ended while being deleted is revoked instead. A pod that failed and
  was then deleted keeps its failure: the report depends on the final status, never on the event;
* a pod gone (DELETED event) before it finished failed with ``PodDeleted`` (revoked if the executor asked);
* ``Pending`` with a container waiting for a fatal reason (``[kubernetes]
  worker_pod_pending_fatal_container_state_reasons``) failed at once; Pending for longer than
  ``worker_pods_pending_timeout`` failed with ``PendingTimeout``, naming what it was waiting for;
* ``Running`` is running; ``Unknown`` (node unreachable) says nothing yet.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.pod_template import BASE_CONTAINER
from bridge.protocol import TERMINAL_STATES, Outcome, TryRecord, TryState
from bridge.task_key import TaskKey

PENDING_TIMEOUT = "PendingTimeout"
POD_DELETED = "PodDeleted"
POD_VANISHED = "PodVanished"
REVOKED = "Revoked"
PROVIDER_FAILED = "ProviderFailed"
SOURCE = "watcher"
# An ErrImagePull with this message is the kubelet's own pull rate limit, not a bad image: it passes.
_TRANSIENT_PULL_MESSAGE = "pull QPS exceeded"


@dataclass(frozen=True)
class PodReport:
    """The task state a pod's status stands for, with the details the try record and outcome carry."""

    state: TryState
    phase: str
    reason: str = ""
    message: str = ""
    exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def record(self, key: TaskKey, pod: str, namespace: str) -> TryRecord:
        return TryRecord(
            key,
            self.state,
            pod=pod,
            namespace=namespace,
            phase=self.phase,
            reason=self.reason,
            message=self.message,
            exit_code=self.exit_code,
        )

    def outcome(self, key: TaskKey, pod: str, namespace: str) -> Outcome:
        return Outcome(
            key,
            self.state,
            reason=self.reason,
            message=self.message,
            exit_code=self.exit_code,
            pod=pod,
            namespace=namespace,
            source=SOURCE,
        )


def pod_report(
    pod: Mapping[str, Any],
    *,
    fatal_reasons: Collection[str],
    pending_timeout_seconds: int,
    now: datetime,
    deleted: bool = False,
    revoked: bool = False,
) -> PodReport | None:
    """The report for ``pod`` (API JSON), or None when its status says nothing yet (phase Unknown).

    ``deleted``: the pod is gone (a DELETED watch event). ``revoked``: the executor revoked the try, so a
    deletion is reported as revoked instead of failed. ``now`` must be timezone-aware.
    ``pending_timeout_seconds`` 0 means a Pending pod waits forever.
    """
    status: Mapping[str, Any] = pod.get("status") or {}
    phase = str(status.get("phase") or "")
    if status.get("reason") == PROVIDER_FAILED:
        message = _string(status.get("message")) or "the node's provider (a virtual kubelet) failed the pod"
        return PodReport(TryState.FAILED, phase, PROVIDER_FAILED, message)
    if phase == "Succeeded":
        terminated = _terminated(status)
        exit_code = _exit_code(terminated)
        return PodReport(TryState.SUCCESS, phase, _string(terminated.get("reason")), "", exit_code or 0)
    if phase == "Failed":
        return _failed(pod, status, deleted=deleted, revoked=revoked)
    if deleted:
        return _deleted(phase, revoked, f"the pod was deleted while {phase or 'in an unknown phase'}")
    if phase == "Pending":
        return _pending(pod, status, fatal_reasons, pending_timeout_seconds, now)
    if phase == "Running":
        return PodReport(TryState.RUNNING, phase)
    return None


def is_deleting(pod: Mapping[str, Any]) -> bool:
    """True once the pod has a deletionTimestamp: someone asked for it to go."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def creation_time(pod: Mapping[str, Any]) -> datetime | None:
    """The pod's creationTimestamp as an aware datetime, or None when absent or unreadable."""
    return _timestamp((pod.get("metadata") or {}).get("creationTimestamp"))


def vanished_report(revoked: bool) -> PodReport:
    """A launched try whose pod is gone and whose end nobody saw (deleted while no watcher ran)."""
    if revoked:
        return PodReport(TryState.REVOKED, "", REVOKED, "the try was revoked and its pod is gone")
    return PodReport(
        TryState.FAILED,
        "",
        POD_VANISHED,
        "the pod disappeared while no watcher saw its end (deleted, or its node removed)",
    )


def _failed(pod: Mapping[str, Any], status: Mapping[str, Any], *, deleted: bool, revoked: bool) -> PodReport:
    terminated, container = _failed_container(status)
    exit_code = _exit_code(terminated)
    container_reason = _string(terminated.get("reason"))
    reason = _string(status.get("reason")) or container_reason or "Failed"
    message = _string(status.get("message")).strip() or _string(terminated.get("message")).strip()
    if not message:
        message = (
            f"container {container} exited with code {exit_code} ({container_reason or 'no reason'})"
            if container
            else "the pod failed without a container exit status"
        )
    if revoked and (deleted or is_deleting(pod)):
        return PodReport(TryState.REVOKED, "Failed", REVOKED, f"revoked and deleted; {message}", exit_code)
    return PodReport(TryState.FAILED, "Failed", reason, message, exit_code)


def _deleted(phase: str, revoked: bool, message: str, exit_code: int | None = None) -> PodReport:
    if revoked:
        return PodReport(TryState.REVOKED, phase, REVOKED, message, exit_code)
    return PodReport(TryState.FAILED, phase, POD_DELETED, message, exit_code)


def _pending(
    pod: Mapping[str, Any],
    status: Mapping[str, Any],
    fatal_reasons: Collection[str],
    pending_timeout_seconds: int,
    now: datetime,
) -> PodReport:
    waiting = list(_waiting(status))
    for container, reason, message in waiting:
        if reason in fatal_reasons and not (reason == "ErrImagePull" and _TRANSIENT_PULL_MESSAGE in message):
            detail = f"{reason}: {message}" if message else reason
            return PodReport(TryState.FAILED, "Pending", reason, f"container {container}: {detail}")
    why, detail = waiting[-1][1:] if waiting else _scheduling(status)
    created = creation_time(pod)
    if pending_timeout_seconds > 0 and created is not None:
        pending_for = (now - created).total_seconds()
        if pending_for > pending_timeout_seconds:
            waited = f"{why}: {detail}" if detail else why or "no reason given"
            message = (
                f"the pod stayed Pending for {pending_for:.0f} s, longer than [kubernetes] "
                f"worker_pods_pending_timeout = {pending_timeout_seconds} s; last waiting for {waited}"
            )
            return PodReport(TryState.FAILED, "Pending", PENDING_TIMEOUT, message)
    return PodReport(TryState.PENDING, "Pending", why, detail)


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Init containers first (they run first), then the task container, then its sidecars."""
    init: list[Mapping[str, Any]] = status.get("initContainerStatuses") or []
    main: list[Mapping[str, Any]] = status.get("containerStatuses") or []
    base = [item for item in main if item.get("name") == BASE_CONTAINER] or main[:1]
    return [*init, *base, *(item for item in main if item not in base)]


def _waiting(status: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
    for item in _container_statuses(status):
        waiting = (item.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            yield (
                _string(item.get("name")),
                _string(waiting["reason"]),
                _string(waiting.get("message")).strip(),
            )


def _task_container(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status of the container that runs the task (named ``base``, else the first), or {}."""
    main: list[Mapping[str, Any]] = status.get("containerStatuses") or []
    return next((item for item in main if item.get("name") == BASE_CONTAINER), main[0] if main else {})


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any]:
    state: Mapping[str, Any] = (_task_container(status).get("state") or {}).get("terminated") or {}
    return state


def _failed_container(status: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The terminated state that explains a failure, and its container: the first container (init
    containers first) that ended with a non-zero code or a reason other than Completed, else the task's."""
    for item in _container_statuses(status):
        terminated = (item.get("state") or {}).get("terminated") or {}
        code, reason = terminated.get("exitCode"), terminated.get("reason")
        if terminated and (code not in (0, None) or reason not in ("Completed", None)):
            return terminated, _string(item.get("name"))
    terminated = _terminated(status)
    return terminated, _string(_task_container(status).get("name")) if terminated else ""


def _scheduling(status: Mapping[str, Any]) -> tuple[str, str]:
    """Why a pod without waiting containers is Pending: its PodScheduled=False condition, if any."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return _string(condition.get("reason")) or "Unschedulable", _string(condition.get("message"))
    return "", ""


def _exit_code(terminated: Mapping[str, Any]) -> int | None:
    code = terminated.get("exitCode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""
