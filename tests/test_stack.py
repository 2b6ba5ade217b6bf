"""LocalStack, the harness of the demo and the end-to-end test: it starts, waits by events, disrupts on
request and leaves no process behind. Real Redis, real ``kbridge`` subprocesses, the simulator over HTTP."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.config import ConfigError
from bridge.protocol import job_id_for
from bridge.redis_server import RedisServer
from bridge.sim.stack import (
    LocalStack,
    ManagedProcess,
    PodCreations,
    StackError,
    processes_of_run,
    wait_until,
)
from bridge.task_key import TaskKey
from bridge.worker_pod import build_worker_pod

pytestmark = pytest.mark.timeout(90)


def _phase(core_v1: Any, name: str, namespace: str) -> str | None:
    phase: str | None = core_v1.read_namespaced_pod(name, namespace).status.phase
    return phase


def _names(core_v1: Any, namespace: str) -> set[str]:
    return {pod.metadata.name for pod in core_v1.list_namespaced_pod(namespace).items}


def test_redis_and_simulator_start_and_stop_without_leaving_processes(tmp_path: Path) -> None:
    stack = LocalStack(dispatchers=0, watchers=0, kubelet="process", run_dir=tmp_path)
    with stack:
        assert stack.redis.ping()
        assert stack.config.redis_url == stack.redis_url
        assert stack.config.config_file == stack.kubeconfig_path
        assert stack.config.kubernetes_environment_variables["KBRIDGE_STACK_RUN"] == stack.run_id
        core_v1 = stack.core_v1()
        # A worker pod built from the stack's configuration runs a real process carrying the run marker.
        key = TaskKey("stack", "sleeper", "run")
        pod = build_worker_pod(key, [sys.executable, "-c", "import time; time.sleep(60)"], None, stack.config)
        core_v1.create_namespaced_pod(stack.namespace, pod)
        wait_until(lambda: _phase(core_v1, job_id_for(key), stack.namespace) == "Running", 10, "pod running")
        assert stack.sim is not None
        running = processes_of_run(stack.run_id)
        assert stack.sim.pid in running
        assert len(running) == 2  # the simulator and the pod's process
        core_v1.api_client.close()
        redis_server = stack.redis_server
        assert redis_server is not None
    codes = stack.stop()
    assert codes == {"sim": 0}
    assert processes_of_run(stack.run_id) == []
    assert not redis_server.running
    assert "kbridge sim: serving" in (tmp_path / "sim.log").read_text()


def test_pod_creations_are_counted_per_name_across_deletions(tmp_path: Path) -> None:
    with (
        LocalStack(dispatchers=0, watchers=0, run_dir=tmp_path) as stack,
        PodCreations(stack.sim_url, stack.namespace) as creations,
    ):
        core_v1 = stack.core_v1()
        for name in ("twice", "once", "twice"):
            core_v1.create_namespaced_pod(stack.namespace, _pod(name))
            if name == "twice":
                core_v1.delete_namespaced_pod(name, stack.namespace, grace_period_seconds=0)
                wait_until(lambda: "twice" not in _names(core_v1, stack.namespace), 10, "the pod gone")
        creations.wait_caught_up()
        core_v1.api_client.close()
        assert creations.added == {"twice": 2, "once": 1}
        assert creations.duplicates() == {"twice": 2}
        assert len(creations.uids["twice"]) == 2
        assert creations.errors == []


def test_a_given_redis_is_used_and_left_running(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    with LocalStack(dispatchers=0, watchers=0, redis_url=redis_server.url) as stack:
        assert stack.config.redis_url == redis_server.url
        assert stack.redis_server is None
        stack.redis.set("written-through-the-stack", "1")
        with pytest.raises(StackError, match="needs the stack's own Redis"):
            stack.restart_redis()
    assert redis_server.running
    assert redis_client.get("written-through-the-stack") == b"1"
    assert not stack.run_dir.exists()  # a run directory of its own is removed


def test_a_bad_setting_fails_the_start_with_its_name_and_stops_what_started(tmp_path: Path) -> None:
    stack = LocalStack(
        dispatchers=1, run_dir=tmp_path, settings={"bridge": {"dispatcher_lease_seconds": "often"}}
    )
    with pytest.raises(ConfigError, match="dispatcher_lease_seconds"):
        stack.start()
    assert stack.dispatchers == []
    assert stack.sim is not None
    assert stack.sim.returncode == 0
    assert processes_of_run(stack.run_id) == []


def test_a_process_that_dies_before_it_is_ready_is_reported_with_its_output(tmp_path: Path) -> None:
    code = "import sys; print('cannot start: port taken'); sys.exit(3)"
    process = ManagedProcess("broken", [sys.executable, "-c", code], tmp_path / "broken.log", {})
    with pytest.raises(StackError, match=r"broken exited with status 3; last output:\ncannot start"):
        process.wait_for_line(re.compile("serving"), timeout_s=30)
    assert (tmp_path / "broken.log").read_text() == "cannot start: port taken\n"


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(StackError, match=r"timed out after 0.05 s waiting for the answer"):
        wait_until(lambda: None, 0.05, "the answer")
    assert wait_until(lambda: 42, 1, "the answer") == 42


@pytest.mark.slow
def test_workers_start_ready_and_survive_the_disruptions_the_stack_offers(tmp_path: Path) -> None:
    with LocalStack(dispatchers=1, watchers=1, run_dir=tmp_path) as stack:
        assert stack.alive_dispatchers() == ["dispatcher-1"]
        assert stack.watcher_leader() == "watcher-1"

        assert stack.kill_dispatcher(0) == -signal.SIGKILL
        second = stack.add_dispatcher()
        assert second.name == "dispatcher-2"
        assert "dispatcher-2" in stack.alive_dispatchers()

        new_watcher = stack.restart_watcher()
        assert stack.watchers[0].returncode == 0  # SIGTERM: a clean exit that released the lease
        assert stack.watcher_leader() == new_watcher.name == "watcher-2"

        stack.restart_redis(hard=True)
        assert stack.redis.ping()
        wait_until(lambda: "dispatcher-2" in stack.alive_dispatchers(), 15, "a heartbeat after the restart")
        wait_until(lambda: stack.watcher_leader() == "watcher-2", 15, "the lease renewed after the restart")
        # The pipeline still works end to end: one try from the stack's executor to a pod and back.
        executor = stack.executor()
        executor.start()
        key = TaskKey("stack", "after_restarts", "run")
        executor.execute_async(key, ["python", "-c", "pass"])
        executor.end(timeout=20)
        state, outcome = executor.get_event_buffer()[key]
        assert (state, outcome.exit_code) == ("success", 0)
    codes = stack.stop()
    assert codes == {
        "dispatcher-1": -signal.SIGKILL,
        "dispatcher-2": 0,
        "watcher-1": 0,
        "watcher-2": 0,
        "sim": 0,
    }
    assert processes_of_run(stack.run_id) == []


def _pod(name: str) -> dict[str, object]:
    container = {"name": "base", "image": "python:3.12-slim", "command": ["true"]}
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}}
