"""``make demo``: real task commands run as pods, end to end, on a machine with nothing but Python.

What runs today: ``kbridge sim`` (started through the CLI, process kubelet) plays the cluster; the bridge's
configuration loader and pod builder turn a dozen task tries into worker pods; the official ``kubernetes``
client creates them and watches them to their final state. The Redis queue, dispatchers and watcher join
this demo when the pipeline lands (issue 4); the commands stay the same.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from bridge.config import load_config
from bridge.executor_config import parse_executor_config
from bridge.naming import task_key_from_annotations
from bridge.task_key import TaskKey
from bridge.worker_pod import build_worker_pod, instance_selector

PY = sys.executable
SECRET_NAME, SECRET_KEY, SECRET_VALUE = "demo-credentials", "token", "s3cr3t-token"
TERMINAL = ("Succeeded", "Failed")
FATAL_WAITING = ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError")
DEADLINE_S = 60


@dataclass(frozen=True)
class DemoTask:
    task_id: str
    command: list[str]
    executor_config: dict[str, Any] | None = None
    expect: str = "Succeeded"
    map_index: int = -1

    @property
    def label(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


def tasks() -> list[DemoTask]:
    hello = [PY, "-c", "import platform; print('hello from', platform.python_implementation())"]
    squares = [PY, "-c", "print(sum(i * i for i in range(10**6)))"]
    secret = [PY, "-c", "import os; print('token length', len(os.environ['DEMO_TOKEN']))"]
    hog = [PY, "-c", "import time; b = b'x' * (400 * 2**20); time.sleep(10)"]
    return [
        DemoTask("hello", hello),
        DemoTask("sum_squares", squares),
        DemoTask("uses_secret_by_reference", secret),
        DemoTask("sleep_then_succeed", [PY, "-c", "import time; time.sleep(1.5); print('done')"]),
        *(DemoTask("shard", [PY, "-c", f"print('shard {i} of 4')"], map_index=i) for i in range(4)),
        DemoTask(
            "exit_3", [PY, "-c", "import sys; print('failing on purpose'); sys.exit(3)"], expect="Failed"
        ),
        DemoTask("missing_binary", ["/no/such/binary"], expect="Failed"),
        DemoTask(
            "over_memory_limit",
            hog,
            {"KubernetesExecutor": {"request_memory": "64Mi", "limit_memory": "128Mi"}},
            expect="Failed",
        ),
        DemoTask(
            "unpullable_image",
            [PY, "-c", "print('never runs')"],
            {
                "pod_override": {
                    "spec": {"containers": [{"name": "base", "image": "example.com/nonexistent:1"}]}
                }
            },
            expect="ErrImagePull",
        ),
    ]


def start_simulator(workdir: Path) -> tuple[subprocess.Popen[str], Path]:
    kubeconfig = workdir / "kubeconfig.yaml"
    args = ["sim", "--port", "0", "--kubeconfig", str(kubeconfig), "--kubelet", "process"]
    kbridge = str(Path(PY).with_name("kbridge"))  # the console script of this venv
    sim = subprocess.Popen([kbridge, *args], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    line = sim.stdout.readline()  # the simulator prints its URL once it serves
    if "serving" not in line:
        sim.kill()
        raise SystemExit(f"demo: the simulator did not start: {line!r}")
    print(f"$ kbridge {' '.join(args)}\n  {line.strip()}")
    return sim, kubeconfig


def outcome(pod: Any) -> tuple[str, str, str]:
    """(state, reason, exit code) of a pod, from its base container."""
    statuses = pod.status.container_statuses or []
    state = statuses[0].state if statuses else None
    if state is not None and state.terminated is not None:
        return pod.status.phase, state.terminated.reason or "", str(state.terminated.exit_code)
    if state is not None and state.waiting is not None and state.waiting.reason in FATAL_WAITING:
        return state.waiting.reason, state.waiting.message or "", ""
    return pod.status.phase or "Pending", "", ""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kbridge-demo-") as tmp:
        sim, kubeconfig = start_simulator(Path(tmp))
        try:
            return run(kubeconfig)
        finally:
            sim.terminate()  # the simulator kills every pod process it started, then exits
            sim.wait(timeout=30)


def run(kubeconfig: Path) -> int:
    kube_config = load_config(
        environ={
            "KBRIDGE__KUBERNETES__IN_CLUSTER": "False",
            "KBRIDGE__KUBERNETES__CONFIG_FILE": str(kubeconfig),
            "KBRIDGE__KUBERNETES__WORKER_CONTAINER_REPOSITORY": "apache/airflow",
            "KBRIDGE__KUBERNETES__WORKER_CONTAINER_TAG": "3.1.3",
            "KBRIDGE__KUBERNETES_SECRETS__DEMO_TOKEN": f"{SECRET_NAME}={SECRET_KEY}",
        }
    )
    # Typed as Any: the client's models accept the API-JSON dicts the bridge builds, its stubs do not.
    api_client: Any = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    core: Any = client.CoreV1Api(api_client)
    namespace = kube_config.namespace
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": SECRET_NAME}, "data": {SECRET_KEY: encoded}}
    )

    run_id = "manual__2026-11-23T00:00:00+00:00"
    demo_tasks = {t.label: t for t in tasks()}
    started = time.monotonic()
    for task in demo_tasks.values():
        key = TaskKey("bridge_demo", task.task_id, run_id, try_number=1, map_index=task.map_index)
        pod = build_worker_pod(key, task.command, parse_executor_config(task.executor_config), kube_config)
        assert SECRET_VALUE not in str(pod)  # secrets travel by secretKeyRef only
        core.create_namespaced_pod(namespace, pod)
    print(f"created {len(demo_tasks)} worker pods in namespace {namespace!r}")

    finished: dict[str, tuple[str, str, str, float]] = {}
    pod_names: dict[str, str] = {}
    stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(
        core.list_namespaced_pod,
        namespace,
        label_selector=instance_selector(kube_config),
        timeout_seconds=DEADLINE_S,
    ):
        pod = event["object"]
        key = task_key_from_annotations(pod.metadata.annotations)
        task_id = DemoTask(key.task_id, [], map_index=key.map_index).label
        pod_names[task_id] = pod.metadata.name
        state, reason, exit_code = outcome(pod)
        if task_id not in finished and (state in TERMINAL or state in FATAL_WAITING):
            finished[task_id] = (state, reason, exit_code, time.monotonic() - started)
            print(f"\r  {len(finished):2d}/{len(demo_tasks)} done", end="", flush=True)
        if len(finished) == len(demo_tasks):
            stream.stop()
    print()

    logs = {
        task_id: core.read_namespaced_pod_log(pod_names[task_id], namespace, container="base")
        for task_id, (state, *_rest) in finished.items()
        if state in TERMINAL
    }
    print(f"\n{'task':28} {'state':13} {'reason':22} {'exit':>4} {'secs':>5}  first log line")
    wrong = 0
    for task_id, task in demo_tasks.items():
        state, reason, exit_code, seconds = finished.get(task_id, ("(timed out)", "", "", 0.0))
        first_line = (logs.get(task_id) or "").strip().splitlines()[:1]
        mark = "" if state == task.expect else "   <-- expected " + task.expect
        wrong += bool(mark)
        row = f"{task_id:28} {state:13} {reason[:22]:22} {exit_code:>4} {seconds:5.1f}"
        print(f"{row}  {''.join(first_line)}{mark}")

    core.delete_collection_namespaced_pod(namespace, label_selector=instance_selector(kube_config))
    api_client.close()
    print(f"\n{len(demo_tasks) - wrong}/{len(demo_tasks)} tasks ended as expected; pods deleted")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
