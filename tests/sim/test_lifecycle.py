"""Pod lifecycle through the real client: scheduler, scripted and process kubelet (spec §4, §7 items 9, 10).

Every assertion is about what a client sees: the events of a real ``Watch().stream`` started before the
pod was created (each event one store write with its own resourceVersion), logs, and for the process
kubelet the real processes behind the pods.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client, watch

from bridge.sim.cluster import ControlLoop, Simulator
from bridge.sim.kubelet import (
    ANNOTATION_EXIT_CODE,
    ANNOTATION_LOG,
    ANNOTATION_OUTCOME,
    ANNOTATION_RUN_SECONDS,
    PodAddressPool,
)
from tests.pod_log import pod_log

NAMESPACE = "default"
# The client's models declare every field Optional; these tests read what the server sent, untyped.
CoreV1Api = Any
Event = tuple[str, Any]  # (type, V1Pod)


@pytest.fixture
def cluster_v1(cluster: Simulator) -> CoreV1Api:
    """The official client of the scripted-kubelet simulator."""
    return cluster.core_v1()


def pod_manifest(
    name: str,
    *,
    command: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    image: str = "busybox:1.36",
    **container: Any,
) -> dict[str, Any]:
    """A restartPolicy Never pod with one container ``base``."""
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": image, "command": command or ["true"], **container}],
        },
    }


def current_rv(core_v1: CoreV1Api) -> str:
    return str(core_v1.list_namespaced_pod(NAMESPACE).metadata.resource_version)


def watch_pod(
    core_v1: CoreV1Api,
    name: str,
    since_rv: str,
    until: Callable[[str, Any], bool],
    *,
    timeout_s: int = 10,
) -> list[Event]:
    """The pod's events after ``since_rv`` up to the first that ``until`` accepts (or the server timeout)."""
    events: list[Event] = []
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(  # type: ignore[no-untyped-call]
        core_v1.list_namespaced_pod,
        NAMESPACE,
        field_selector=f"metadata.name={name}",
        resource_version=since_rv,
        timeout_seconds=timeout_s,
    ):
        events.append((event["type"], event["object"]))
        if until(event["type"], event["object"]):
            stream.stop()  # type: ignore[no-untyped-call]
            break
    return events


def phase_is(*phases: str) -> Callable[[str, Any], bool]:
    return lambda _type, pod: pod.status.phase in phases


def waiting_reason_is(reason: str) -> Callable[[str, Any], bool]:
    return lambda _type, pod: waiting_reason(pod) == reason


def waiting_reason(pod: Any) -> str | None:
    statuses = pod.status.container_statuses or []
    return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None


def conditions(pod: Any) -> dict[str, tuple[str, str | None]]:
    return {c.type: (c.status, c.reason) for c in pod.status.conditions or []}


def run_to_end(core_v1: CoreV1Api, manifest: dict[str, Any]) -> list[Event]:
    since = current_rv(core_v1)
    core_v1.create_namespaced_pod(NAMESPACE, manifest)
    return watch_pod(core_v1, manifest["metadata"]["name"], since, phase_is("Succeeded", "Failed"))


def assert_canonical_sequence(events: list[Event], *, final_phase: str) -> None:
    """ADDED → bound → ContainerCreating → Running → terminal (spec §4.6), one write per event."""
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED"]
    versions = [int(pod.metadata.resource_version) for _, pod in events]
    assert versions == sorted(set(versions)), "each transition is its own write"
    created, bound, first_status, running, finished = (pod for _, pod in events)

    assert created.status.phase == "Pending"
    assert created.spec.node_name is None
    assert bound.spec.node_name == "sim-node-0"
    assert conditions(bound) == {"PodScheduled": ("True", None)}

    assert first_status.status.phase == "Pending"
    assert waiting_reason(first_status) == "ContainerCreating"
    assert first_status.status.host_ip == "10.0.0.2"
    assert first_status.status.start_time is not None
    assert first_status.status.pod_ip is None
    assert conditions(first_status) == {
        "PodReadyToStartContainers": ("False", None),
        "Initialized": ("True", None),
        "Ready": ("False", "ContainersNotReady"),
        "ContainersReady": ("False", "ContainersNotReady"),
        "PodScheduled": ("True", None),
    }

    assert running.status.phase == "Running"
    assert running.status.pod_ip.startswith("10.244.0.")
    (status,) = running.status.container_statuses
    assert status.state.running.started_at is not None
    assert (status.ready, status.started) == (True, True)
    assert re.fullmatch(r"busybox@sha256:[0-9a-f]{64}", status.image_id)
    assert re.fullmatch(r"containerd://[0-9a-f]{64}", status.container_id)
    assert conditions(running)["Ready"] == ("True", None)

    assert finished.status.phase == final_phase
    (status,) = finished.status.container_statuses
    assert status.state.terminated is not None
    assert (status.ready, status.started) == (False, False)
    expected_reason = "PodCompleted" if final_phase == "Succeeded" else "PodFailed"
    assert conditions(finished)["Ready"] == ("False", expected_reason)
    assert conditions(finished)["ContainersReady"] == ("False", expected_reason)


