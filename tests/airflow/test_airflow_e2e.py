"""Real Airflow 3 runs real DAGs through the bridge: scheduler, API server and dag-processor as processes,
our dispatchers and watcher, and the simulator's process kubelet running the Task SDK command of each pod.

One deployment serves every scenario (starting Airflow takes most of a minute on two cores); each scenario
triggers its own DAG run and checks the final task-instance states through Airflow's REST API, plus what
only the bridge can show: the pods, the Secrets and Redis.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bridge.naming import RUN_ID_KEY, TASK_ID_KEY
from bridge.sim.stack import PodCreations
from tests.airflow.deployment import AirflowDeployment
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

DAG_IDS = {
    "kbridge_success",
    "kbridge_failing",
    "kbridge_retries",
    "kbridge_mapped",
    "kbridge_executor_config",
    "kbridge_hold",
}
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowDeployment]:
    with AirflowDeployment(tmp_path_factory.mktemp("airflow")) as deployment:
        deployment.wait_for_dags(DAG_IDS)
        yield deployment


def _run_id(dag_id: str) -> str:
    return f"{dag_id}-{uuid.uuid4().hex[:8]}"


def _executions(airflow: AirflowDeployment, prefix: str) -> list[str]:
    return [line for line in airflow.executions() if line.startswith(prefix)]


def _redis_values(client: redis.Redis) -> Iterator[tuple[bytes, str]]:
    """(key, value) for every string, hash field, list item and stream field in the database."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[Any] = []
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = list(client.hgetall(key).values())
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"stream":
            entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
            values = [value for _, fields in entries for value in fields.values()]
        for value in values:
            yield key, value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def test_succeeding_task(airflow: AirflowDeployment) -> None:
    run_id = _run_id("success")
    airflow.trigger("kbridge_success", run_id)
    assert airflow.wait_for_run("kbridge_success", run_id) == "success"
    assert airflow.task_states("kbridge_success", run_id) == {"hello": ("success", 1)}
    assert len(_executions(airflow, f"kbridge_success.hello.{run_id} try=1")) == 1


def test_failing_task(airflow: AirflowDeployment) -> None:
    run_id = _run_id("failing")
    airflow.trigger("kbridge_failing", run_id)
    assert airflow.wait_for_run("kbridge_failing", run_id) == "failed"
    assert airflow.task_states("kbridge_failing", run_id) == {"boom": ("failed", 1)}
    assert len(_executions(airflow, f"kbridge_failing.boom.{run_id}")) == 1


def test_task_with_retries(airflow: AirflowDeployment) -> None:
    run_id = _run_id("retries")
    airflow.trigger("kbridge_retries", run_id)
    assert airflow.wait_for_run("kbridge_retries", run_id) == "success"
    assert airflow.task_states("kbridge_retries", run_id) == {"flaky": ("success", 2)}
    tries = _executions(airflow, f"kbridge_retries.flaky.{run_id}")
    assert [line.split()[1] for line in tries] == ["try=1", "try=2"]


def test_mapped_task(airflow: AirflowDeployment) -> None:
    run_id = _run_id("mapped")
    airflow.trigger("kbridge_mapped", run_id)
    assert airflow.wait_for_run("kbridge_mapped", run_id) == "success"
    assert airflow.task_states("kbridge_mapped", run_id) == {
        "square[0]": ("success", 1),
        "square[1]": ("success", 1),
        "square[2]": ("success", 1),
        "total": ("success", 1),
    }


def test_executor_config_shapes_each_pod(airflow: AirflowDeployment) -> None:
    run_id = _run_id("config")
    airflow.trigger("kbridge_executor_config", run_id)
    assert airflow.wait_for_run("kbridge_executor_config", run_id) == "success"
    pods = {
        pod.metadata.annotations[TASK_ID_KEY]: pod
        for pod in airflow.stack.core_v1().list_namespaced_pod("default").items
        if pod.metadata.annotations[RUN_ID_KEY] == run_id
    }
    assert sorted(pods) == ["legacy", "sized", "templated"]

    def resources(task_id: str) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        [base] = [container for container in pods[task_id].spec.containers if container.name == "base"]
        return base.resources.requests, base.resources.limits

    assert resources("sized") == ({"cpu": "250m", "memory": "200Mi"}, {"memory": "1Gi"})  # pod_override
    assert pods["sized"].metadata.labels["team"] == "data-platform"
    assert resources("templated") == ({"memory": "150Mi"}, None)  # pod_template_file
    assert pods["templated"].metadata.labels["template"] == "from-file"
    assert resources("legacy") == ({"cpu": "100m"}, {"memory": "800Mi"})  # the 1.10 dict


