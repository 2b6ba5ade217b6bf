"""Issue 4's done-when: 500 tries with mixed outcomes through the whole pipeline, while it is being broken.

Everything runs as in production, each part a separate process started through the ``kbridge`` CLI
(:class:`bridge.sim.stack.LocalStack`): a Redis server with an append-only file, ``kbridge sim`` with the
scripted kubelet (pod annotations decide each outcome), three ``kbridge dispatcher`` and one ``kbridge
watcher``; this test plays the scheduler with :class:`bridge.executor.KubernetesExecutor`. The tries go in
waves so pods are in flight during each disruption:

1. a dispatcher is SIGKILLed while it holds a job (pod creations are slowed by injected 503s meanwhile, so
   it is caught mid-job), and a fresh one is added;
2. the watcher is SIGKILLed and a new one started;
3. Redis is SIGKILLed and restarted from its append-only file.

Then every try must reach the final state and reason its annotations asked for, and the simulator must
have seen exactly one pod created per launched try. That count comes from a watch of the simulator that
this test runs itself (:class:`bridge.sim.stack.PodCreations`), not from anything the bridge records.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.executor import KubernetesExecutor
from bridge.protocol import Outcome, TryState, job_id_for
from bridge.records import TryRecords
from bridge.sim.kubelet import ANNOTATION_EXIT_CODE, ANNOTATION_OUTCOME, ANNOTATION_RUN_SECONDS
from bridge.sim.stack import LocalStack, PodCreations, StackError
from bridge.task_key import TaskKey

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TASKS = 500
WAVES = 5
PENDING_TIMEOUT_S = 5
FINISH_DEADLINE_S = 60.0
LOOP_INTERVAL_S = 0.05  # the scheduler loop's pace between sync() calls


@dataclass(frozen=True)
class Expected:
    """What one try asks the simulator for, and what the scheduler must end up being told."""

    key: TaskKey
    executor_config: dict[str, Any] | None
    state: str  # the event buffer's state: "success" or "failed"
    reason: str
    exit_code: int | None
    launches: bool = True  # False: refused by the executor, no pod may ever exist


def _annotated(outcome: str, run_seconds: float, exit_code: int | None = None) -> dict[str, Any]:
    annotations = {ANNOTATION_OUTCOME: outcome, ANNOTATION_RUN_SECONDS: str(run_seconds)}
    if exit_code is not None:
        annotations[ANNOTATION_EXIT_CODE] = str(exit_code)
    return {"pod_override": {"metadata": {"annotations": annotations}}}


def plan(index: int) -> Expected:
    """Try ``index``'s outcome; the mix repeats every 20 tries (half of them succeed)."""
    run_seconds = (index % 7) * 0.3  # up to 1.8 s: pods are still running while the next wave arrives
    slot = index % 20

    def expect(
        kind: str,
        config: dict[str, Any],
        state: str,
        reason: str,
        exit_code: int | None,
        launches: bool = True,
    ) -> Expected:
        key = TaskKey("e2e", kind, "manual__e2e", try_number=1, map_index=index)
        return Expected(key, config, state, reason, exit_code, launches)

    if slot < 10:
        return expect("succeed", _annotated("succeed", run_seconds), "success", "", 0)
    if slot < 12:
        exit_code = 1 + index % 100
        return expect("fail", _annotated("fail", run_seconds, exit_code), "failed", "Error", exit_code)
    outcomes: dict[int, tuple[str, str, str, int | None]] = {
        12: ("oom", "oom", "OOMKilled", 137),
        13: ("evict", "evict", "Evicted", None),
        14: ("err_image_pull", "err-image-pull", "ErrImagePull", None),
        15: ("start_error", "start-error", "StartError", 128),
        16: ("config_error", "create-container-config-error", "CreateContainerConfigError", None),
        17: ("stays_pending", "pending", "PendingTimeout", None),
    }
    if slot in outcomes:
        kind, annotation, reason, known_code = outcomes[slot]
        return expect(kind, _annotated(annotation, run_seconds), "failed", reason, known_code)
    if slot == 18:  # an executor_config the executor refuses: failed at once, never queued
        bad = {"KubernetesExecutor": {"request_memory": "a lot"}}
        return expect("invalid_config", bad, "failed", "InvalidTask", None, False)
    return expect("succeed_fast", _annotated("succeed", 0), "success", "", 0)