def test_a_succeeding_pod_goes_through_the_canonical_events(cluster_v1: Any) -> None:
    manifest = pod_manifest("ok", annotations={ANNOTATION_LOG: "hello from the script\n"})
    events = run_to_end(cluster_v1, manifest)

    assert_canonical_sequence(events, final_phase="Succeeded")
    terminated = events[-1][1].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert pod_log(cluster_v1, "ok", NAMESPACE) == "hello from the script\n"


@pytest.mark.parametrize(
    ("annotations", "exit_code", "reason"),
    [
        ({ANNOTATION_OUTCOME: "fail", ANNOTATION_EXIT_CODE: "3"}, 3, "Error"),
        ({ANNOTATION_OUTCOME: "fail"}, 1, "Error"),
        ({ANNOTATION_OUTCOME: "oom"}, 137, "OOMKilled"),
        ({ANNOTATION_OUTCOME: "evict"}, 137, "Error"),
    ],
)
def test_scripted_failures_end_failed_with_the_container_reason(
    cluster_v1: Any, annotations: dict[str, str], exit_code: int, reason: str
) -> None:
    events = run_to_end(cluster_v1, pod_manifest("failing", annotations=annotations))

    assert_canonical_sequence(events, final_phase="Failed")
    terminated = events[-1][1].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (exit_code, reason)


def test_an_evicted_pod_says_so_like_the_kubelet(cluster_v1: Any) -> None:
    events = run_to_end(cluster_v1, pod_manifest("evicted", annotations={ANNOTATION_OUTCOME: "evict"}))

    evicted = events[-1][1]
    assert (evicted.status.phase, evicted.status.reason) == ("Failed", "Evicted")
    assert evicted.status.message.startswith("The node was low on resource: memory.")
    assert conditions(evicted)["DisruptionTarget"] == ("True", "TerminationByKubelet")
    assert cluster_v1.read_namespaced_pod("evicted", NAMESPACE).status.reason == "Evicted"


def test_a_start_error_fails_the_pod_with_exit_code_128(cluster_v1: Any) -> None:
    events = run_to_end(cluster_v1, pod_manifest("nostart", annotations={ANNOTATION_OUTCOME: "start-error"}))

    finished = events[-1][1]
    assert finished.status.phase == "Failed"
    terminated = finished.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (128, "StartError")
    assert "Running" not in [pod.status.phase for _, pod in events]


def test_run_seconds_keeps_the_pod_running_that_long(cluster_v1: Any) -> None:
    manifest = pod_manifest("slow", annotations={ANNOTATION_RUN_SECONDS: "0.5"})
    events = run_to_end(cluster_v1, manifest)

    running, finished = events[-2][1], events[-1][1]
    started = running.status.container_statuses[0].state.running.started_at
    ended = finished.status.container_statuses[0].state.terminated.finished_at
    assert running.status.phase == "Running"
    assert finished.status.phase == "Succeeded"
    assert (ended - started).total_seconds() <= 2  # timestamps have second precision


def test_a_pending_outcome_stays_container_creating(cluster_v1: Any) -> None:
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(
        NAMESPACE, pod_manifest("stuck", annotations={ANNOTATION_OUTCOME: "pending"})
    )

    events = watch_pod(cluster_v1, "stuck", since, phase_is("Running", "Succeeded", "Failed"), timeout_s=1)

    assert {pod.status.phase for _, pod in events} == {"Pending"}
    last = events[-1][1]
    assert waiting_reason(last) == "ContainerCreating"
    assert conditions(last)["PodReadyToStartContainers"] == ("True", None)


