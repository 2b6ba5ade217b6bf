"""DAGs run by tests/airflow/test_airflow_e2e.py through the bridge, one behaviour each.

Task code really runs: the simulator's process kubelet starts the Task SDK entry point from each pod's args.
``KBRIDGE_E2E_DIR`` (set on the worker pods by the test's bridge configuration) is where tasks leave marker
files, so the test can see how many times each task body ran.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

START = datetime(2026, 1, 1)
RELEASE_TIMEOUT_SECONDS = 300


def _shared_dir() -> Path:
    return Path(os.environ["KBRIDGE_E2E_DIR"])


def _mark(name: str, try_number: int) -> None:
    """One line per execution of a task body, written atomically (O_APPEND, one write)."""
    line = f"{name} try={try_number} pid={os.getpid()}\n"
    with (_shared_dir() / "executions.log").open("a") as log:
        log.write(line)


@dag(dag_id="kbridge_success", schedule=None, start_date=START, catchup=False)
def kbridge_success() -> None:
    @task
    def hello(ti: Any = None) -> int:
        _mark(f"kbridge_success.hello.{ti.run_id}", ti.try_number)
        print("hello from a bridge pod")
        return 42

    hello()


@dag(dag_id="kbridge_failing", schedule=None, start_date=START, catchup=False)
def kbridge_failing() -> None:
    @task(retries=0)
    def boom(ti: Any = None) -> None:
        _mark(f"kbridge_failing.boom.{ti.run_id}", ti.try_number)
        raise RuntimeError("this task fails on purpose")

    boom()


@dag(dag_id="kbridge_retries", schedule=None, start_date=START, catchup=False)
def kbridge_retries() -> None:
    @task(retries=2, retry_delay=timedelta(seconds=1))
    def flaky(ti: Any = None) -> str:
        _mark(f"kbridge_retries.flaky.{ti.run_id}", ti.try_number)
        if ti.try_number < 2:
            raise RuntimeError(f"try {ti.try_number} fails on purpose")
        return "second try worked"

    flaky()


@dag(dag_id="kbridge_mapped", schedule=None, start_date=START, catchup=False)
def kbridge_mapped() -> None:
    @task
    def square(x: int, ti: Any = None) -> int:
        _mark(f"kbridge_mapped.square[{ti.map_index}].{ti.run_id}", ti.try_number)
        return x * x

    @task
    def total(values: list[int]) -> int:
        result = sum(values)
        if result != 14:
            raise ValueError(f"expected 1 + 4 + 9 = 14, got {result}")
        return result

    total(square.expand(x=[1, 2, 3]))


SIZED_RESOURCES = k8s.V1ResourceRequirements(
    requests={"cpu": "250m", "memory": "200Mi"}, limits={"memory": "1Gi"}
)


@dag(dag_id="kbridge_executor_config", schedule=None, start_date=START, catchup=False)
def kbridge_executor_config() -> None:
    """The three executor_config forms: pod_override (a V1Pod), pod_template_file, the 1.10 dict."""

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(labels={"team": "data-platform"}),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", resources=SIZED_RESOURCES)]),
            )
        }
    )
    def sized(ti: Any = None) -> None:
        _mark(f"kbridge_executor_config.sized.{ti.run_id}", ti.try_number)

    @task(executor_config={"pod_template_file": str(Path(__file__).with_name("pod_template.yaml"))})
    def templated(ti: Any = None) -> None:
        _mark(f"kbridge_executor_config.templated.{ti.run_id}", ti.try_number)

    @task(executor_config={"KubernetesExecutor": {"request_cpu": "100m", "limit_memory": "800Mi"}})
    def legacy(ti: Any = None) -> None:
        _mark(f"kbridge_executor_config.legacy.{ti.run_id}", ti.try_number)

    sized()
    templated()
    legacy()


@dag(dag_id="kbridge_hold", schedule=None, start_date=START, catchup=False)
def kbridge_hold() -> None:
    """Tasks that run until the test writes ``release-<run id>``: used to restart the scheduler under them."""

    @task
    def hold(n: int, ti: Any = None) -> int:
        _mark(f"kbridge_hold.hold[{ti.map_index}].{ti.run_id}", ti.try_number)
        print(f"hold {ti.map_index} is waiting for its release")
        release = _shared_dir() / f"release-{ti.run_id}"
        deadline = time.monotonic() + RELEASE_TIMEOUT_SECONDS
        while not release.exists():  # the task polls: it is the test's stand-in for real work
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.2)
        return n

    hold.expand(n=[0, 1, 2])


kbridge_success()
kbridge_failing()
kbridge_retries()
kbridge_mapped()
kbridge_executor_config()
kbridge_hold()
