"""``RedisKubernetesExecutor`` in this process, against the whole bridge as processes (Redis, simulator with
the scripted kubelet, dispatchers, watcher): workloads in, pods and Airflow events out.

Workloads are built as the scheduler builds them (``ExecuteTask`` with a ``TaskInstanceDTO``), without a
metadata database: the executor never touches one. Pods follow their ``sim.kbridge.io/*`` annotations, set
through ``pod_override`` like any DAG author would set labels.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.executors.workloads import ExecuteTask
from airflow.executors.workloads.base import BundleInfo
from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.utils.state import TaskInstanceState
from kubernetes.client import models as k8s

from bridge.airflow_config import SECTION
from bridge.airflow_executor import TASK_SDK_ARGV, WORKLOAD_ENV, RedisKubernetesExecutor
from bridge.config import ConfigError
from bridge.protocol import TryState, job_id_for
from bridge.sim.stack import LocalStack
from bridge.task_key import TaskKey
from tests.waiting import wait_until

TOKEN = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJ0ZXN0LXRpIn0.c2lnbmF0dXJlLW9mLXRoZS10ZXN0LXRva2Vu"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = {"kubernetes": {"delete_worker_pods": "False"}}
    with LocalStack(dispatchers=1, run_dir=tmp_path_factory.mktemp("stack"), settings=settings) as running:
        yield running


@pytest.fixture
def executor(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisKubernetesExecutor]:
    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__KBRIDGE_CONFIG", str(stack.config_path))
    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__CONSUMER_NAME", f"test-{uuid.uuid4().hex[:6]}")
    made = RedisKubernetesExecutor(parallelism=8)
    made.start()
    yield made
    made.end()


def workload(task_id: str, *, annotations: dict[str, str] | None = None, **config: Any) -> ExecuteTask:
    """An ``ExecuteTask`` as the scheduler makes it; ``annotations`` script the simulated pod."""
    executor_config = dict(config)
    if annotations:
        pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(annotations=annotations))
        executor_config["pod_override"] = pod
    ti = TaskInstanceDTO(
        id=uuid.uuid4(),
        dag_version_id=uuid.uuid4(),
        task_id=task_id,
        dag_id="airflow_executor_test",
        run_id=f"manual__{uuid.uuid4().hex[:8]}",
        try_number=1,
        map_index=-1,
        pool_slots=1,
        queue="default",
        priority_weight=1,
        executor_config=executor_config or None,
    )
    return ExecuteTask(
        ti=ti,
        dag_rel_path="dags/test.py",
        token=TOKEN,
        bundle_info=BundleInfo(name="dags-folder", version=None),
        log_path=None,
    )


def queue(executor: RedisKubernetesExecutor, *workloads: ExecuteTask) -> None:
    for item in workloads:
        executor.queue_workload(item, session=None)  # no DB needed
    executor.heartbeat()  # trigger_tasks -> _process_workloads, then sync


class Events:
    """Every event the executor reported during a test (``get_event_buffer`` hands each out once)."""

    def __init__(self, executor: RedisKubernetesExecutor) -> None:
        self.executor = executor
        self.seen: dict[Any, list[tuple[str, Any]]] = {}

    def wait_for(self, key: Any, state: str) -> Any:
        """The ``info`` of ``key``'s ``state`` event, once it arrives."""

        def arrived() -> bool:
            self.executor.sync()
            for event_key, (event_state, info) in self.executor.get_event_buffer().items():
                self.seen.setdefault(event_key, []).append((event_state, info))
            return any(seen_state == state for seen_state, _ in self.seen.get(key, []))

        wait_until(arrived, f"event {state} for {key}", timeout=30, interval=0.05)
        return next(info for seen_state, info in self.seen[key] if seen_state == state)


def pod_json(stack: LocalStack, name: str) -> dict[str, Any]:
    api = stack.core_v1()
    return dict(api.api_client.sanitize_for_serialization(api.read_namespaced_pod(name, stack.namespace)))