class Scheduler:
    """The scheduler's side of the test: submits waves, runs sync() in its loop, keeps the events."""

    def __init__(self, executor: KubernetesExecutor) -> None:
        self.executor = executor
        self.final: dict[TaskKey, tuple[str, Outcome]] = {}
        self.events: Counter[str] = Counter()
        self.late_events: list[tuple[TaskKey, str]] = []

    def submit(self, tries: list[Expected]) -> None:
        for expected in tries:
            self.executor.execute_async(
                expected.key, ["python", "-c", "pass"], executor_config=expected.executor_config
            )
        self.executor.sync()

    def loop_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Run the scheduler loop (sync, collect events) until ``condition`` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.executor.sync()
            for key, (state, outcome) in self.executor.get_event_buffer().items():
                self.events[state] += 1
                if key in self.final:
                    self.late_events.append((key, state))
                elif state != "running":
                    self.final[key] = (state, outcome)
            if condition():
                return
            if time.monotonic() >= deadline:
                raise StackError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(LOOP_INTERVAL_S)


def _as_planned(expected: Expected, state: str, outcome: Outcome) -> bool:
    if state != expected.state:
        return False
    if expected.exit_code is not None and outcome.exit_code != expected.exit_code:
        return False
    if expected.state == "success":  # the watcher may or may not name the container's "Completed"
        return outcome.reason in ("", "Completed")
    if expected.reason == "ErrImagePull":
        # The kubelet writes ErrImagePull, then ImagePullBackOff; a watcher that was restarting (or re-listing
        # after Redis came back) may first see the second, and either one fails the pod, rightly.
        return outcome.reason in ("ErrImagePull", "ImagePullBackOff")
    return outcome.reason == expected.reason


def _diagnose(stack: LocalStack, missing: list[Expected]) -> str:
    """Where the tries without a final state are stuck: record state and rq job status, grouped."""
    records = TryRecords(stack.redis, stack.keys, stack.config.record_ttl_seconds)
    found = records.get_many([job_id_for(expected.key) for expected in missing])
    stuck: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for expected in missing:
        job_id = job_id_for(expected.key)
        record = found[job_id]
        status = stack.redis.hget(f"rq:job:{job_id}", "status")
        where = f"{expected.key.task_id}: record {record.state.value if record else None}, job {status!r}"
        stuck[where] += 1
        examples.setdefault(where, job_id)
    return "; ".join(f"{count} x {where} (e.g. {examples[where]})" for where, count in stuck.most_common())


def _current_job(stack: LocalStack, name: str) -> str | None:
    job: bytes | None = stack.redis.hget(f"rq:worker:{name}", "current_job")  # type: ignore[assignment]
    return job.decode() if job else None


