"""``make bench``, part two: task tries through the whole pipeline, as deployed (one process per role).

What it measures, for each simulator profile and dispatcher count:

* **Throughput**: a burst of ``--tasks`` tries queued in one scheduler loop; pods created per second, from
  the first ``execute_async`` to the last pod's creation as seen by an independent watch on the simulator.
* **Latency added by the bridge**, from a paced phase (tries submitted at a steady rate well below the
  measured throughput, so queueing does not dominate): ``execute_async`` → pod created, and pod terminal
  (seen by that same watch) → the outcome returned by ``sync()``. The simulator's own create latency is
  measured in the same run with direct API calls, so the two can be told apart.

The stack is :class:`~bridge.sim.stack.LocalStack` with the scripted kubelet: pods succeed at once, so the
numbers are the bridge's, not a workload's. The benchmark reports; it does not gate anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bridge.executor import KubernetesExecutor
from bridge.protocol import job_id_for
from bridge.sim.bench import percentile
from bridge.sim.profiles import PROFILES
from bridge.sim.stack import LocalStack, PodCreations, wait_until
from bridge.task_key import TaskKey
from bridge.worker_pod import INSTANCE_LABEL

_TERMINAL_PHASES = ("Succeeded", "Failed")
# The paced phase calls sync() this often, so the poll interval barely adds to the measured latency; the
# burst phase polls like a busy scheduler loop, leaving the CPU to the processes whose throughput it measures.
_PACED_POLL_S = 0.002
REDIS_APPENDFSYNC = "everysec"
_BURST_POLL_S = 0.05


class PodTimes(PodCreations):
    """:class:`PodCreations` that also notes when each pod was created and when it finished (bench clock).

    Long watch stretches: the reconnect between two stretches would otherwise show up as latency.
    """

    stretch_seconds = 60

    def __init__(self, sim_url: str, namespace: str = "default") -> None:
        super().__init__(sim_url, namespace)
        self.created_at: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}

    def _apply(self, event: dict[str, Any]) -> None:
        seen = time.perf_counter()
        pod = event["object"]
        name = pod.get("metadata", {}).get("name", "")
        if event["type"] == "ADDED":
            self.created_at.setdefault(name, seen)
        if pod.get("status", {}).get("phase") in _TERMINAL_PHASES:
            self.finished_at.setdefault(name, seen)
        super()._apply(event)


@dataclass
class CaseResult:
    profile: str
    dispatchers: int
    tasks: int
    pods_per_second: float
    burst_seconds: float
    paced_tasks: int
    paced_rate: float
    created_p50_ms: float
    created_p99_ms: float
    synced_p50_ms: float
    synced_p99_ms: float
    sim_create_p50_ms: float
    sim_create_p99_ms: float


def _ms(values: Sequence[float], fraction: float) -> float:
    return round(1000 * percentile(values, fraction), 2)


def _keys(prefix: str, count: int) -> list[TaskKey]:
    return [TaskKey("bench", f"task_{index}", prefix) for index in range(count)]


def _sync_once(executor: KubernetesExecutor, synced_at: dict[str, float], poll_s: float) -> None:
    """One scheduler-loop ``sync()``; notes when each try's end came out of it."""
    executor.sync()
    now = time.perf_counter()
    for key, (state, _info) in executor.get_event_buffer().items():
        if state != "running":
            synced_at.setdefault(job_id_for(key), now)
    time.sleep(poll_s)


def _drain(
    executor: KubernetesExecutor, synced_at: dict[str, float], wanted: int, timeout_s: float, poll_s: float
) -> None:
    """Call ``sync()`` like a scheduler loop until ``wanted`` tries have ended."""
    deadline = time.monotonic() + timeout_s
    while len(synced_at) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(synced_at)} of {wanted} tries ended within {timeout_s:g} s")
        _sync_once(executor, synced_at, poll_s)


def _version_without_pods(stack: LocalStack) -> int | None:
    """The cluster's resourceVersion once no pod is left, else None."""
    core = stack.core_v1()
    try:
        listing = core.list_namespaced_pod(stack.namespace, limit=1)
    finally:
        core.api_client.close()
    return None if listing.items else int(listing.metadata.resource_version)


def _checkpoint(stack: LocalStack) -> int:
    """The resourceVersion up to which the watcher has applied events."""
    version = stack.redis.get(stack.keys.watcher_checkpoint(stack.namespace))
    return int(version) if version else 0


def _sim_create_latencies(stack: LocalStack, count: int = 200) -> list[float]:
    core = stack.core_v1()
    spec = {"containers": [{"name": "base", "image": "python:3.12-slim"}], "restartPolicy": "Never"}
    latencies = []
    try:
        for index in range(count):
            body = {"metadata": {"name": f"sim-latency-{index}"}, "spec": spec}
            started = time.perf_counter()
            core.create_namespaced_pod(stack.namespace, body)
            latencies.append(time.perf_counter() - started)
        core.delete_collection_namespaced_pod(stack.namespace, label_selector=f"!{INSTANCE_LABEL}")
    finally:
        core.api_client.close()
    return latencies


def run_case(profile: str, dispatchers: int, tasks: int, paced_tasks: int) -> CaseResult:
    # everysec is Redis' usual production setting; the tests use "always" (see RedisServer).
    with LocalStack(
        dispatchers=dispatchers, kubelet="scripted", profile=profile, redis_appendfsync=REDIS_APPENDFSYNC
    ) as stack:
        pods = PodTimes(stack.sim_url, stack.namespace)
        with pods:
            return _measure(stack, pods, profile, dispatchers, tasks, paced_tasks)