@pytest.mark.parametrize(
    ("manifest", "reasons"),
    [
        (pod_manifest("scripted-pull", annotations={ANNOTATION_OUTCOME: "err-image-pull"}), None),
        (pod_manifest("pattern-pull", image="registry.example/team/unpullable:1"), "unpullable"),
    ],
)
def test_an_image_that_cannot_be_pulled_backs_off_and_stays_pending(
    cluster_v1: Any, manifest: dict[str, Any], reasons: str | None
) -> None:
    name = manifest["metadata"]["name"]
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, manifest)

    events = watch_pod(cluster_v1, name, since, waiting_reason_is("ImagePullBackOff"))

    waiting = [waiting_reason(pod) for _, pod in events]
    assert waiting[-2:] == ["ErrImagePull", "ImagePullBackOff"]
    assert {pod.status.phase for _, pod in events} == {"Pending"}
    pull_error = events[-2][1].status.container_statuses[0].state.waiting.message
    assert manifest["spec"]["containers"][0]["image"] in pull_error
    assert (reasons or "") in pull_error
    assert events[-1][1].status.container_statuses[0].image_id == ""


def test_a_missing_secret_blocks_the_start_until_it_exists(cluster_v1: Any) -> None:
    env = [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, pod_manifest("needs-secret", env=env))

    events = watch_pod(cluster_v1, "needs-secret", since, waiting_reason_is("CreateContainerConfigError"))
    blocked = events[-1][1]
    assert blocked.status.phase == "Pending"
    assert blocked.status.container_statuses[0].state.waiting.message == 'secret "db" not found'

    since = blocked.metadata.resource_version
    cluster_v1.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "db"}, "stringData": {"password": "s3cret"}}
    )
    assert (
        watch_pod(cluster_v1, "needs-secret", since, phase_is("Succeeded"))[-1][1].status.phase == "Succeeded"
    )


def test_a_missing_secret_key_names_the_key_and_the_secret(cluster_v1: Any) -> None:
    cluster_v1.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "api"}, "stringData": {"token": "t"}}
    )
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "password"}}}]
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, pod_manifest("needs-key", env=env))

    events = watch_pod(cluster_v1, "needs-key", since, waiting_reason_is("CreateContainerConfigError"))

    message = events[-1][1].status.container_statuses[0].state.waiting.message
    assert message == "couldn't find key password in Secret default/api"


def test_the_scripted_config_error_outcome(cluster_v1: Any) -> None:
    manifest = pod_manifest("cfg", annotations={ANNOTATION_OUTCOME: "create-container-config-error"})
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, manifest)

    events = watch_pod(cluster_v1, "cfg", since, waiting_reason_is("CreateContainerConfigError"))

    assert events[-1][1].status.phase == "Pending"


@pytest.mark.parametrize(
    ("key", "value", "advice"),
    [
        (ANNOTATION_OUTCOME, "explode", "use one of succeed, fail"),
        (ANNOTATION_EXIT_CODE, "three", "use an integer from 1 to 255"),
        (ANNOTATION_EXIT_CODE, "0", "use an integer from 1 to 255"),
        (ANNOTATION_RUN_SECONDS, "-1", "use seconds >= 0"),
    ],
)
def test_a_bad_annotation_is_a_config_error_naming_it(
    cluster_v1: Any, key: str, value: str, advice: str
) -> None:
    manifest = pod_manifest("bad-annotation", annotations={ANNOTATION_OUTCOME: "fail", key: value})
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, manifest)

    events = watch_pod(cluster_v1, "bad-annotation", since, waiting_reason_is("CreateContainerConfigError"))

    message = events[-1][1].status.container_statuses[0].state.waiting.message
    assert key in message
    assert f'"{value}"' in message
    assert advice in message


def test_nodes_are_listed_with_their_capacity() -> None:
    with Simulator(nodes=2, node_cpu="4", node_memory="8Gi", node_pods=20) as sim:
        core_v1: CoreV1Api = sim.core_v1()
        nodes = core_v1.list_node().items

    assert [node.metadata.name for node in nodes] == ["sim-node-0", "sim-node-1"]
    for node in nodes:
        assert node.status.allocatable == {"cpu": "4", "memory": "8Gi", "pods": "20"}
        assert node.metadata.labels["kubernetes.io/hostname"] == node.metadata.name
        assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True")]