def test_500_tries_through_the_pipeline_survive_killed_dispatcher_and_watcher_and_a_redis_crash(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    tries = [plan(index) for index in range(TASKS)]
    by_key = {expected.key: expected for expected in tries}
    waves = [tries[wave::WAVES] for wave in range(WAVES)]  # each wave has every kind of outcome
    settings = {
        "kubernetes": {
            "worker_pods_pending_timeout": str(PENDING_TIMEOUT_S),
            "delete_worker_pods_on_failure": "True",
        },
        "bridge": {"dispatcher_lease_seconds": "3", "watcher_lease_seconds": "3"},
    }
    timings: dict[str, float] = {}
    with (
        LocalStack(dispatchers=3, watchers=1, nodes=6, settings=settings, run_dir=tmp_path) as stack,
        PodCreations(stack.sim_url, stack.namespace) as creations,
    ):
        timings["stack ready"] = time.monotonic() - started
        executor = stack.executor()
        executor.start()
        scheduler = Scheduler(executor)

        scheduler.submit(waves[0])
        scheduler.loop_until(lambda: creations.total() >= 40, 30, "the first pods")

        # 1. SIGKILL a dispatcher in the middle of a job: creations answer 503 (Retry-After 1) for a while,
        # so the dispatchers sit inside their launch retries when the kill comes.
        stack.inject_fault(verb="create", status=503, retryAfter=1, count=6)
        scheduler.submit(waves[1])
        victim = stack.dispatchers[0]
        scheduler.loop_until(
            lambda: _current_job(stack, victim.name) is not None, 30, f"{victim.name} mid-job"
        )
        held = _current_job(stack, victim.name)
        assert stack.kill_dispatcher(0) == -signal.SIGKILL
        stack.add_dispatcher()
        timings["dispatcher killed"] = time.monotonic() - started

        # 2. Replace the watcher while pods run and finish: SIGKILL, so its lease has to run out (3 s) and
        # the new watcher resumes from the checkpoint the old one left, past events it never saw.
        scheduler.submit(waves[2])
        scheduler.loop_until(lambda: creations.total() >= 250, 30, "the third wave's pods")
        stack.restart_watcher(signal.SIGKILL)
        timings["watcher restarted"] = time.monotonic() - started

        # 3. Crash Redis with jobs queued and pods in flight; it comes back from its append-only file.
        scheduler.submit(waves[3])
        stack.restart_redis(hard=True)
        timings["redis restarted"] = time.monotonic() - started
        scheduler.submit(waves[4])

        try:
            scheduler.loop_until(
                lambda: len(scheduler.final) == TASKS, FINISH_DEADLINE_S, "every final state"
            )
        except StackError as error:
            missing = [expected for expected in tries if expected.key not in scheduler.final]
            raise AssertionError(f"{error}: {len(missing)} missing; {_diagnose(stack, missing)}") from None
        timings["all final"] = time.monotonic() - started
        creations.wait_caught_up()
        records = TryRecords(stack.redis, stack.keys, stack.config.record_ttl_seconds)
        recorded = records.get_many([job_id_for(expected.key) for expected in tries])
        leftovers = {
            "queued jobs": stack.redis.llen(stack.keys.rq_queue(stack.config.queue_name)),
            "in flight": stack.redis.scard(stack.keys.in_flight),
            "unacknowledged outcomes": stack.redis.xpending(stack.keys.results, stack.config.consumer_group)[
                "pending"
            ],
        }
        alive = [process.name for process in [*stack.dispatchers, *stack.watchers] if process.alive]
        logs = {process.name: process.output() for process in [*stack.dispatchers, *stack.watchers]}
    codes = stack.stop()
    print(f"timings (s since start): {timings}; events: {dict(scheduler.events)}")

    # Every try reached exactly the final state, reason and exit code its annotations asked for.
    assert set(scheduler.final) == set(by_key)
    wrong = {
        f"{key.task_id}[{key.map_index}]": (state, outcome.reason, outcome.exit_code, outcome.message[:100])
        for key, (state, outcome) in scheduler.final.items()
        if not _as_planned(by_key[key], state, outcome)
    }
    assert wrong == {}
    assert scheduler.late_events == []  # nothing reported after a final state

    # The records in Redis agree (they survived the crash); no job, pod or outcome is left pending.
    for expected in tries:
        record = recorded[job_id_for(expected.key)]
        if not expected.launches:
            assert record is None, expected.key
            continue
        assert record is not None, expected.key
        assert record.state in (TryState.SUCCESS, TryState.FAILED), (expected.key, record)
        assert record.state.value == expected.state, (expected.key, record)
    assert leftovers == {"queued jobs": 0, "in flight": 0, "unacknowledged outcomes": 0}

    # Exactly one pod per launched try, none for refused ones, and no stray pod.
    launched = {job_id_for(expected.key) for expected in tries if expected.launches}
    assert creations.errors == []
    assert creations.duplicates() == {}
    assert set(creations.added) == launched
    assert all(len(uids) == 1 for uids in creations.uids.values())

    # The dispatcher was killed holding a job, and that job was still launched (once, checked above).
    assert held is not None
    assert held.split(":")[0] in launched
    # Every process still alive survived the Redis crash, and all shut down cleanly.
    assert alive == ["dispatcher-2", "dispatcher-3", "dispatcher-4", "watcher-2"], {
        name: output[-2000:] for name, output in logs.items() if name not in alive
    }
    assert codes == {
        "dispatcher-1": -signal.SIGKILL,
        "dispatcher-2": 0,
        "dispatcher-3": 0,
        "dispatcher-4": 0,
        "watcher-1": -signal.SIGKILL,
        "watcher-2": 0,
        "sim": 0,
    }
    assert time.monotonic() - started < 120, timings  # budget ≲ 90 s on a loaded 2-CPU machine