def _measure(
    stack: LocalStack, pods: PodTimes, profile: str, dispatchers: int, tasks: int, paced_tasks: int
) -> CaseResult:
    sim_latencies = _sim_create_latencies(stack)
    executor = stack.executor()
    executor.start()
    timeout_s = 120 + tasks / 20

    # Burst: one scheduler loop queues every try; throughput is the pod creation rate it achieves.
    burst = _keys("burst", tasks)
    started = time.perf_counter()
    for key in burst:
        executor.execute_async(key, ["true"])
    burst_synced: dict[str, float] = {}
    _drain(executor, burst_synced, tasks, timeout_s, _BURST_POLL_S)
    names = [job_id_for(key) for key in burst]
    wait_until(lambda: all(name in pods.created_at for name in names), 30, "the burst's pods")
    burst_seconds = max(pods.created_at[name] for name in names) - started
    # The watcher is still deleting the burst's pods and reading the events that follows: let it finish,
    # or the paced phase would measure that backlog instead of the bridge's latency.
    last_version = wait_until(lambda: _version_without_pods(stack), timeout_s, "the burst's pods to go")
    wait_until(lambda: _checkpoint(stack) >= last_version, timeout_s, "the watcher to catch up")

    # Paced: steady arrivals at half the measured rate (capped), each try queued by its own sync().
    rate = min(tasks / burst_seconds / 2, 100.0)
    paced = _keys("paced", paced_tasks)
    queued_at: dict[str, float] = {}
    paced_synced: dict[str, float] = {}
    paced_start = time.perf_counter()
    for index, key in enumerate(paced):
        due = paced_start + index / rate
        while time.perf_counter() < due:
            _sync_once(executor, paced_synced, _PACED_POLL_S)
        queued_at[job_id_for(key)] = time.perf_counter()
        executor.execute_async(key, ["true"])
        _sync_once(executor, paced_synced, _PACED_POLL_S)
    _drain(executor, paced_synced, paced_tasks, timeout_s, _PACED_POLL_S)
    executor.end(timeout=30)
    paced_names = list(queued_at)
    wait_until(lambda: all(n in pods.finished_at for n in paced_names), 30, "the paced pods' ends")
    created = [pods.created_at[name] - queued_at[name] for name in paced_names]
    synced = [paced_synced[name] - pods.finished_at[name] for name in paced_names]
    return CaseResult(
        profile=profile,
        dispatchers=dispatchers,
        tasks=tasks,
        pods_per_second=round(tasks / burst_seconds, 1),
        burst_seconds=round(burst_seconds, 2),
        paced_tasks=paced_tasks,
        paced_rate=round(rate, 1),
        created_p50_ms=_ms(created, 0.5),
        created_p99_ms=_ms(created, 0.99),
        synced_p50_ms=_ms(synced, 0.5),
        synced_p99_ms=_ms(synced, 0.99),
        sim_create_p50_ms=_ms(sim_latencies, 0.5),
        sim_create_p99_ms=_ms(sim_latencies, 0.99),
    )


def render(results: Sequence[CaseResult]) -> str:
    header = (
        "| profile | dispatchers | tries | pods/s | execute_async→pod created p50 / p99 ms "
        "| pod terminal→sync() p50 / p99 ms | simulator create p50 / p99 ms |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.profile} | {r.dispatchers} | {r.tasks} | {r.pods_per_second:.0f} "
            f"| {r.created_p50_ms} / {r.created_p99_ms} | {r.synced_p50_ms} / {r.synced_p99_ms} "
            f"| {r.sim_create_p50_ms} / {r.sim_create_p99_ms} |"
        )
    by_profile: dict[str, dict[int, float]] = {}
    for r in results:
        by_profile.setdefault(r.profile, {})[r.dispatchers] = r.pods_per_second
    for profile, rates in by_profile.items():
        if 1 in rates and len(rates) > 1:
            most = max(rates)
            lines.append(
                f"\n{profile}: {most} dispatchers reach {rates[most] / rates[1]:.2f}x the pods/s of one."
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.sim.pipeline_bench", description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000, help="tries in the burst of each case")
    parser.add_argument("--paced-tasks", type=int, default=300, help="tries in the paced latency phase")
    parser.add_argument("--profiles", default="instant,realistic", help="comma-separated simulator profiles")
    parser.add_argument("--dispatchers", default="1,4", help="comma-separated dispatcher counts")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    try:
        counts = [int(text) for text in options.dispatchers.split(",")]
    except ValueError:
        counts = []
    if options.tasks < 1 or options.paced_tasks < 1 or not counts or min(counts) < 1:
        parser.error("--tasks, --paced-tasks and every --dispatchers count must be whole numbers >= 1")
    unknown = set(options.profiles.split(",")) - set(PROFILES)
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(sorted(unknown))}; choose among {', '.join(PROFILES)}")
    results = []
    for profile in options.profiles.split(","):
        for count in counts:
            print(f"bench: {profile}, {count} dispatcher(s), {options.tasks} tries ...", file=sys.stderr)
            results.append(run_case(profile, count, options.tasks, options.paced_tasks))
    if options.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
    else:
        print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
