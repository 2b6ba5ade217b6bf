"""Pod status → task state, rule by rule (pure function: plain API JSON in, report out, no mocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.config import FATAL_PENDING_REASONS
from bridge.protocol import TryState
from bridge.task_key import TaskKey
from workers.pod_state import (
    PENDING_TIMEOUT,
    POD_DELETED,
    POD_VANISHED,
    REVOKED,
    PodReport,
    creation_time,
    pod_report,
    vanished_report,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FATAL = frozenset(FATAL_PENDING_REASONS.split(","))


def pod(
    phase: str,
    *containers: dict[str, Any],
    created_ago: float = 10,
    reason: str | None = None,
    message: str | None = None,
    init: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    created = (NOW - timedelta(seconds=created_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {"phase": phase, "containerStatuses": list(containers)}
    for name, value in (("reason", reason), ("message", message)):
        if value is not None:
            status[name] = value
    if init is not None:
        status["initContainerStatuses"] = init
    if conditions is not None:
        status["conditions"] = conditions
    metadata: dict[str, Any] = {"name": "p", "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": metadata, "status": status}


def waiting(reason: str, message: str = "", name: str = "base") -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}


def terminated(code: int, reason: str, name: str = "base", message: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message is not None:
        state["message"] = message
    return {"name": name, "state": {"terminated": state}}


RUNNING = {"name": "base", "state": {"running": {"startedAt": "2026-01-02T03:04:00Z"}}}


def report(
    manifest: dict[str, Any], *, timeout: int = 300, deleted: bool = False, revoked: bool = False
) -> PodReport | None:
    return pod_report(
        manifest,
        fatal_reasons=FATAL,
        pending_timeout_seconds=timeout,
        now=NOW,
        deleted=deleted,
        revoked=revoked,
    )


Expected = tuple[TryState, str, int | None] | None
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
DELETED, REVOKED_AND_DELETED = {"deleted": True}, {"deleted": True, "revoked": True}
FAILED, PENDING = TryState.FAILED, TryState.PENDING

# case name -> (pod, pod_report options, (state, reason, exit code) or None for "nothing to report")
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], Expected]] = {
    "succeeded": (pod("Succeeded", terminated(0, "Completed")), {}, (TryState.SUCCESS, "Completed", 0)),
    "succeeded without statuses": (pod("Succeeded"), {}, (TryState.SUCCESS, "", 0)),
    "failed exit code": (pod("Failed", terminated(3, "Error")), {}, (FAILED, "Error", 3)),
    "oom killed": (pod("Failed", terminated(137, "OOMKilled")), {}, (FAILED, "OOMKilled", 137)),
    "evicted: the pod reason wins": (
        pod("Failed", terminated(137, "Error"), reason="Evicted", message="The node was low on memory."),
        {},
        (FAILED, "Evicted", 137),
    ),
    "start error": (pod("Failed", terminated(128, "StartError")), {}, (FAILED, "StartError", 128)),
    "a failed init container explains it": (
        pod("Failed", terminated(0, "Completed"), init=[terminated(2, "Error", name="init")]),
        {},
        (FAILED, "Error", 2),
    ),
    "the base container, not a sidecar listed first": (
        pod("Failed", terminated(0, "Completed", name="sidecar"), terminated(5, "Error")),
        {},
        (FAILED, "Error", 5),
    ),
    "failed without any status": (pod("Failed"), {}, (FAILED, "Failed", None)),
    "running": (pod("Running", RUNNING), {}, (TryState.RUNNING, "", None)),
    "pending, creating": (
        pod("Pending", waiting("ContainerCreating")),
        {},
        (PENDING, "ContainerCreating", None),
    ),
    "a waiting reason outside the fatal list is not fatal": (
        pod("Pending", waiting("PodInitializing")),
        {},
        (PENDING, "PodInitializing", None),
    ),
    "fatal by default: image pull back-off (what a re-list sees after ErrImagePull)": (
        pod("Pending", waiting("ImagePullBackOff", "Back-off pulling image")),
        {},
        (FAILED, "ImagePullBackOff", None),
    ),
    "fatal: image pull": (
        pod("Pending", waiting("ErrImagePull", "not found")),
        {},
        (FAILED, "ErrImagePull", None),
    ),
    "fatal: missing secret": (
        pod("Pending", waiting("CreateContainerConfigError", 'secret "db" not found')),
        {},
        (FAILED, "CreateContainerConfigError", None),
    ),
    "fatal reason in an init container": (
        pod("Pending", init=[waiting("InvalidImageName", name="init")]),
        {},
        (FAILED, "InvalidImageName", None),
    ),
    "the kubelet's pull rate limit is not fatal": (
        pod("Pending", waiting("ErrImagePull", "pull QPS exceeded")),
        {},
        (PENDING, "ErrImagePull", None),
    ),
    "pending too long": (
        pod("Pending", waiting("ContainerCreating"), created_ago=301),
        {},
        (FAILED, PENDING_TIMEOUT, None),
    ),
    "pending timeout 0 waits forever": (
        pod("Pending", waiting("ContainerCreating"), created_ago=10**6),
        {"timeout": 0},
        (PENDING, "ContainerCreating", None),
    ),
    "unschedulable, from PodScheduled": (
        pod("Pending", conditions=[UNSCHEDULABLE]),
        {},
        (PENDING, "Unschedulable", None),
    ),
    "deleted while running": (pod("Running", RUNNING), DELETED, (FAILED, POD_DELETED, None)),
    "deleted while pending": (pod("Pending"), DELETED, (FAILED, POD_DELETED, None)),
    "revoked and deleted": (pod("Running", RUNNING), REVOKED_AND_DELETED, (TryState.REVOKED, REVOKED, None)),
    "revoked but failed on its own, not deleted": (
        pod("Failed", terminated(2, "Error")),
        {"revoked": True},
        (FAILED, "Error", 2),
    ),
    "failed and then deleted keeps its failure": (
        pod("Failed", terminated(143, "Error"), deleting=True),
        DELETED,
        (FAILED, "Error", 143),
    ),
    "revoked: stopped by the executor's deletion": (
        pod("Failed", terminated(143, "Error"), deleting=True),
        {"revoked": True},
        (TryState.REVOKED, REVOKED, 143),
    ),
    "a deleted pod that succeeded stays a success": (
        pod("Succeeded", terminated(0, "Completed")),
        DELETED,
        (TryState.SUCCESS, "Completed", 0),
    ),
    "provider failed (virtual kubelet)": (
        pod("Pending", reason="ProviderFailed"),
        {},
        (FAILED, "ProviderFailed", None),
    ),
    "phase unknown says nothing yet": (pod("Unknown"), {}, None),
    "no status at all says nothing": ({"metadata": {"name": "p"}}, {}, None),
}


@pytest.mark.parametrize(("manifest", "options", "expected"), list(CASES.values()), ids=list(CASES))
def test_pod_status_maps_to_task_state(
    manifest: dict[str, Any], options: dict[str, Any], expected: Expected
) -> None:
    result = report(manifest, **options)
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert (result.state, result.reason, result.exit_code) == expected
    if result.state in (TryState.FAILED, TryState.REVOKED):
        assert result.message, "every failure carries a sentence for a person"


def test_messages_say_what_happened() -> None:
    evicted = report(pod("Failed", terminated(137, "Error"), reason="Evicted", message="The node was low."))
    assert evicted is not None
    assert evicted.message == "The node was low."
    exited = report(pod("Failed", terminated(3, "Error")))
    assert exited is not None
    assert exited.message == "container base exited with code 3 (Error)"
    secret = report(pod("Pending", waiting("CreateContainerConfigError", 'secret "db" not found')))
    assert secret is not None
    assert secret.message == 'container base: CreateContainerConfigError: secret "db" not found'


def test_pending_timeout_names_the_option_and_what_the_pod_waited_for() -> None:
    result = report(
        pod("Pending", waiting("PodInitializing", "waiting for init containers"), created_ago=42), timeout=30
    )
    assert result is not None
    assert result.reason == PENDING_TIMEOUT
    assert "worker_pods_pending_timeout = 30 s" in result.message
    assert "42 s" in result.message
    assert "PodInitializing: waiting for init containers" in result.message


def test_a_pod_without_a_readable_creation_time_never_times_out() -> None:
    manifest = pod("Pending", waiting("ContainerCreating"))
    manifest["metadata"]["creationTimestamp"] = "yesterday"
    assert creation_time(manifest) is None
    result = report(manifest, timeout=1)
    assert result is not None
    assert result.state == TryState.PENDING


def test_vanished_pods_fail_unless_revoked() -> None:
    assert (vanished_report(False).state, vanished_report(False).reason) == (TryState.FAILED, POD_VANISHED)
    assert (vanished_report(True).state, vanished_report(True).reason) == (TryState.REVOKED, REVOKED)


def test_report_becomes_record_and_outcome_fields() -> None:
    key = TaskKey("dag", "task", "run", 2, 4)
    result = report(pod("Failed", terminated(137, "OOMKilled")))
    assert result is not None
    record = result.record(key, "pod-name", "ns")
    outcome = result.outcome(key, "pod-name", "ns")
    assert (record.state, record.phase, record.exit_code, record.pod) == (
        TryState.FAILED,
        "Failed",
        137,
        "pod-name",
    )
    assert (outcome.reason, outcome.exit_code, outcome.namespace, outcome.source) == (
        "OOMKilled",
        137,
        "ns",
        "watcher",
    )