def test_workload_token_is_in_no_pod_spec_and_not_left_in_redis(airflow: AirflowDeployment) -> None:
    run_id = _run_id("token")
    airflow.trigger("kbridge_success", run_id)
    assert airflow.wait_for_run("kbridge_success", run_id) == "success"
    api = airflow.stack.core_v1()
    pods = api.list_namespaced_pod("default").items
    assert pods
    for pod in pods:
        text = json.dumps(api.api_client.sanitize_for_serialization(pod))
        assert not JWT.search(text), f"a JWT is readable in the spec of pod {pod.metadata.name}"
        [base] = [container for container in pod.spec.containers if container.name == "base"]
        assert base.args[-1] == "$(KBRIDGE_WORKLOAD_JSON)"
    for key, value in _redis_values(airflow.stack.redis):
        assert not JWT.search(value), f"a JWT lingers in Redis key {key!r}"
    # Finished pods are kept (delete_worker_pods = False) but their workload Secrets are gone.
    finished = {pod.metadata.name for pod in pods if pod.status.phase in ("Succeeded", "Failed")}
    assert finished

    def secrets_of_finished_pods() -> set[str]:
        return finished & {secret.metadata.name for secret in api.list_namespaced_secret("default").items}

    wait_until(lambda: not secrets_of_finished_pods(), "the watcher to delete the finished pods' Secrets")


@pytest.mark.parametrize(
    ("stop_signal", "finish_while_down"),
    [(signal.SIGKILL, False), (signal.SIGTERM, True)],
    ids=["killed-then-adopted", "stopped-while-tasks-finish"],
)
def test_scheduler_restart_loses_and_duplicates_nothing(
    airflow: AirflowDeployment, stop_signal: int, finish_while_down: bool
) -> None:
    """Three tasks run while the scheduler goes away and a new one starts: a crash (SIGKILL) with the tasks
    still running, whose pods the new scheduler must adopt; or a clean stop (SIGTERM) during which the tasks
    finish. Either way each task body runs once, each try has one pod, and the run succeeds."""
    run_id = _run_id("hold")
    prefix = "kbridge_hold.hold["
    with PodCreations(airflow.stack.sim_url) as creations:
        airflow.trigger("kbridge_hold", run_id)

        def all_running() -> bool:
            states = airflow.task_states("kbridge_hold", run_id)
            started = {line.split()[0] for line in _executions(airflow, prefix) if run_id in line}
            return len(started) == 3 and all(state == "running" for state, _ in states.values())

        wait_until(all_running, "the three held tasks to run", timeout=240, interval=0.5)
        airflow.stop_scheduler(stop_signal)
        if finish_while_down:
            airflow.release(run_id)
            wait_until(
                lambda: _pod_phases(airflow, run_id) == ["Succeeded"] * 3,
                "the three pods to finish while no scheduler runs",
                timeout=120,
                interval=0.5,
            )
        scheduler = airflow.start_scheduler()
        if not finish_while_down:
            adopted = re.compile(rf"Adopted task .*run_id='{re.escape(run_id)}'")
            wait_until(
                lambda: len(adopted.findall(scheduler.output())) == 3,
                "the new scheduler to adopt the three running tasks",
                timeout=120,
                interval=0.5,
            )
            airflow.release(run_id)
        assert airflow.wait_for_run("kbridge_hold", run_id) == "success"
        creations.wait_caught_up()
        assert not creations.duplicates()
        pods = [name for name in creations.added if name.startswith("kbridgehold-hold-")]
    assert airflow.task_states("kbridge_hold", run_id) == {
        "hold[0]": ("success", 1),
        "hold[1]": ("success", 1),
        "hold[2]": ("success", 1),
    }
    bodies = Counter(line.split()[0] for line in _executions(airflow, prefix) if run_id in line)
    assert bodies == {f"kbridge_hold.hold[{i}].{run_id}": 1 for i in range(3)}, "a task body ran twice"
    assert len([name for name in pods if _run_of(airflow, name) == run_id]) == 3


def _pod_phases(airflow: AirflowDeployment, run_id: str) -> list[str]:
    pods = airflow.stack.core_v1().list_namespaced_pod("default").items
    return [pod.status.phase for pod in pods if pod.metadata.annotations[RUN_ID_KEY] == run_id]


def _run_of(airflow: AirflowDeployment, pod_name: str) -> str:
    pod = airflow.stack.core_v1().read_namespaced_pod(pod_name, "default")
    return str(pod.metadata.annotations[RUN_ID_KEY])


def test_running_task_log_comes_from_its_pod(airflow: AirflowDeployment) -> None:
    run_id = _run_id("log")
    airflow.trigger("kbridge_hold", run_id)
    wait_until(
        lambda: airflow.task_states("kbridge_hold", run_id).get("hold[0]", (None, 0))[0] == "running",
        "hold[0] to run",
        timeout=240,
        interval=0.5,
    )
    path = f"/dags/kbridge_hold/dagRuns/{run_id}/taskInstances/hold/logs/1?map_index=0&full_content=true"
    seen: list[str] = []

    def task_output_shown() -> bool:  # the task prints once it runs; the UI shows the pod's log
        seen.append(json.dumps(airflow.api("GET", path)))
        return "hold 0 is waiting for its release" in seen[-1]

    try:
        wait_until(task_output_shown, "the running task's own output in its log", timeout=60, interval=0.5)
    finally:
        airflow.release(run_id)
    assert "Found logs through kube API" in seen[-1], seen[-1][:2000]
    assert airflow.wait_for_run("kbridge_hold", run_id) == "success"