def test_pods_spread_over_the_nodes() -> None:
    with Simulator(nodes=2) as sim:
        core_v1: CoreV1Api = sim.core_v1()
        since = current_rv(core_v1)
        for name in ("spread-a", "spread-b"):
            manifest = pod_manifest(
                name, annotations={ANNOTATION_OUTCOME: "pending"}, resources={"requests": {"cpu": "1"}}
            )
            core_v1.create_namespaced_pod(NAMESPACE, manifest)
        nodes = {
            name: watch_pod(core_v1, name, since, lambda _t, pod: bool(pod.spec.node_name))[-1][
                1
            ].spec.node_name
            for name in ("spread-a", "spread-b")
        }

    assert sorted(nodes.values()) == ["sim-node-0", "sim-node-1"]


@pytest.mark.parametrize("free_by", ["deletion", "completion"])
def test_an_unschedulable_pod_is_bound_once_capacity_frees(free_by: str) -> None:
    holder_script = (
        {ANNOTATION_OUTCOME: "pending"} if free_by == "deletion" else {ANNOTATION_RUN_SECONDS: "1"}
    )
    with Simulator(node_cpu="1") as sim:
        core_v1: CoreV1Api = sim.core_v1()
        since = current_rv(core_v1)
        core_v1.create_namespaced_pod(
            NAMESPACE,
            pod_manifest("holder", annotations=holder_script, resources={"requests": {"cpu": "600m"}}),
        )
        watch_pod(
            core_v1,
            "holder",
            since,
            phase_is("Running") if free_by == "completion" else waiting_reason_is("ContainerCreating"),
        )
        since = current_rv(core_v1)
        core_v1.create_namespaced_pod(
            NAMESPACE, pod_manifest("waiter", resources={"limits": {"cpu": "600m"}})
        )

        blocked = watch_pod(core_v1, "waiter", since, lambda _t, pod: bool(pod.status.conditions))[-1][1]
        (scheduled,) = blocked.status.conditions
        assert (scheduled.type, scheduled.status, scheduled.reason) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        )
        assert scheduled.message == "0/1 nodes are available: 1 Insufficient cpu."
        assert blocked.spec.node_name is None

        if free_by == "deletion":
            core_v1.delete_namespaced_pod("holder", NAMESPACE)
        events = watch_pod(core_v1, "waiter", blocked.metadata.resource_version, phase_is("Succeeded"))

    assert events[-1][1].status.phase == "Succeeded"
    assert events[0][1].spec.node_name == "sim-node-0"


def test_unschedulable_reasons_are_counted_per_node() -> None:
    with Simulator(nodes=2, node_memory="1Gi") as sim:
        core_v1: CoreV1Api = sim.core_v1()
        since = current_rv(core_v1)
        core_v1.create_namespaced_pod(
            NAMESPACE, pod_manifest("huge", resources={"requests": {"cpu": "64", "memory": "2Gi"}})
        )
        core_v1.create_namespaced_pod(
            NAMESPACE,
            {
                **pod_manifest("picky"),
                "spec": {**pod_manifest("picky")["spec"], "nodeSelector": {"disk": "ssd"}},
            },
        )
        messages = {
            name: watch_pod(core_v1, name, since, lambda _t, pod: bool(pod.status.conditions))[-1][1]
            .status.conditions[0]
            .message
            for name in ("huge", "picky")
        }

    assert messages == {
        "huge": "0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.",
        "picky": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    }


