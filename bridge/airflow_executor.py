"""Airflow 3's executor interface on the bridge (``[core] executor = <this module>.RedisKubernetesExecutor``).

Why a thin layer: the core :class:`~bridge.executor.KubernetesExecutor` already queues tries through Redis,
adopts them after a restart and turns the result stream into events; Airflow 3 only changed how tasks
arrive (workloads instead of commands) and a few verbs. This module maps one onto the other and is the
only one in ``bridge`` that imports Airflow (``pip install kube-redis-bridge[airflow]``).

* A workload (``ExecuteTask``) becomes a pod running the Task SDK entry point. The workload JSON carries the
  try's JWT, so it travels as a *launch secret*: written to Redis only until a dispatcher launches the pod,
  then held in a Secret owned by the pod and passed to the container by ``secretKeyRef``; the pod spec shows
  ``--json-string $(KBRIDGE_WORKLOAD_JSON)``, never the token.
* Events: ``running`` → :meth:`running_state`, ``success`` → :meth:`success`, anything else terminal →
  :meth:`fail` with the reason, message, exit code and pod in ``info``.
* A restarted scheduler adopts the tries whose launch was recorded in Redis (queued, launched or finished);
  only tries that never reached Redis are handed back to be scheduled again. While Redis is unreachable
  nothing is handed back (that would start a second pod for a running try): the tries are adopted and
  checked once Redis answers; one found never sent is let go, and Airflow's stuck-in-queued check queues it
  again.
* ``revoke_task`` forgets a try that never launched, so the scheduler can queue the same try again.
* ``end()`` and ``terminate()`` leave the pods running: a scheduler that starts later adopts them, as with
  Airflow's KubernetesExecutor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.executors.base_executor import PARALLELISM, BaseExecutor
from airflow.executors.workloads import ExecuteTask
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.sdk.observability.stats import Stats
from redis.exceptions import RedisError

from bridge.airflow_config import settings_from_airflow
from bridge.executor import RUNNING, SUCCESS, KubernetesExecutor
from bridge.kube_client import core_v1, request_args
from bridge.pod_template import BASE_CONTAINER
from bridge.protocol import Outcome, job_id_for
from bridge.task_key import TaskKey

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance

WORKLOAD_ENV = "KBRIDGE_WORKLOAD_JSON"
TASK_SDK_ARGV = (
    "python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", f"$({WORKLOAD_ENV})",
)  # fmt: skip
ADOPT_METRIC = "kubernetes_executor.adopt_task_instances.duration"  # the name Airflow's executor uses


class RedisKubernetesExecutor(BaseExecutor):
    """Runs Airflow 3 task workloads as Kubernetes pods through the bridge (see the module docstring)."""

    supports_ad_hoc_ti_run = True  # a workload is queued the same way whoever asked for it
    supports_callbacks = False  # ExecuteCallback workloads are refused by BaseExecutor.queue_workload
    supports_multi_team = False  # one bridge configuration per executor, not per team
    supports_connection_test = False
    is_local = False
    is_production = True
    serve_logs = False  # logs come from the pod (get_task_log) or remote logging

    def __init__(self, parallelism: int = PARALLELISM, team_name: str | None = None) -> None:
        super().__init__(parallelism=parallelism, team_name=team_name)
        settings = settings_from_airflow(self.conf)
        self.core = KubernetesExecutor(settings.config)
        self._log_lines = settings.running_pod_log_lines
        self._kube_api: Any = None  # built on first get_task_log: the scheduler itself never needs it
        self._unverified: set[TaskKey] = set()  # adopted while Redis was unreachable
        self._unsent_revokes: set[TaskKey] = set()  # revoke_task calls Redis did not take yet

    def start(self) -> None:
        self.log.info("Starting the Redis Kubernetes executor (job id %s)", self.job_id)
        self.core.start()

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        for workload in workloads:
            if not isinstance(workload, ExecuteTask):  # BaseExecutor.queue_workload lets no other kind in
                self.log.error("Cannot run workload %r: only ExecuteTask workloads are supported", workload)
                continue
            key = workload.ti.key
            self.queued_tasks.pop(key, None)
            self.log.debug("Add task %s with command %s", key, list(TASK_SDK_ARGV))
            self.core.execute_async(
                key,
                list(TASK_SDK_ARGV),
                executor_config=workload.ti.executor_config or None,
                secret_env={WORKLOAD_ENV: workload.model_dump_json()},
            )
            self.running.add(key)

    def sync(self) -> None:
        if self._unsent_revokes:
            for key in sorted(self._unsent_revokes):
                self._revoke(key)
        self.core.sync()
        if self._unverified:
            self._verify_adopted()
        for key, (state, outcome) in self.core.get_event_buffer().items():
            ti_key = TaskInstanceKey(*key)
            if state == RUNNING:  # Airflow keeps this as the try's external_executor_id: the pod's name
                self.running_state(ti_key, outcome.pod or job_id_for(key))
            elif state == SUCCESS:
                self.success(ti_key, _info(outcome))
            else:
                self.fail(ti_key, _info(outcome))

    def end(self) -> None:
        """Send what is queued; running pods go on (see the module docstring)."""
        self.log.info(
            "Shutting down the Redis Kubernetes executor; %d task(s) keep running", len(self.running)
        )
        self.core.flush()

    def terminate(self) -> None:
        """As :meth:`end`: the pods are not the scheduler's to kill; a later scheduler adopts them."""
        self.end()

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Stop one try (dequeue it or delete its pod) and forget it, without reporting any event.

        A try that never launched is forgotten entirely, so the scheduler may queue the same try again
        (as it does for tasks stuck in queued). While Redis is unreachable the revoke is retried by sync().
        """
        key = TaskKey(*ti.key)
        self.queued_tasks.pop(ti.key, None)
        self.running.discard(ti.key)
        self._unverified.discard(key)
        self._revoke(key)

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """Adopt the tries the bridge knows (queued, launched or finished); return the ones it never saw."""
        with Stats.timer(ADOPT_METRIC):
            by_key = {TaskKey(*ti.key): ti for ti in tis if ti.key not in self.running}
            not_launched = self.core.adopt(list(by_key)) if by_key else []
            if not_launched is None:  # Redis unreachable: keep them all, check later
                self.log.warning("Redis unreachable: adopting %d task(s) unchecked", len(by_key))
                self._unverified.update(by_key)
                not_launched = []
            reset = [by_key[key] for key in not_launched]
            for key in by_key.keys() - set(not_launched):
                self.running.add(TaskInstanceKey(*key))
                self.log.info("Adopted task %s", key)
        return reset

    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """The last ``running_pod_log_lines`` lines of the try's pod, read through the Kubernetes API."""
        key = TaskKey(ti.dag_id, ti.task_id, ti.run_id, try_number, ti.map_index)
        pod, namespace = job_id_for(key), self.core.config.namespace
        try:  # the namespace the dispatcher used; without Redis, our own configuration's is as good a guess
            record = self.core.records.get(pod)
        except RedisError:
            record = None
        if record is not None and record.namespace:
            namespace = record.namespace
        messages = [f"Attempting to fetch logs from pod {pod} through kube API"]
        try:
            if self._kube_api is None:
                self._kube_api = core_v1(self.core.config)
            response = self._kube_api.read_namespaced_pod_log(
                pod,
                namespace,
                container=BASE_CONTAINER,
                tail_lines=self._log_lines,
                _preload_content=False,  # raw bytes: some client versions return str(bytes) otherwise
                **request_args(self.core.config),
            )
            text = response.data.decode("utf-8", errors="replace")
        except Exception as exc:  # a log view must never break the UI
            messages.append(f"Reading from k8s pod logs failed: {exc}")
            return messages, []
        messages.append("Found logs through kube API")
        return messages, [text]

    def _verify_adopted(self) -> None:
        not_launched = self.core.adopt(sorted(self._unverified))
        if not_launched is None:
            return
        self._unverified.clear()
        for key in not_launched:
            # The old scheduler never sent it, and it cannot be handed back now: let it go, and Airflow's
            # check for tasks stuck in queued revokes it and queues it again.
            self.running.discard(TaskInstanceKey(*key))
            self.log.warning("Task %s was adopted while Redis was unreachable but was never sent", key)

    def _revoke(self, key: TaskKey) -> None:
        try:
            revoked = self.core.revoke(key, report=False)
            if not revoked:
                self.core.redis.ping()  # False also means "Redis failed": a ping tells the two apart
        except Exception as exc:  # revoke_task must not raise into the scheduler
            self.log.warning("Could not revoke %s yet (%s); will retry", key, exc)
            self._unsent_revokes.add(key)
            return
        self._unsent_revokes.discard(key)
        if revoked:
            self.log.info("Revoked %s", key)
        else:
            self.log.info("Nothing to revoke for %s: it has finished or was never sent", key)


def _info(outcome: Outcome) -> str:
    """One line for Airflow's event log: what ended the try, and where."""
    parts = [outcome.state.value]
    if outcome.reason:
        parts.append(outcome.reason)
    if outcome.exit_code is not None:
        parts.append(f"exit code {outcome.exit_code}")
    text = ", ".join(parts)
    if outcome.message:
        text += f": {outcome.message}"
    if outcome.pod:
        text += f" (pod {outcome.namespace}/{outcome.pod})" if outcome.namespace else f" (pod {outcome.pod})"
    return text