def test_workload_becomes_a_task_sdk_pod_whose_token_comes_from_a_secret(
    executor: RedisKubernetesExecutor, stack: LocalStack
) -> None:
    item = workload("held", annotations={"sim.kbridge.io/outcome": "pending"})
    queue(executor, item)
    name = job_id_for(TaskKey(*item.ti.key))
    api = stack.core_v1()
    wait_until(
        lambda: api.list_namespaced_pod(stack.namespace, field_selector=f"metadata.name={name}").items, "pod"
    )

    pod = pod_json(stack, name)
    [base] = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert base["args"] == list(TASK_SDK_ARGV)
    [variable] = [v for v in base["env"] if v["name"] == WORKLOAD_ENV]
    assert variable == {
        "name": WORKLOAD_ENV,
        "valueFrom": {"secretKeyRef": {"name": name, "key": WORKLOAD_ENV}},
    }
    assert TOKEN not in json.dumps(pod)

    # The dispatcher makes the pod own the Secret, then drops the values from Redis: wait for both.
    wait_until(
        lambda: api.read_namespaced_secret(name, stack.namespace).metadata.owner_references,
        "the pod to own its Secret",
    )
    wait_until(
        lambda: not stack.redis.exists(stack.keys.launch_secret(name)), "the launch values to leave Redis"
    )
    secret = api.read_namespaced_secret(name, stack.namespace)
    assert json.loads(base64.b64decode(secret.data[WORKLOAD_ENV])) == json.loads(item.model_dump_json())
    assert [(ref.kind, ref.name, ref.uid) for ref in secret.metadata.owner_references] == [
        ("Pod", name, pod["metadata"]["uid"])
    ]
    for key in stack.redis.scan_iter():  # launched: the token is nowhere in Redis any more
        if stack.redis.type(key) == b"hash":
            fields: dict[bytes, bytes] = stack.redis.hgetall(key)  # type: ignore[assignment]
            assert not any(TOKEN.encode() in value for value in fields.values()), key

    executor.revoke_task(ti=item.ti)  # the DTO has every field revoke_task reads
    assert item.ti.key not in executor.running
    wait_until(
        lambda: not api.list_namespaced_pod(stack.namespace, field_selector=f"metadata.name={name}").items,
        "the revoked pod to go",
    )
    wait_until(
        lambda: not api.list_namespaced_secret(stack.namespace, field_selector=f"metadata.name={name}").items,
        "its Secret to be garbage-collected",
    )
    # The revoked outcome is in the result stream once the record says so; sync() reads it, reports nothing.
    wait_until(lambda: _record_terminal(executor, name), "the try record to show the revoke")
    executor.sync()
    assert item.ti.key not in executor.get_event_buffer(), "revoke_task must not report an event"


def _record_terminal(executor: RedisKubernetesExecutor, job_id: str) -> bool:
    record = executor.core.records.get(job_id)
    return record is not None and record.terminal


def test_a_revoked_never_launched_try_can_be_queued_again_and_runs(
    executor: RedisKubernetesExecutor, stack: LocalStack
) -> None:
    """Airflow's answer to a task stuck in queued: revoke_task, then the same try is queued again."""
    stack.kill_dispatcher(-1)  # the only live dispatcher: nobody launches, the try stays queued
    try:
        item = workload("stuck")
        queue(executor, item)
        executor.revoke_task(ti=item.ti)
        assert item.ti.key not in executor.running
    finally:
        stack.add_dispatcher()
    queue(executor, item)
    assert Events(executor).wait_for(item.ti.key, TaskInstanceState.SUCCESS)


def test_outcomes_become_airflow_states_with_reason_and_exit_code(executor: RedisKubernetesExecutor) -> None:
    good = workload("good")
    bad = workload("bad", annotations={"sim.kbridge.io/outcome": "fail", "sim.kbridge.io/exit-code": "3"})
    queue(executor, good, bad)
    events = Events(executor)

    assert events.wait_for(good.ti.key, TaskInstanceState.SUCCESS).startswith("success")
    info = events.wait_for(bad.ti.key, TaskInstanceState.FAILED)
    assert "failed, Error, exit code 3" in info, info
    assert job_id_for(TaskKey(*bad.ti.key)) in info  # the pod to look at
    assert not {good.ti.key, bad.ti.key} & executor.running


def test_invalid_executor_config_fails_only_that_task(executor: RedisKubernetesExecutor) -> None:
    broken = workload("broken", pod_template_file=42)
    fine = workload("fine")
    queue(executor, broken, fine)
    events = Events(executor)

    info = events.wait_for(broken.ti.key, TaskInstanceState.FAILED)
    assert "pod_template_file" in info, info
    assert events.wait_for(fine.ti.key, TaskInstanceState.SUCCESS)


