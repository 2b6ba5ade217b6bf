"""A real Airflow 3 deployment on one machine, wired to a :class:`~bridge.sim.stack.LocalStack`.

``airflow api-server``, ``airflow scheduler`` and ``airflow dag-processor`` run as subprocesses of this
interpreter's environment (the cached venv of ``make test-airflow``) against one SQLite database, with
``[core] executor`` set to the bridge's executor and ``[kubernetes_redis_bridge] kbridge_config`` pointing
at the stack's configuration. Worker pods get the Airflow settings they need through
``[kubernetes_environment_variables]``, as a real deployment would put them in the worker image or pod
template: the Task SDK in a pod talks to the API server only, never to the database.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.sim.stack import LocalStack, ManagedProcess
from tests.waiting import wait_until

DAGS = Path(__file__).parent / "dags"
EXECUTOR = "bridge.airflow_executor.RedisKubernetesExecutor"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_SCHEDULER_READY = re.compile(r"Starting the Redis Kubernetes executor")
_START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AirflowDeployment:
    """Airflow's three services plus the bridge stack, as a context manager; REST helpers for the tests."""

    def __init__(self, run_dir: Path, *, dispatchers: int = 2) -> None:
        self.run_dir = run_dir
        self.home = run_dir / "airflow-home"
        self.shared = run_dir / "shared"  # marker files written by task code
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, ManagedProcess] = {}
        self._restarts = 0
        for directory in (self.home, self.shared):
            directory.mkdir(parents=True, exist_ok=True)
        workers = self._worker_settings()
        self.stack = LocalStack(
            dispatchers=dispatchers,
            kubelet="process",
            profile="instant",
            run_dir=run_dir / "stack",
            settings={
                "kubernetes": {"delete_worker_pods": "False", "worker_pods_pending_timeout": "300"},
                "kubernetes_environment_variables": {**workers, "KBRIDGE_E2E_DIR": str(self.shared)},
            },
        )
        # The services share the SQLite database (the default one, in AIRFLOW_HOME) and the JWT secret.
        self.env = {
            **os.environ,
            **workers,
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": "kbridge-e2e-not-a-secret",
        }

    def _worker_settings(self) -> dict[str, str]:
        """What a worker pod needs: where the DAGs and the API server are. No secrets, no database."""
        return {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
        }

    def __enter__(self) -> AirflowDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- processes --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.stack.start()
        self.env |= {
            "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
            "AIRFLOW__KUBERNETES_REDIS_BRIDGE__KBRIDGE_CONFIG": str(self.stack.config_path),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Quick to notice a dead scheduler and adopt its tasks (defaults: 30 s and 300 s).
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "6",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "PYTHONUNBUFFERED": "1",
        }
        migrate = subprocess.run(
            [*self._airflow(), "db", "migrate"], env=self.env, capture_output=True, text=True, check=False
        )
        if migrate.returncode:
            raise RuntimeError(
                f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
            )
        self._spawn("api-server", ["api-server", "--port", str(self.port)])
        self._spawn("dag-processor", ["dag-processor"])
        self.start_scheduler()
        wait_until(self._api_up, "the API server to answer", timeout=_START_TIMEOUT_S, interval=0.5)

    def start_scheduler(self) -> ManagedProcess:
        name = "scheduler" if not self._restarts else f"scheduler-{self._restarts}"
        self._restarts += 1
        process = self._spawn("scheduler", ["scheduler"], log_name=name)
        process.wait_for_line(_SCHEDULER_READY, _START_TIMEOUT_S)
        return process

    def stop_scheduler(self, signum: int) -> int:
        """Stop the scheduler with ``signum`` (SIGKILL: no chance to hand anything over); its exit status."""
        process = self.processes.pop("scheduler")
        process.send(signum)
        return process.wait(60)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop(timeout_s=20)
        self.processes.clear()
        self.stack.stop()

    def _airflow(self) -> list[str]:
        airflow = Path(sys.executable).with_name("airflow")
        return [str(airflow)] if airflow.exists() else [sys.executable, "-m", "airflow"]

    def _spawn(self, role: str, args: list[str], *, log_name: str | None = None) -> ManagedProcess:
        log_path = self.run_dir / f"{log_name or role}.log"
        process = ManagedProcess(role, [*self._airflow(), *args], log_path, self.env)
        self.processes[role] = process
        return process

    def logs(self) -> str:
        """Every service's log tail, for a failing assertion."""
        return "\n\n".join(f"== {name}\n{process.tail(40)}" for name, process in self.processes.items())

    # --- REST API -----------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - our loopback API
            f"{self.base_url}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our loopback API
            return json.loads(response.read() or b"null")

    def _api_up(self) -> bool:
        try:
            self.api("GET", "/version")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def wait_for_dags(self, dag_ids: set[str], timeout: float = _START_TIMEOUT_S) -> None:
        def parsed() -> bool:
            found = {dag["dag_id"] for dag in self.api("GET", "/dags?limit=100")["dags"]}
            return dag_ids <= found or bool(self.import_errors())

        wait_until(parsed, f"the dag-processor to parse {sorted(dag_ids)}", timeout=timeout, interval=0.5)
        assert not self.import_errors(), self.import_errors()

    def import_errors(self) -> list[Any]:
        return list(self.api("GET", "/importErrors")["import_errors"])

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 240.0) -> str:
        def finished() -> bool:
            return self.run_state(dag_id, run_id) in TERMINAL_RUN_STATES

        try:
            wait_until(finished, f"DAG run {dag_id}/{run_id} to finish", timeout=timeout, interval=0.5)
        except BaseException:
            print(f"task states: {self.task_states(dag_id, run_id)}\n{self.logs()}")
            raise
        return self.run_state(dag_id, run_id)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str | None, int]]:
        """``task_id`` (``task_id[map_index]`` for mapped ones) -> (state, try_number)."""
        states = {}
        for ti in self.task_instances(dag_id, run_id):
            name = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            states[name] = (ti["state"], ti["try_number"])
        return states

    def executions(self) -> list[str]:
        """Marker lines written by task bodies (one per execution)."""
        path = self.shared / "executions.log"
        return path.read_text().splitlines() if path.exists() else []

    def release(self, run_id: str) -> None:
        (self.shared / f"release-{run_id}").touch()