def test_deleting_a_running_pod_stops_it_then_removes_it(cluster_v1: Any) -> None:
    manifest = pod_manifest("long", annotations={ANNOTATION_RUN_SECONDS: "600"})
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, manifest)
    running = watch_pod(cluster_v1, "long", since, phase_is("Running"))[-1][1]

    cluster_v1.delete_namespaced_pod("long", NAMESPACE)
    events = watch_pod(
        cluster_v1, "long", running.metadata.resource_version, lambda kind, _p: kind == "DELETED"
    )

    assert [kind for kind, _ in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    marked, stopped, _ = (pod for _, pod in events)
    assert marked.metadata.deletion_timestamp is not None
    assert marked.metadata.deletion_grace_period_seconds == 30
    assert marked.status.phase == "Running"
    assert stopped.status.phase == "Failed"
    terminated = stopped.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (143, "Error")
    with pytest.raises(client.ApiException) as missing:
        cluster_v1.read_namespaced_pod("long", NAMESPACE)
    assert missing.value.status == 404


def test_deleting_a_completed_pod_is_one_modified_and_deleted(cluster_v1: Any) -> None:
    finished = run_to_end(cluster_v1, pod_manifest("done", annotations={ANNOTATION_LOG: "bye\n"}))[-1][1]
    assert pod_log(cluster_v1, "done", NAMESPACE) == "bye\n"

    cluster_v1.delete_namespaced_pod("done", NAMESPACE)
    events = watch_pod(
        cluster_v1, "done", finished.metadata.resource_version, lambda kind, _p: kind == "DELETED"
    )

    assert [kind for kind, _ in events] == ["MODIFIED", "DELETED"]
    assert events[0][1].metadata.deletion_grace_period_seconds == 0
    with pytest.raises(client.ApiException) as gone:
        cluster_v1.read_namespaced_pod_log("done", NAMESPACE)
    assert gone.value.status == 404


def test_deleting_a_waiting_pod_fails_it_then_removes_it(cluster_v1: Any) -> None:
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(NAMESPACE, pod_manifest("waits", image="nonexistent/app:1"))
    blocked = watch_pod(cluster_v1, "waits", since, waiting_reason_is("ImagePullBackOff"))[-1][1]

    cluster_v1.delete_namespaced_pod("waits", NAMESPACE)
    events = watch_pod(
        cluster_v1, "waits", blocked.metadata.resource_version, lambda kind, _p: kind == "DELETED"
    )

    assert [kind for kind, _ in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert events[1][1].status.phase == "Failed"


# ---- process kubelet: real subprocesses ---------------------------------------------------------------


@pytest.fixture
def process_v1(process_cluster: Simulator) -> CoreV1Api:
    """The official client of the process-kubelet simulator."""
    return process_cluster.core_v1()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def start_running(core_v1: CoreV1Api, manifest: dict[str, Any]) -> Any:
    """Create the pod and return it as the watch first shows it Running."""
    since = current_rv(core_v1)
    core_v1.create_namespaced_pod(NAMESPACE, manifest)
    events = watch_pod(
        core_v1, manifest["metadata"]["name"], since, phase_is("Running", "Succeeded", "Failed")
    )
    assert events[-1][1].status.phase == "Running", events[-1][1].status
    return events[-1][1]


def log_of(core_v1: CoreV1Api, name: str) -> str:
    return pod_log(core_v1, name, NAMESPACE)


def wait_for_log_line(core_v1: CoreV1Api, name: str) -> str:
    """The first line the pod's container prints, read from a follow stream (waits for it, no polling)."""
    response = core_v1.read_namespaced_pod_log(name, NAMESPACE, follow=True, _preload_content=False)
    try:
        buffered: bytes = b""
        for chunk in response.stream(1024):
            buffered += chunk
            if b"\n" in buffered:
                return buffered.split(b"\n", 1)[0].decode()
        raise AssertionError(f"pod {name} ended its log without a line: {buffered!r}")
    finally:
        response.release_conn()


def process_alive(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_exited(pid: int, timeout_s: float = 5.0) -> bool:
    """Wait (on a pidfd, not a sleep loop) until ``pid`` has exited; True if it did within the deadline."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable) or not process_alive(pid)
    finally:
        os.close(pidfd)


def test_a_process_pod_prints_hi_and_succeeds(process_v1: Any) -> None:
    events = run_to_end(process_v1, pod_manifest("hi", command=python("print('hi')")))

    assert_canonical_sequence(events, final_phase="Succeeded")
    terminated = events[-1][1].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert log_of(process_v1, "hi") == "hi\n"


def test_a_process_exit_code_fails_the_pod(process_v1: Any) -> None:
    manifest = pod_manifest("exit3", command=["sh", "-c", "echo failing >&2; exit 3"])
    events = run_to_end(process_v1, manifest)

    assert_canonical_sequence(events, final_phase="Failed")
    terminated = events[-1][1].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert log_of(process_v1, "exit3") == "failing\n"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["kbridge-no-such-binary", "--flag"],
            'exec: "kbridge-no-such-binary": executable file not found in $PATH',
        ),
        (["/nonexistent/tool"], 'exec: "/nonexistent/tool": no such file or directory'),
        ([], "no command"),
    ],
)
def test_a_command_that_cannot_start_is_a_start_error(
    process_v1: Any, command: list[str], message: str
) -> None:
    manifest = pod_manifest("nostart", command=None)
    manifest["spec"]["containers"][0]["command"] = command
    events = run_to_end(process_v1, manifest)

    finished = events[-1][1]
    assert finished.status.phase == "Failed"
    terminated = finished.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (128, "StartError")
    assert message in terminated.message


def test_the_environment_resolves_references_and_variables(process_v1: Any) -> None:
    process_v1.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "db"}, "stringData": {"password": "pw"}}
    )
    process_v1.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    )
    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "$(MODE)-$(POD)-$(UNDEFINED)"},
    ]
    names = "'PASSWORD', 'MODE', 'POD', 'GREETING'"
    code = f"import os, sys; print(*(os.environ[k] for k in ({names})), *sys.argv[1:])"
    manifest = pod_manifest("env", command=python(code), args=["$(MODE)", "$$(MODE)"], env=env)
    events = run_to_end(process_v1, manifest)

    assert events[-1][1].status.phase == "Succeeded"
    assert log_of(process_v1, "env") == "pw fast env fast-env-$(UNDEFINED) fast $(MODE)\n"


def test_a_pod_with_two_containers_fails_if_one_fails(process_v1: Any) -> None:
    manifest = pod_manifest("pair", command=python("print('main done')"))
    manifest["spec"]["containers"].insert(
        0,
        {"name": "sidecar", "image": "busybox", "command": python("import sys; print('side'); sys.exit(2)")},
    )
    finished = run_to_end(process_v1, manifest)[-1][1]

    assert finished.status.phase == "Failed"
    states = {
        s.name: (s.state.terminated.exit_code, s.state.terminated.reason)
        for s in finished.status.container_statuses
    }
    assert states == {"base": (0, "Completed"), "sidecar": (2, "Error")}
    assert [s.name for s in finished.status.container_statuses] == ["base", "sidecar"]
    assert pod_log(process_v1, "pair", NAMESPACE, container="base") == "main done\n"
    assert pod_log(process_v1, "pair", NAMESPACE, container="sidecar") == "side\n"


def test_deleting_a_running_process_pod_terminates_it(process_v1: Any) -> None:
    code = "import os, time; print(os.getpid(), os.getcwd(), flush=True); time.sleep(600)"
    running = start_running(process_v1, pod_manifest("sleeper", command=python(code)))
    pid, workdir = wait_for_log_line(process_v1, "sleeper").split()
    assert process_alive(int(pid))
    assert Path(workdir).is_dir()

    process_v1.delete_namespaced_pod("sleeper", NAMESPACE)
    events = watch_pod(
        process_v1, "sleeper", running.metadata.resource_version, lambda kind, _p: kind == "DELETED"
    )

    assert [kind for kind, _ in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert events[0][1].metadata.deletion_timestamp is not None
    stopped = events[1][1]
    assert stopped.status.phase == "Failed"
    terminated = stopped.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (143, "Error")  # 128 + SIGTERM
    assert not process_alive(int(pid))
    assert wait_exited(int(pid))
    assert not Path(workdir).exists()


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(process_v1: Any) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(600)"
    )
    running = start_running(process_v1, pod_manifest("stubborn", command=python(code)))
    assert wait_for_log_line(process_v1, "stubborn") == "ready"

    started = time.monotonic()
    process_v1.delete_namespaced_pod("stubborn", NAMESPACE, grace_period_seconds=1)
    events = watch_pod(
        process_v1, "stubborn", running.metadata.resource_version, lambda kind, _p: kind == "DELETED"
    )

    assert time.monotonic() - started >= 1.0
    terminated = events[-2][1].status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "Error")  # 128 + SIGKILL


def test_force_deleting_a_process_pod_kills_it_at_once(process_v1: Any) -> None:
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    start_running(process_v1, pod_manifest("forced", command=python(code)))
    pid = int(wait_for_log_line(process_v1, "forced"))

    process_v1.delete_namespaced_pod("forced", NAMESPACE, grace_period_seconds=0)

    assert wait_exited(pid)


def test_a_follow_stream_ends_when_the_container_exits(process_v1: Any) -> None:
    code = "import time; print('one', flush=True); time.sleep(0.3); print('two')"
    start_running(process_v1, pod_manifest("follow", command=python(code)))
    assert wait_for_log_line(process_v1, "follow") == "one"

    log_lines = watch.Watch().stream(  # type: ignore[no-untyped-call]
        process_v1.read_namespaced_pod_log, name="follow", namespace=NAMESPACE
    )

    lines = list(log_lines)

    assert lines == ["one", "two"]
    assert process_v1.read_namespaced_pod("follow", NAMESPACE).status.phase == "Succeeded"


def test_a_process_above_its_memory_limit_is_oom_killed(process_v1: Any) -> None:
    code = "import time; hog = b'x' * (200 * 1024 * 1024); time.sleep(30)"
    manifest = pod_manifest("hog", command=python(code), resources={"limits": {"memory": "50Mi"}})
    events = run_to_end(process_v1, manifest)

    finished = events[-1][1]
    assert finished.status.phase == "Failed"
    terminated = finished.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_leaving_the_simulator_kills_every_process_it_started(tmp_path: Path) -> None:
    code = (
        "import os, subprocess, sys; child = subprocess.Popen(['sleep', '600']); "
        "print(os.getpid(), child.pid, flush=True); child.wait()"
    )
    with Simulator(kubelet="process", kubeconfig=tmp_path / "kubeconfig") as sim:
        core_v1: CoreV1Api = sim.core_v1()
        start_running(core_v1, pod_manifest("tree", command=python(code)))
        pids = [int(pid) for pid in wait_for_log_line(core_v1, "tree").split()]
        assert all(process_alive(pid) for pid in pids)

    assert all(wait_exited(pid) for pid in pids)


def test_the_realistic_profile_caps_the_bind_rate() -> None:
    """100 binds/s at most: 40 pods created at once are bound over at least 0.39 s."""
    names = [f"burst-{index}" for index in range(40)]
    bound_at: dict[str, float] = {}
    all_bound = threading.Event()

    def record_binding(event_type: str, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Pod" and obj["spec"].get("nodeName"):
            bound_at.setdefault(obj["metadata"]["name"], time.monotonic())
            if len(bound_at) == len(names):
                all_bound.set()

    with Simulator(profile="realistic") as sim:
        sim.store.subscribe(record_binding)
        core_v1: CoreV1Api = sim.core_v1()
        for name in names:
            core_v1.create_namespaced_pod(
                NAMESPACE, pod_manifest(name, annotations={ANNOTATION_OUTCOME: "pending"})
            )
        assert all_bound.wait(10)

    assert sorted(bound_at) == sorted(names)
    assert max(bound_at.values()) - min(bound_at.values()) >= 39 / 100


def test_a_pod_annotation_can_choose_the_scripted_kubelet(process_v1: Any) -> None:
    annotations = {"sim.kbridge.io/kubelet": "scripted", ANNOTATION_OUTCOME: "evict"}
    manifest = pod_manifest(
        "scripted-in-process-mode", command=["kbridge-no-such-binary"], annotations=annotations
    )
    events = run_to_end(process_v1, manifest)

    assert events[-1][1].status.reason == "Evicted"


@settings(max_examples=12, deadline=None)
@given(
    requests=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 1536)), min_size=1, max_size=8),
    node_count=st.integers(1, 3),
)
def test_the_scheduler_never_overcommits_and_leaves_pending_only_what_cannot_fit(
    requests: list[tuple[int, int]], node_count: int
) -> None:
    """Nodes of 2 cpu / 2Gi: bound requests stay within each node; a pending pod fits on no node."""
    decided: set[str] = set()
    all_decided = threading.Event()

    def record_decision(event_type: str, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Pod" and (obj["spec"].get("nodeName") or obj["status"].get("conditions")):
            decided.add(obj["metadata"]["name"])
            if len(decided) == len(requests):
                all_decided.set()

    with Simulator(nodes=node_count, node_cpu="2", node_memory="2Gi") as sim:
        sim.store.subscribe(record_decision)
        core_v1: CoreV1Api = sim.core_v1()
        for index, (millicores, mebibytes) in enumerate(requests):
            resources = {"requests": {"cpu": f"{millicores}m", "memory": f"{mebibytes}Mi"}}
            annotations = {ANNOTATION_OUTCOME: "pending"}
            core_v1.create_namespaced_pod(
                NAMESPACE, pod_manifest(f"p{index}", annotations=annotations, resources=resources)
            )
        assert all_decided.wait(10)
        pods = core_v1.list_namespaced_pod(NAMESPACE).items

    used = {f"sim-node-{n}": [0, 0] for n in range(node_count)}
    wanted = {f"p{index}": request for index, request in enumerate(requests)}
    for pod in pods:
        if pod.spec.node_name:
            used[pod.spec.node_name][0] += wanted[pod.metadata.name][0]
            used[pod.spec.node_name][1] += wanted[pod.metadata.name][1]
    assert all(cpu <= 2000 and memory <= 2048 for cpu, memory in used.values())
    for pod in pods:
        if not pod.spec.node_name:
            cpu, memory = wanted[pod.metadata.name]
            assert all(cpu + c > 2000 or memory + m > 2048 for c, m in used.values())
            assert pod.status.conditions[0].reason == "Unschedulable"


@pytest.mark.parametrize(
    ("manifest", "blocked_reason", "log_complaint"),
    [
        (
            pod_manifest(
                "needs-secret",
                command=python("print('never')"),
                env=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "pw"}}}],
            ),
            "CreateContainerConfigError",
            "is waiting to start: CreateContainerConfigError",
        ),
        (
            pod_manifest(
                "bad-image", command=python("print('never')"), image="registry.example/x/unpullable:1"
            ),
            "ImagePullBackOff",
            "is waiting to start: trying and failing to pull image",
        ),
    ],
)
def test_the_process_kubelet_never_runs_a_container_it_could_not_create(
    process_v1: Any, manifest: dict[str, Any], blocked_reason: str, log_complaint: str
) -> None:
    name = manifest["metadata"]["name"]
    since = current_rv(process_v1)
    process_v1.create_namespaced_pod(NAMESPACE, manifest)

    events = watch_pod(process_v1, name, since, waiting_reason_is(blocked_reason))

    assert waiting_reason(events[-1][1]) == blocked_reason
    assert {pod.status.phase for _, pod in events} == {"Pending"}
    with pytest.raises(client.ApiException) as caught:  # no process ran, so there is no log
        process_v1.read_namespaced_pod_log(name, NAMESPACE)
    assert caught.value.status == 400
    assert (
        json.loads(str(caught.value.body))["message"] == f'container "base" in pod "{name}" {log_complaint}'
    )


def test_the_ip_of_a_removed_pod_goes_to_the_next_pod(cluster_v1: Any) -> None:
    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(
        NAMESPACE, pod_manifest("first", annotations={ANNOTATION_RUN_SECONDS: "600"})
    )
    first = watch_pod(cluster_v1, "first", since, phase_is("Running"))[-1][1]
    cluster_v1.delete_namespaced_pod("first", NAMESPACE, grace_period_seconds=0)
    watch_pod(cluster_v1, "first", first.metadata.resource_version, lambda kind, _p: kind == "DELETED")

    since = current_rv(cluster_v1)
    cluster_v1.create_namespaced_pod(
        NAMESPACE, pod_manifest("second", annotations={ANNOTATION_RUN_SECONDS: "600"})
    )
    second = watch_pod(cluster_v1, "second", since, phase_is("Running"))[-1][1]

    assert second.status.pod_ip == first.status.pod_ip


def test_pod_ips_of_a_node_stay_unique_and_inside_its_own_block() -> None:
    node_0, node_1 = PodAddressPool(0), PodAddressPool(1)
    taken = [node_0.take() for _ in range(600)]  # more than one /24 holds
    other_node = {node_1.take() for _ in range(600)}

    assert len(set(taken)) == len(taken)
    assert not other_node & set(taken)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.0.0/20") for ip in taken)
    node_0.release(taken[7])
    assert node_0.take() == taken[7]
    assert node_0.take() not in taken


def test_a_failing_control_loop_callback_is_recorded_and_the_loop_goes_on() -> None:
    loop = ControlLoop()
    later_ran = threading.Event()
    bug = KeyError("a kubelet bug")

    def broken() -> None:
        raise bug

    loop.start()
    try:
        loop.call_later(0, broken)
        loop.call_later(0, later_ran.set)
        assert later_ran.wait(5)
    finally:
        loop.stop()
    assert loop.errors == [bug]