def test_a_restarted_scheduler_adopts_what_the_bridge_knows_and_returns_the_rest(
    executor: RedisKubernetesExecutor, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = workload("running", annotations={"sim.kbridge.io/outcome": "pending"})
    finished = workload("finished")
    queue(executor, running, finished)
    Events(executor).wait_for(finished.ti.key, TaskInstanceState.SUCCESS)
    never_sent = workload("never_sent")

    successor = RedisKubernetesExecutor(parallelism=8)  # same consumer name: the scheduler restarted
    successor.start()
    try:
        returned = successor.try_adopt_task_instances([running.ti, finished.ti, never_sent.ti])
        assert [ti.task_id for ti in returned] == ["never_sent"]
        assert {running.ti.key, finished.ti.key} <= successor.running
        assert successor.try_adopt_task_instances([running.ti]) == []  # adopting twice changes nothing
        successor.sync()
        events = successor.get_event_buffer()
        assert events[finished.ti.key][0] == TaskInstanceState.SUCCESS  # its record says how it ended
        assert running.ti.key in successor.running
    finally:
        successor.revoke_task(ti=running.ti)
        successor.end()


def test_while_redis_is_down_adoption_keeps_every_task_and_revokes_wait(
    executor: RedisKubernetesExecutor, stack: LocalStack
) -> None:
    """A scheduler restarting during a Redis outage: it must neither hand back a running try (a second pod)
    nor lose a revoke; both are settled once Redis answers."""
    launched = workload("launched", annotations={"sim.kbridge.io/outcome": "pending"})
    queue(executor, launched)
    name = job_id_for(TaskKey(*launched.ti.key))
    api = stack.core_v1()
    wait_until(lambda: _record_launched(executor, name), "the try to be launched")
    never_sent = workload("never_sent")
    assert stack.redis_server is not None
    successor = RedisKubernetesExecutor(parallelism=8)
    stack.redis_server.stop()
    try:
        assert successor.try_adopt_task_instances([launched.ti, never_sent.ti]) == []
        assert {launched.ti.key, never_sent.ti.key} <= successor.running
        successor.revoke_task(ti=launched.ti)  # Redis cannot take it yet
        successor.sync()
    finally:
        stack.redis_server.start()

    def settled() -> bool:
        successor.sync()
        return never_sent.ti.key not in successor.running

    wait_until(settled, "the never-sent try to be let go once Redis answers", timeout=30)
    wait_until(
        lambda: not api.list_namespaced_pod(stack.namespace, field_selector=f"metadata.name={name}").items,
        "the revoke sent after the outage to delete the pod",
        timeout=30,
    )
    assert launched.ti.key not in successor.running
    assert successor.get_event_buffer() == {}  # nothing failed: the never-sent try is Airflow's to requeue
    successor.end()


def _record_launched(executor: RedisKubernetesExecutor, job_id: str) -> bool:
    record = executor.core.records.get(job_id)
    return record is not None and record.state in (TryState.LAUNCHED, TryState.PENDING, TryState.RUNNING)


def test_running_task_log_is_read_from_its_pod(
    executor: RedisKubernetesExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = workload(
        "chatty",
        annotations={"sim.kbridge.io/log": "one\ntwo\nthree", "sim.kbridge.io/run-seconds": "30"},
    )
    queue(executor, item)
    Events(executor).wait_for(item.ti.key, TaskInstanceState.RUNNING)
    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__RUNNING_POD_LOG_LINES", "2")
    api_server = RedisKubernetesExecutor()  # as the API server has one: never started, only asked for logs

    messages, logs = api_server.get_task_log(item.ti, try_number=1)
    assert "Found logs through kube API" in messages, messages
    assert [line for log in logs for line in log.splitlines()] == ["two", "three"]
    messages, logs = api_server.get_task_log(item.ti, try_number=7)  # no such pod
    assert logs == []
    assert "Reading from k8s pod logs failed" in messages[-1]
    executor.revoke_task(ti=item.ti)


def test_airflow_section_overrides_the_bridge_file(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__KBRIDGE_CONFIG", str(stack.config_path))
    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__QUEUE_NAME", "airflow-tasks")
    made = RedisKubernetesExecutor()
    assert made.core.config.queue_name == "airflow-tasks"
    assert made.core.config.redis_url == stack.config.redis_url  # from the file

    monkeypatch.setenv(f"AIRFLOW__{SECTION.upper()}__REDIS_ULR", "redis://elsewhere")
    with pytest.raises(ConfigError, match=r"redis_ulr: unknown option \(did you mean 'redis_url'\?\)"):
        RedisKubernetesExecutor()
