"""The dispatcher against real Redis and the simulated API server, through the real kubernetes client.

Most tests run the worker in burst mode in this process (it empties the queue, then returns); the process
tests run ``kbridge dispatcher`` itself: in burst mode, two at once, stopped by SIGTERM mid-job and killed by
SIGKILL mid-job (another dispatcher must requeue and launch that job within a couple of leases).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
import urllib3
from kubernetes.client import ApiException
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.config import KubeConfig
from bridge.connection import redis_from_config
from bridge.errors import UserInputError
from bridge.executor import KubernetesExecutor
from bridge.executor_config import parse_executor_config
from bridge.jobs import SERIALIZER, BridgeJob
from bridge.kube_client import core_v1
from bridge.protocol import (
    DELETE_POD,
    JOB_RESULT_TTL_SECONDS,
    LAUNCH_POD,
    DeleteRequest,
    Keys,
    LaunchRequest,
    Outcome,
    TryRecord,
    TryState,
    job_id_for,
    signature,
    utc_now,
)
from bridge.queue import TaskQueue
from bridge.records import TryRecords
from bridge.redis_server import RedisServer, free_loopback_port
from bridge.sim.cluster import Simulator
from bridge.task_key import TaskKey
from bridge.worker_pod import build_launch_secret, build_worker_pod
from tests.pod_log import pod_log
from tests.test_watcher import watching
from tests.waiting import wait_until
from workers.dispatcher import Dispatcher, DispatcherWorker, build_worker, main
from workers.reaper import Heartbeat

QUEUE = "kbridge"
KEYS = Keys("kbridge")
ARGV = ("python", "-c", "print('hi')")
ConfigFactory = Callable[..., KubeConfig]


def key(n: int = 1, *, try_number: int = 1) -> TaskKey:
    return TaskKey("dag", f"task{n}", "run1", try_number)


def touch_marker(path: str) -> None:
    """What a forbidden job would run: leaves a file behind if it is ever called."""
    Path(path).write_text("called")


def enqueue(
    client: redis.Redis,
    task: TaskKey,
    *,
    pod_config: dict[str, Any] | None = None,
    signing_key: str | None = None,
    func: str = LAUNCH_POD,
    args: list[Any] | None = None,
    job_id: str | None = None,
    enqueued_at: str | None = None,
) -> str:
    """Enqueue a launch job as the executor does (rq job + queued try record); returns the job id."""
    request = LaunchRequest(
        task, ARGV, QUEUE, pod_config or {}, utc_now() if enqueued_at is None else enqueued_at
    )
    job_id = job_id or request.job_id
    job = BridgeJob.create(
        func,
        args=[request.to_payload(signing_key)] if args is None else args,
        id=job_id,
        connection=client,
        serializer=SERIALIZER,
        timeout=120,
        result_ttl=JOB_RESULT_TTL_SECONDS,
    )
    rq.Queue(QUEUE, connection=client, job_class=BridgeJob, serializer=SERIALIZER).enqueue_job(job)
    TryRecords(client, KEYS, 600).advance(TryRecord(task, TryState.QUEUED, queue=QUEUE))
    return job_id


def run_burst(config: KubeConfig) -> DispatcherWorker:
    worker = build_worker(config, redis=redis_from_config(config))
    worker.work(burst=True)
    return worker


def record(client: redis.Redis, task: TaskKey) -> TryRecord:
    found = TryRecords(client, KEYS, 600).get(job_id_for(task))
    assert found is not None
    return found


def outcomes(client: redis.Redis) -> list[Outcome]:
    entries: Any = client.xrange(KEYS.results)
    return [Outcome.from_fields(fields) for _, fields in entries]


def api(simulator: Simulator) -> Any:
    """The simulator's client, typed loosely: its models accept plain API dicts."""
    return simulator.core_v1()


def pods(simulator: Simulator) -> dict[str, Any]:
    return {pod.metadata.name: pod for pod in api(simulator).list_namespaced_pod("default").items}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def job_result(client: redis.Redis, job_id: str) -> Any:
    job = rq.job.Job.fetch(job_id, connection=client, serializer=SERIALIZER)
    return job.return_value()


def is_subset(expected: Any, actual: Any) -> bool:
    """Every field of ``expected`` is in ``actual`` with the same value (the API server adds defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(is_subset(v, actual.get(k)) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


# --- launching ---------------------------------------------------------------------------------------------


def test_a_launch_creates_exactly_the_built_pod(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    pod_config = {"KubernetesExecutor": {"request_memory": "64Mi"}}
    job_id = enqueue(redis_client, key(), pod_config=pod_config)
    worker = run_burst(config)

    expected = build_worker_pod(key(), ARGV, parse_executor_config(pod_config), config)
    created = api(simulator).api_client.sanitize_for_serialization(pods(simulator)[job_id])
    assert is_subset(expected["metadata"], created["metadata"])
    assert is_subset(expected["spec"]["containers"], created["spec"]["containers"])
    assert created["spec"]["restartPolicy"] == "Never"
    launched = record(redis_client, key())
    assert (launched.state, launched.pod, launched.namespace) == (TryState.LAUNCHED, job_id, "default")
    assert TryRecords(redis_client, KEYS, 600).in_flight() == [job_id]
    assert outcomes(redis_client) == []  # "launched" is not streamed; the watcher reports running/ended
    assert job_result(redis_client, job_id) == {
        "job_id": job_id, "result": "launched", "pod": job_id, "namespace": "default", "how": "created",
    }  # fmt: skip
    assert redis_client.zscore(KEYS.dispatchers, worker.name) is None  # left the set on a clean stop


def test_a_job_delivered_twice_makes_one_pod(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    job_id = enqueue(redis_client, key())
    redis_client.rpush(Keys.rq_queue(QUEUE), job_id)  # the same job id queued again (a requeue, a replay)
    run_burst(bridge_config())
    assert list(pods(simulator)) == [job_id]
    assert job_result(redis_client, job_id) == {"job_id": job_id, "result": "skipped", "state": "launched"}


def test_an_existing_pod_of_the_same_try_counts_as_launched(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    job_id = enqueue(redis_client, key())
    # A dispatcher created the pod and died before recording it: the relaunch gets 409 and checks the pod.
    api(simulator).create_namespaced_pod("default", build_worker_pod(key(), ARGV, None, config))
    run_burst(config)
    assert list(pods(simulator)) == [job_id]
    assert record(redis_client, key()).state is TryState.LAUNCHED
    assert job_result(redis_client, job_id)["how"] == "already existed"


def test_a_pod_of_another_try_holding_the_name_is_a_name_conflict(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    job_id = enqueue(redis_client, key())
    squatter = build_worker_pod(key(2), ARGV, None, config)
    squatter["metadata"]["name"] = job_id
    api(simulator).create_namespaced_pod("default", squatter)
    run_burst(config)
    failed = record(redis_client, key())
    assert (failed.state, failed.reason) == (TryState.FAILED, "NameConflict")
    assert "another try (dag.task2 run=run1 try=1)" in failed.message
    [outcome] = outcomes(redis_client)
    assert (outcome.state, outcome.reason, outcome.source) == (TryState.FAILED, "NameConflict", "dispatcher")
    assert pods(simulator)[job_id].metadata.annotations["task_id"] == "task2"  # left alone


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 1, "count": 1},
        {"status": 503, "count": 2},
        {"status": 500, "count": 1},
        {"action": "drop", "count": 2},
    ],
    ids=["429-retry-after", "503", "500", "dropped-connection"],
)
def test_throttling_server_errors_and_dropped_connections_are_retried(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator, fault: dict[str, Any]
) -> None:
    injected = simulator.faults.inject(verb="create", **fault)
    job_id = enqueue(redis_client, key())
    started = time.monotonic()
    run_burst(bridge_config())
    assert injected.hits == fault["count"]
    assert list(pods(simulator)) == [job_id]
    assert record(redis_client, key()).state is TryState.LAUNCHED
    if fault.get("retry_after"):
        assert time.monotonic() - started >= fault["retry_after"]  # Retry-After was honoured


def test_exhausted_retries_fail_the_task_and_the_worker_goes_on(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(kubernetes={"task_publish_max_retries": "2"})
    injected = simulator.faults.inject(verb="create", status=503, count=3)  # 1 try + 2 retries, all 503
    enqueue(redis_client, key(1))
    second = enqueue(redis_client, key(2))
    run_burst(config)
    failed = record(redis_client, key(1))
    assert (failed.state, failed.reason) == (TryState.FAILED, "ApiUnavailable")
    assert "3 attempt(s)" in failed.message
    assert "at most 2 retries" in failed.message
    assert "HTTP 503" in failed.message
    assert injected.hits == 3
    assert list(pods(simulator)) == [second]
    assert record(redis_client, key(2)).state is TryState.LAUNCHED


def test_a_retry_after_beyond_the_deadline_fails_at_once(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(bridge={"dispatch_deadline_seconds": "2"})
    fault = simulator.faults.inject(verb="create", status=429, retry_after=5, count=None)
    enqueue(redis_client, key())
    run_burst(config)
    assert fault.hits == 1  # waiting 5 s would end past the deadline: no second attempt
    failed = record(redis_client, key())
    assert (failed.state, failed.reason) == (TryState.FAILED, "ApiUnavailable")
    assert "HTTP 429" in failed.message
    assert "dispatch_deadline_seconds = 2" in failed.message
    assert "1 attempt(s)" in failed.message


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"containers": [{"name": "base", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]},
         "spec.containers[0].volumeMounts[0].name"),
        ({"containers": [{"name": "base", "resources": {"limits": {"memory": "lots"}}}]},
         "spec.containers[0].resources.limits[memory]"),
    ],
    ids=["unknown-volume", "bad-quantity"],
)  # fmt: skip
def test_a_pod_the_api_server_rejects_fails_at_once_with_its_message(
    bridge_config: ConfigFactory,
    redis_client: redis.Redis,
    simulator: Simulator,
    override: dict[str, Any],
    field: str,
) -> None:
    config = bridge_config()
    task = key()
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(task, TryState.QUEUED, queue=QUEUE))
    sleeps: list[float] = []
    dispatcher = Dispatcher(config, redis_client, core_v1(config), sleep=sleeps.append)
    payload = LaunchRequest(task, ARGV, QUEUE, {"pod_override": {"spec": override}}).to_payload(None)
    result = dispatcher.launch(payload)
    assert result["result"] == "failed"
    assert sleeps == []  # no retry
    failed = record(redis_client, task)
    assert (failed.state, failed.reason) == (TryState.FAILED, "Rejected")
    assert "HTTP 422" in failed.message
    assert field in failed.message  # the API server's own words
    assert pods(simulator) == {}


# --- what a job may ask for ------------------------------------------------------------------------------


def test_jobs_naming_other_functions_fail_without_being_called(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    touch_marker(str(tmp_path / "proof"))  # the function works: only the dispatcher can keep it from running
    assert (tmp_path / "proof").exists()
    forbidden = {
        "tests.test_dispatcher.touch_marker": [str(marker)],
        "os.system": [f"touch {marker}"],
        "bridge.executor.something": [],
    }
    for n, (func, args) in enumerate(forbidden.items(), start=1):
        enqueue(redis_client, key(n), func=func, args=args)
    good = enqueue(redis_client, key(9))
    run_burst(bridge_config())

    assert not marker.exists()
    for n, func in enumerate(forbidden, start=1):
        job = rq.job.Job.fetch(job_id_for(key(n)), connection=redis_client, serializer=SERIALIZER)
        assert job.get_status() == "failed"
        failed = record(redis_client, key(n))
        assert (failed.state, failed.reason) == (TryState.FAILED, "InvalidMessage")
        assert f"names function {func!r}, which is not allowed" in failed.message
    assert list(pods(simulator)) == [good]


def test_bad_payloads_fail_their_task_with_the_field_and_the_worker_goes_on(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    signing_key = "k" * 32
    config = bridge_config(bridge={"signing_key": signing_key})
    good_payload = LaunchRequest(key(1), ARGV, QUEUE, enqueued_at=utc_now()).to_payload(signing_key)
    shell_string = {**good_payload, "argv": "python -c pass"}
    shell_string["sig"] = signature(shell_string, signing_key)  # authentic, but malformed
    cases: dict[TaskKey, tuple[dict[str, Any], str]] = {
        key(1): ({"args": [shell_string]}, "field 'argv' must be list"),
        key(2): ({"args": ["just text"]}, "must be a JSON object, got str"),
        key(3): ({"signing_key": "x" * 32}, "field 'sig' does not match"),
        key(4): ({"signing_key": None}, "field 'sig' is missing"),
        key(5): ({"args": [good_payload, "extra"]}, "exactly one argument"),
        key(6): ({"args": [good_payload]}, f"is try {job_id_for(key(1))}, but it came in job"),
        key(7): (
            {"pod_config": {"KubernetesExecutor": {"request_memory": "lots"}}, "signing_key": signing_key},
            "request_memory",
        ),
    }
    for task, (options, _) in cases.items():
        enqueue(redis_client, task, **options)
    good = enqueue(redis_client, key(8), signing_key=signing_key)
    run_burst(config)

    for task, (_, text) in cases.items():
        failed = record(redis_client, task)
        assert failed.state is TryState.FAILED, task
        assert failed.reason == ("InvalidPodSpec" if task == key(7) else "InvalidMessage"), task
        assert text in failed.message, (task, failed.message)
    assert {outcome.reason for outcome in outcomes(redis_client)} == {"InvalidMessage", "InvalidPodSpec"}
    assert list(pods(simulator)) == [good]


def test_an_unreadable_job_hash_is_failed_and_the_worker_goes_on(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    broken = enqueue(redis_client, key(1))
    redis_client.hset(Keys.rq_job(broken), "status", "no-such-status")  # rq cannot even load this job
    good = enqueue(redis_client, key(2))
    run_burst(bridge_config())
    failed = record(redis_client, key(1))
    assert (failed.state, failed.reason) == (TryState.FAILED, "InvalidMessage")
    assert "cannot be read" in failed.message
    assert redis_client.zscore(Keys.rq_failed(QUEUE), broken) is not None
    assert redis_client.llen(Keys.rq_intermediate(QUEUE)) == 0
    assert list(pods(simulator)) == [good]


# --- revocation --------------------------------------------------------------------------------------------


def test_a_revoked_try_is_not_launched(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    job_id = enqueue(redis_client, key())
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id)
    run_burst(bridge_config())
    assert pods(simulator) == {}
    revoked = record(redis_client, key())
    assert (revoked.state, revoked.reason) == (TryState.REVOKED, "Revoked")
    [outcome] = outcomes(redis_client)
    assert (outcome.state, outcome.source) == (TryState.REVOKED, "dispatcher")


def test_a_delete_job_deletes_the_pod_and_records_the_try_revoked(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(kubernetes={"delete_option_kwargs": '{"grace_period_seconds": 0}'})
    job_id = enqueue(redis_client, key(), pod_config={})
    run_burst(config)
    assert job_id in pods(simulator)
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id)
    request = DeleteRequest(key(), "default", reason="revoked by the scheduler")
    job = BridgeJob.create(
        DELETE_POD, args=[request.to_payload(None)], id=f"{job_id}-delete", connection=redis_client,
        serializer=SERIALIZER,
    )  # fmt: skip
    rq.Queue(QUEUE, connection=redis_client, job_class=BridgeJob, serializer=SERIALIZER).enqueue_job(job)
    run_burst(config)
    wait_until(lambda: job_id not in pods(simulator), "the pod to be gone", timeout=5)
    revoked = record(redis_client, key())
    assert (revoked.state, revoked.reason) == (TryState.REVOKED, "Revoked")
    assert revoked.message == f"revoked by the scheduler; pod {job_id} deleted"
    assert [outcome.state for outcome in outcomes(redis_client)] == [TryState.REVOKED]
    assert TryRecords(redis_client, KEYS, 600).in_flight() == []


# --- processes ---------------------------------------------------------------------------------------------


@pytest.fixture
def config_file(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, simulator: Simulator
) -> Path:
    path = tmp_path / "kbridge.cfg"
    path.write_text(
        "[kubernetes]\n"
        "in_cluster = False\n"
        f"config_file = {simulator.kubeconfig_path}\n"
        "worker_container_repository = python\n"
        "worker_container_tag = 3.12-slim\n"
        "[bridge]\n"
        f"redis_url = {redis_server.url}\n"
        "dispatcher_lease_seconds = 2\n"
    )
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def kbridge_dispatcher(config_file: Path, *args: str) -> subprocess.Popen[str]:
    kbridge = str(Path(sys.executable).with_name("kbridge"))
    return subprocess.Popen(
        [kbridge, "dispatcher", "--config", str(config_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(60)
def test_two_dispatcher_processes_make_exactly_one_pod_per_try(
    config_file: Path,
    redis_client: redis.Redis,
    simulator: Simulator,
    processes: list[subprocess.Popen[str]],
) -> None:
    job_ids = [enqueue(redis_client, key(n)) for n in range(30)]
    redis_client.rpush(Keys.rq_queue(QUEUE), *job_ids)  # every job delivered twice: the two race on each
    processes += [kbridge_dispatcher(config_file, "--burst") for _ in range(2)]
    for process in processes:
        output, _ = process.communicate(timeout=45)
        assert process.returncode == 0, output
    created = pods(simulator)
    assert sorted(created) == sorted(job_ids)
    assert len({pod.metadata.uid for pod in created.values()}) == 30
    assert all(record(redis_client, key(n)).state is TryState.LAUNCHED for n in range(30))


@pytest.mark.timeout(60)
def test_sigterm_lets_the_dispatcher_finish_its_current_job(
    config_file: Path,
    redis_client: redis.Redis,
    simulator: Simulator,
    processes: list[subprocess.Popen[str]],
) -> None:
    first = enqueue(redis_client, key(1))
    second = enqueue(redis_client, key(2))
    fault = simulator.faults.inject(verb="create", status=429, retry_after=2, count=1)
    process = kbridge_dispatcher(config_file)
    processes.append(process)
    wait_until(lambda: fault.hits == 1, "the dispatcher to start on its first job", timeout=30)
    process.send_signal(signal.SIGTERM)  # mid-job: it is waiting out the Retry-After
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert list(pods(simulator)) == [first]
    assert record(redis_client, key(1)).state is TryState.LAUNCHED
    assert record(redis_client, key(2)).state is TryState.QUEUED  # stopped before taking the next job
    assert [text(job) for job in redis_client.lrange(Keys.rq_queue(QUEUE), 0, -1)] == [second]
    assert "stop requested, finishing the current job first" in output


@pytest.mark.timeout(60)
def test_the_job_of_a_killed_dispatcher_is_requeued_and_launched_within_a_lease_or_two(
    bridge_config: ConfigFactory,
    config_file: Path,
    redis_client: redis.Redis,
    simulator: Simulator,
    processes: list[subprocess.Popen[str]],
) -> None:
    lease = 2
    job_id = enqueue(redis_client, key())
    fault = simulator.faults.inject(verb="create", status=429, retry_after=30, count=None)
    victim = kbridge_dispatcher(config_file, "--name", "victim")
    processes.append(victim)
    wait_until(lambda: fault.hits >= 1, "the first dispatcher to try the create", timeout=30)
    victim.kill()
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    simulator.faults.clear()
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 1  # what a dead dispatcher leaves behind

    survivor = build_worker(bridge_config(bridge={"dispatcher_lease_seconds": str(lease)}))
    survivor.work(max_jobs=1, max_idle_time=15)
    recovered_after = time.monotonic() - killed_at

    assert record(redis_client, key()).state is TryState.LAUNCHED
    assert list(pods(simulator)) == [job_id]
    # silent for a lease, then the next reaper pass (every lease/4 s, at 1 s dequeue granularity)
    assert recovered_after < 2 * lease + 2, recovered_after
    assert redis_client.zcard(Keys.rq_started(QUEUE)) == 0
    print(f"job of a SIGKILLed dispatcher launched {recovered_after:.2f} s after the kill (lease {lease} s)")


def test_a_second_dispatcher_may_not_take_a_live_dispatchers_name(
    config_file: Path, redis_client: redis.Redis
) -> None:
    live_twin = Heartbeat(redis_client, KEYS, "twin", 2)
    live_twin.start()
    try:
        result = subprocess.run(
            [
                *(str(Path(sys.executable).with_name("kbridge")), "dispatcher"),
                *("--config", str(config_file), "--name", "twin", "--burst"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        live_twin.stop()
    assert result.returncode == 2
    assert "dispatcher name 'twin' is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_result_is_json(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    job_id = enqueue(redis_client, key())
    run_burst(bridge_config())
    stored = redis_client.hget(Keys.rq_job(job_id), "data")
    assert stored is not None
    assert json.loads(stored)[0] == LAUNCH_POD  # readable in redis-cli, no pickle anywhere


def test_bad_flags_and_an_unreachable_redis_are_explained(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserInputError, match="--queue 'no spaces': expected a name of letters"):
        main(["--config", str(config_file), "--queue", "no spaces"])
    in_cluster = tmp_path / "in-cluster.cfg"
    in_cluster.write_text("[kubernetes]\nin_cluster = True\n")
    with pytest.raises(
        UserInputError, match=r"cannot load Kubernetes credentials \(in-cluster service account"
    ):
        main(["--config", str(in_cluster)])
    unreachable = tmp_path / "unreachable.cfg"
    port = free_loopback_port()
    settings = config_file.read_text().splitlines()
    settings = [
        f"redis_url = redis://:pw@127.0.0.1:{port}/0" if s.startswith("redis_url") else s for s in settings
    ]
    unreachable.write_text("\n".join(settings) + "\n")
    assert main(["--config", str(unreachable), "--burst"]) == 1
    error = capsys.readouterr().err
    assert f"kbridge dispatcher: cannot reach Redis at redis://:<redacted>@127.0.0.1:{port}/0" in error


@pytest.mark.timeout(60)
def test_a_dispatcher_rides_out_a_redis_restart(
    config_file: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    simulator: Simulator,
    processes: list[subprocess.Popen[str]],
) -> None:
    process = kbridge_dispatcher(config_file)
    processes.append(process)
    wait_until(
        lambda: redis_client.zcard(KEYS.dispatchers) == 1, "the dispatcher's first heartbeat", timeout=30
    )
    redis_server.restart(hard=True)  # a crash: every connection drops, AOF brings the data back
    client = redis_server.client()
    job_id = enqueue(client, key())
    wait_until(
        lambda: job_id in pods(simulator), "the job enqueued after the restart to be launched", timeout=20
    )
    wait_until(lambda: record(client, key()).state is TryState.LAUNCHED, "the try to be recorded", timeout=5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "unhandled exception" not in output


# --- review fixes: duplicate launches, deadlines, Redis failures, expiry ----------------------------------


class FakeTime:
    """A clock that only moves when the dispatcher sleeps: retry policies run without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_pod_created_again_for_a_finished_try_is_deleted_at_once(
    bridge_config: ConfigFactory,
    redis_client: redis.Redis,
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two runs of one launch job (a reaper handed it back while the first ran): run B reads the record
    # while it is queued; meanwhile run A launches, the pod finishes and the watcher deletes it.
    config = bridge_config()
    task = key(2)
    job_id = enqueue(redis_client, task)
    run_b = Dispatcher(config, redis_from_config(config), core_v1(config))
    real_get = run_b._records.get

    def stale_get(name: str) -> TryRecord | None:
        seen = real_get(name)
        monkeypatch.setattr(run_b._records, "get", real_get)
        run_a = Dispatcher(config, redis_from_config(config), core_v1(config))
        assert run_a.launch(LaunchRequest(task, ARGV, QUEUE, {}, utc_now()).to_payload(None))["result"] == (
            "launched"
        )
        TryRecords(redis_client, KEYS, 600).advance(TryRecord(task, TryState.SUCCESS))
        api(simulator).delete_namespaced_pod(job_id, "default", grace_period_seconds=0)
        wait_until(lambda: job_id not in pods(simulator), "the finished pod to be deleted", timeout=5)
        return seen

    monkeypatch.setattr(run_b._records, "get", stale_get)
    result = run_b.launch(LaunchRequest(task, ARGV, QUEUE, {}, utc_now()).to_payload(None))
    assert result["result"] == "duplicate"
    wait_until(lambda: job_id not in pods(simulator), "the duplicate pod to be deleted", timeout=5)
    assert record(redis_client, task).state is TryState.SUCCESS
    assert "duplicate launch" in caplog.text


def test_a_revoked_try_whose_pod_an_earlier_run_created_gets_it_deleted(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(kubernetes={"delete_option_kwargs": '{"grace_period_seconds": 0}'})
    task = key(5)
    job_id = enqueue(redis_client, task)
    # an earlier run created the pod and died before recording it; the reaper requeued the job
    api(simulator).create_namespaced_pod("default", build_worker_pod(task, list(ARGV), None, config))
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id)
    run_burst(config)
    wait_until(lambda: job_id not in pods(simulator), "the revoked try's pod to be deleted", timeout=5)
    revoked = record(redis_client, task)
    assert (revoked.state, revoked.message) == (
        TryState.REVOKED,
        f"revoked before its pod was created; pod {job_id} deleted",
    )


def test_one_deadline_bounds_the_whole_launch_and_an_unreadable_existing_pod_counts_as_launched(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(
        bridge={"job_timeout_seconds": "10", "dispatch_deadline_seconds": "6"},
        kubernetes={"task_publish_max_retries": "20"},
    )
    task = key(3)
    api(simulator).create_namespaced_pod("default", build_worker_pod(task, list(ARGV), None, config))
    simulator.faults.inject(verb="create", status=503, retry_after=2, count=2)
    simulator.faults.inject(verb="get", status=503, retry_after=2, count=None)
    fake = FakeTime()
    dispatcher = Dispatcher(config, redis_client, core_v1(config), sleep=fake.sleep, clock=fake.clock)
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(task, TryState.QUEUED, queue=QUEUE))
    result = dispatcher.launch(LaunchRequest(task, ARGV, QUEUE, {}, utc_now()).to_payload(None))
    simulator.faults.clear()
    assert fake.now - 1000.0 <= config.dispatch_deadline_seconds  # create retries + read retries together
    assert result["how"] == "already existed (owner not verified)"
    assert record(redis_client, task).state is TryState.LAUNCHED  # its pod exists: never failed


def test_a_launch_that_outlasts_a_redis_outage_goes_back_to_the_queue(
    bridge_config: ConfigFactory,
    redis_client: redis.Redis,
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = bridge_config()
    job_id = enqueue(redis_client, key(1))
    fake = FakeTime()
    connection = redis_from_config(config)
    dispatcher = Dispatcher(
        config, connection, core_v1(config), sleep=lambda _: fake.sleep(1000), clock=fake.clock
    )
    real_get = dispatcher._records.get
    failures = [redis.ConnectionError("simulated: Redis restarting")] * 2

    def get_during_outage(name: str) -> TryRecord | None:
        if failures:
            raise failures.pop()
        return real_get(name)

    monkeypatch.setattr(dispatcher._records, "get", get_during_outage)
    worker = DispatcherWorker(config, connection, dispatcher)
    worker.work(burst=True)
    assert failures == []
    assert record(redis_client, key(1)).state is TryState.LAUNCHED
    assert list(pods(simulator)) == [job_id]
    job = rq.job.Job.fetch(job_id, connection=redis_client, serializer=SERIALIZER)
    assert job.get_status() == "finished"
    assert f"Redis failed during job {job_id}: requeued it" in caplog.text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: every Redis command times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_redis_timeouts_do_not_end_the_worker(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator, silent_port: int
) -> None:
    config = bridge_config()
    worker = build_worker(config, redis=redis_from_config(config))
    worker.connection = redis.Redis(
        port=silent_port, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    worker.check_for_suspension(False)
    worker.heartbeat()
    assert not worker.reaper.due, "after a Redis error the reaper holds off"


def test_a_launch_request_older_than_the_record_ttl_is_refused(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    signing_key = "k" * 32
    config = bridge_config(bridge={"signing_key": signing_key, "record_ttl_seconds": "3600"})
    old = enqueue(redis_client, key(1), signing_key=signing_key, enqueued_at="2020-01-01T00:00:00.000+00:00")
    unstamped = enqueue(redis_client, key(2), signing_key=signing_key, enqueued_at="")
    fresh = enqueue(redis_client, key(3), signing_key=signing_key)
    run_burst(config)
    assert list(pods(simulator)) == [fresh]
    for task, text in (
        (key(1), "older than [bridge] record_ttl_seconds = 3600"),
        (key(2), "not an ISO 8601"),
    ):
        refused = record(redis_client, task)
        assert (refused.state, refused.reason) == (TryState.FAILED, "Expired"), task
        assert text in refused.message
    assert {old, unstamped}.isdisjoint(pods(simulator))


# --- launch secrets ----------------------------------------------------------------------------------------

TOKEN = "eyJhbGciOiJIUzI1NiJ9.per-try-workload-token.c2ln"
SECRET_ENV = {"KBRIDGE_WORKLOAD_JSON": f'{{"token": "{TOKEN}"}}', "OTHER_TOKEN": "second secret value"}


def enqueue_with_secret(
    client: redis.Redis,
    config: KubeConfig,
    task: TaskKey,
    *,
    argv: tuple[str, ...] = ARGV,
    pod_config: dict[str, Any] | None = None,
) -> str:
    """Enqueue as the executor does: rq job, try record and launch-secret hash in one script call."""
    request = LaunchRequest(task, argv, QUEUE, pod_config or {}, utc_now(), tuple(SECRET_ENV))
    queue = TaskQueue(client, KEYS, config)
    [result] = queue.enqueue([queue.build(request, SECRET_ENV)])
    assert result.fresh
    return request.job_id


def read_secret(simulator: Simulator, name: str) -> Any:
    return api(simulator).read_namespaced_secret(name, "default")


def secret_names(simulator: Simulator) -> list[str]:
    return [secret.metadata.name for secret in api(simulator).list_namespaced_secret("default").items]


def pod_json(simulator: Simulator, name: str) -> str:
    return text(api(simulator).read_namespaced_pod(name, "default", _preload_content=False).data)


def test_a_launch_with_secret_env_makes_a_secret_the_pod_owns_and_references(
    bridge_config: ConfigFactory,
    redis_client: redis.Redis,
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = bridge_config()
    job_id = enqueue_with_secret(redis_client, config, key())
    run_burst(config)

    assert record(redis_client, key()).state is TryState.LAUNCHED
    pod = api(simulator).read_namespaced_pod(job_id, "default")
    assert pod.metadata.annotations["kbridge/launch-secret"] == job_id
    env = {variable.name: variable for variable in pod.spec.containers[0].env}
    for name in SECRET_ENV:
        assert env[name].value is None
        assert (env[name].value_from.secret_key_ref.name, env[name].value_from.secret_key_ref.key) == (
            job_id,
            name,
        )
    for value in (
        TOKEN,
        "second secret value",
        base64.b64encode(SECRET_ENV["OTHER_TOKEN"].encode()).decode(),
    ):
        assert value not in pod_json(simulator, job_id)

    secret = read_secret(simulator, job_id)
    decoded = {name: base64.b64decode(data).decode() for name, data in secret.data.items()}
    assert decoded == SECRET_ENV
    [owner] = secret.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == ("v1", "Pod", job_id, pod.metadata.uid)
    assert secret.metadata.labels == pod.metadata.labels  # kubectl get secret -l kbridge/instance=kbridge
    assert not redis_client.exists(KEYS.launch_secret(job_id))  # used, so gone from Redis
    assert TOKEN not in json.dumps(job_result(redis_client, job_id))
    assert TOKEN not in caplog.text

    api(simulator).delete_namespaced_pod(job_id, "default", grace_period_seconds=0)
    wait_until(lambda: secret_names(simulator) == [], "the Secret to go with its pod", timeout=5)


def test_a_process_pod_sees_its_secret_value_where_its_args_say_dollar_name(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    printer = "import hashlib, sys; print('sha256', hashlib.sha256(sys.argv[1].encode()).hexdigest())"
    job_id = enqueue_with_secret(
        redis_client,
        config,
        key(),
        argv=(sys.executable, "-c", printer, "$(KBRIDGE_WORKLOAD_JSON)"),
        pod_config={"pod_override": {"metadata": {"annotations": {"sim.kbridge.io/kubelet": "process"}}}},
    )
    run_burst(config)
    wait_until(
        lambda: api(simulator).read_namespaced_pod(job_id, "default").status.phase == "Succeeded",
        "the pod to run",
        timeout=30,
    )
    log = pod_log(api(simulator), job_id, "default")
    expected = hashlib.sha256(SECRET_ENV["KBRIDGE_WORKLOAD_JSON"].encode()).hexdigest()
    assert log.strip() == f"sha256 {expected}"


def test_a_launch_whose_secret_expired_fails_without_a_pod_or_a_secret(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(bridge={"launch_secret_ttl_seconds": "900"})
    job_id = enqueue_with_secret(redis_client, config, key())
    redis_client.delete(KEYS.launch_secret(job_id))  # what its TTL does to a launch that waited too long
    run_burst(config)
    failed = record(redis_client, key())
    assert (failed.state, failed.reason) == (TryState.FAILED, "LaunchSecretExpired")
    assert "waited for a dispatcher longer than the executor's launch_secret_ttl_seconds" in failed.message
    assert "900" not in failed.message  # the dispatcher's own setting is not the one that applied
    assert "Queue the task again" in failed.message
    assert [(outcome.state, outcome.reason) for outcome in outcomes(redis_client)] == [
        (TryState.FAILED, "LaunchSecretExpired")
    ]
    assert pods(simulator) == {}
    assert secret_names(simulator) == []


def test_a_launch_whose_secret_another_run_used_counts_as_launched(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    # Two runs of one job: the first created the Secret and the pod and deleted the hash; the second,
    # requeued by a reaper, finds no hash but this try's pod.
    config = bridge_config()
    job_id = enqueue_with_secret(redis_client, config, key())
    first = Dispatcher(config, redis_client, core_v1(config))
    request = LaunchRequest(key(), ARGV, QUEUE, {}, utc_now(), tuple(SECRET_ENV))
    assert first.launch(request.to_payload(None))["how"] == "created"
    assert not redis_client.exists(KEYS.launch_secret(job_id))
    redis_client.hset(KEYS.try_record(job_id), "state", "queued")  # as the second run read it, before
    second = Dispatcher(config, redis_client, core_v1(config))
    result = second.launch(request.to_payload(None))
    assert (result["result"], result["how"]) == ("launched", "already existed")
    assert record(redis_client, key()).state is TryState.LAUNCHED
    assert list(pods(simulator)) == [job_id]
    assert secret_names(simulator) == [job_id]


def test_a_secret_left_by_an_earlier_run_gets_the_current_values(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    stale = build_launch_secret(key(), {"KBRIDGE_WORKLOAD_JSON": b"stale", "GONE": b"old"}, config)
    api(simulator).create_namespaced_secret("default", stale)  # an earlier run died after creating it
    job_id = enqueue_with_secret(redis_client, config, key())
    run_burst(config)
    assert record(redis_client, key()).state is TryState.LAUNCHED
    secret = read_secret(simulator, job_id)
    assert {name: base64.b64decode(data).decode() for name, data in secret.data.items()} == SECRET_ENV
    assert (
        secret.metadata.owner_references[0].uid
        == api(simulator).read_namespaced_pod(job_id, "default").metadata.uid
    )


def test_a_secret_of_someone_else_holding_the_name_is_a_name_conflict(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    job_id = job_id_for(key())
    api(simulator).create_namespaced_secret(
        "default", {"metadata": {"name": job_id}, "stringData": {"password": "theirs"}}
    )
    enqueue_with_secret(redis_client, config, key())
    run_burst(config)
    failed = record(redis_client, key())
    assert (failed.state, failed.reason) == (TryState.FAILED, "NameConflict")
    assert f"Secret {job_id} already exists but is not a task Secret" in failed.message
    assert pods(simulator) == {}
    assert read_secret(simulator, job_id).data == {"password": base64.b64encode(b"theirs").decode()}


def test_a_pod_the_api_server_rejects_takes_its_secret_along(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    bad_mount = {"containers": [{"name": "base", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}
    job_id = enqueue_with_secret(
        redis_client, config, key(), pod_config={"pod_override": {"spec": bad_mount}}
    )
    created: list[str] = []
    simulator.store.subscribe(lambda kind, obj: created.append(obj["kind"]) if kind == "ADDED" else None)
    run_burst(config)
    failed = record(redis_client, key())
    assert (failed.state, failed.reason) == (TryState.FAILED, "Rejected")
    assert "HTTP 422" in failed.message
    assert created == ["Secret"]  # it was made first, then the pod was refused ...
    assert secret_names(simulator) == []  # ... and it was deleted
    assert not redis_client.exists(KEYS.launch_secret(job_id))


def test_a_revoked_launch_with_secret_env_leaves_no_secret_behind(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    # an earlier run created the Secret and died before the pod; then the try was revoked
    api(simulator).create_namespaced_secret("default", build_launch_secret(key(), {"X": b"y"}, config))
    job_id = enqueue_with_secret(redis_client, config, key())
    TryRecords(redis_client, KEYS, 600).mark_revoked(job_id)
    run_burst(config)
    assert record(redis_client, key()).state is TryState.REVOKED
    assert secret_names(simulator) == []
    assert not redis_client.exists(KEYS.launch_secret(job_id))


class Wrapped:
    """The simulator's client with some methods replaced (a fault the fault injector cannot express)."""

    def __init__(self, real: Any, **methods: Callable[..., Any]) -> None:
        self._real = real
        self._methods = methods

    def __getattr__(self, name: str) -> Any:
        return self._methods.get(name) or getattr(self._real, name)


def launch_directly(config: KubeConfig, client: redis.Redis, wrapped: Any) -> dict[str, Any]:
    """One launch job's function, run with ``wrapped`` as its API client and no waits between retries."""
    request = LaunchRequest(key(), ARGV, QUEUE, {}, utc_now(), tuple(SECRET_ENV))
    dispatcher = Dispatcher(config, client, wrapped, sleep=lambda _seconds: None)
    return dispatcher.launch(request.to_payload(None))


def test_a_secret_create_that_times_out_after_the_server_made_it_is_deleted(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config(kubernetes={"task_publish_max_retries": "2"})
    real = core_v1(config)
    attempts: list[int] = []

    def create_then_time_out(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        try:
            real.create_namespaced_secret(*args, **kwargs)
        except ApiException as exc:
            if exc.status != 409:  # 409: made by the first attempt
                raise
        raise urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")  # type: ignore[arg-type]

    enqueue_with_secret(redis_client, config, key())
    result = launch_directly(
        config, redis_client, Wrapped(real, create_namespaced_secret=create_then_time_out)
    )
    assert (result["result"], result["reason"]) == ("failed", "ApiUnavailable")
    assert len(attempts) == 3
    assert secret_names(simulator) == []  # the Secret the server made for a lost answer went
    assert pods(simulator) == {}


def test_a_refused_secret_write_reports_status_and_reason_never_the_body(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    real = core_v1(config)

    def refuse_with_body(*args: Any, **kwargs: Any) -> Any:
        error = ApiException(status=422, reason="Unprocessable Entity")
        error.body = json.dumps({"kind": "Status", "message": f"webhook denied: {TOKEN} is forbidden"})
        raise error

    enqueue_with_secret(redis_client, config, key())
    result = launch_directly(config, redis_client, Wrapped(real, create_namespaced_secret=refuse_with_body))
    assert (result["result"], result["reason"]) == ("failed", "Rejected")
    assert "HTTP 422 Unprocessable Entity" in result["message"]
    assert TOKEN not in json.dumps(result)
    assert TOKEN not in record(redis_client, key()).message
    assert all(TOKEN not in outcome.message for outcome in outcomes(redis_client))


@pytest.mark.parametrize("meanwhile", ["revoked", "finished"])
def test_a_launch_without_its_secret_or_pod_rereads_the_record_before_calling_it_expired(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator, meanwhile: str
) -> None:
    config = bridge_config()
    real = core_v1(config)
    job_id = enqueue_with_secret(redis_client, config, key())
    redis_client.delete(KEYS.launch_secret(job_id))  # a revoke deletes it; so does a run that launched it
    records = TryRecords(redis_client, KEYS, 600)

    def read_pod(*args: Any, **kwargs: Any) -> Any:
        # after this run read the record (queued) and the hash (gone), before it looks for the pod
        if meanwhile == "revoked":
            records.mark_revoked(job_id)
        else:  # another run launched it, and the pod ran and was deleted
            records.advance(TryRecord(key(), TryState.LAUNCHED, pod=job_id, namespace="default"))
            records.advance(TryRecord(key(), TryState.SUCCESS, exit_code=0))
        return real.read_namespaced_pod(*args, **kwargs)

    result = launch_directly(config, redis_client, Wrapped(real, read_namespaced_pod=read_pod))
    after = record(redis_client, key())
    if meanwhile == "revoked":
        assert result["result"] == "revoked"
        assert (after.state, after.reason) == (TryState.REVOKED, "Revoked")
    else:
        assert result["result"] == "launched"
        assert after.state is TryState.SUCCESS
    assert "LaunchSecretExpired" not in {outcome.reason for outcome in outcomes(redis_client)}
    assert pods(simulator) == {}


def test_a_delete_job_removes_a_secret_left_without_its_pod_but_never_another_ones(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    dispatcher = Dispatcher(config, redis_client, core_v1(config))
    # a dispatcher died between the Secret and the pod; then the try was revoked (a delete_pod job)
    api(simulator).create_namespaced_secret("default", build_launch_secret(key(1), {"X": b"y"}, config))
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(key(1), TryState.QUEUED, queue=QUEUE))
    result = dispatcher.delete(DeleteRequest(key(1), "default").to_payload(None))
    assert result["result"] == "revoked"
    assert secret_names(simulator) == []
    # a Secret of someone else with the try's name stays, and so does one of another bridge instance
    api(simulator).create_namespaced_secret(
        "default", {"metadata": {"name": job_id_for(key(2))}, "stringData": {"password": "theirs"}}
    )
    other = build_launch_secret(key(3), {"X": b"y"}, config)
    other["metadata"]["labels"]["kbridge/instance"] = "another-bridge"
    api(simulator).create_namespaced_secret("default", other)
    for task in (key(2), key(3)):
        TryRecords(redis_client, KEYS, 600).advance(TryRecord(task, TryState.QUEUED, queue=QUEUE))
        assert dispatcher.delete(DeleteRequest(task, "default").to_payload(None))["result"] == "revoked"
    assert sorted(secret_names(simulator)) == sorted([job_id_for(key(2)), job_id_for(key(3))])


def test_a_secret_replaced_after_its_ownership_check_is_not_deleted(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = bridge_config()
    real = core_v1(config)
    job_id = job_id_for(key())
    api(simulator).create_namespaced_secret("default", build_launch_secret(key(), {"X": b"old"}, config))

    def read_then_replace(*args: Any, **kwargs: Any) -> Any:
        checked = real.read_namespaced_secret(*args, **kwargs)
        real.delete_namespaced_secret(job_id, "default")  # someone made the name anew meanwhile
        real.create_namespaced_secret("default", {"metadata": {"name": job_id}, "stringData": {"k": "new"}})
        return checked

    TryRecords(redis_client, KEYS, 600).advance(TryRecord(key(), TryState.QUEUED, queue=QUEUE))
    dispatcher = Dispatcher(config, redis_client, Wrapped(real, read_namespaced_secret=read_then_replace))
    assert dispatcher.delete(DeleteRequest(key(), "default").to_payload(None))["result"] == "revoked"
    assert read_secret(simulator, job_id).data == {"k": base64.b64encode(b"new").decode()}


def test_a_try_revoked_unreported_before_launch_runs_when_its_key_is_queued_again(
    bridge_config: ConfigFactory, redis_client: redis.Redis, simulator: Simulator
) -> None:
    # Airflow's stuck-in-queued recovery: revoke_task (report=False), then execute_async of the same key.
    config = bridge_config(
        kubernetes={"worker_pods_pending_timeout": "0"}, bridge={"watcher_lease_seconds": "2"}
    )
    executor = KubernetesExecutor(config, redis=redis_client)
    executor.start()
    argv = ["python", "-c", "pass", "$(KBRIDGE_WORKLOAD_JSON)"]
    executor.execute_async(key(), argv, secret_env=SECRET_ENV)
    executor.sync()
    assert executor.revoke(key(), report=False)
    executor.execute_async(key(), argv, secret_env=SECRET_ENV)
    executor.sync()
    run_burst(config)
    assert record(redis_client, key()).state is TryState.LAUNCHED
    with watching(config):

        def finished() -> bool:
            executor.sync()
            return key() not in executor.running

        wait_until(finished, "the try to finish", timeout=30)
    assert executor.get_event_buffer()[key()][0] == "success"
    states = [outcome.state for outcome in outcomes(redis_client)]
    assert states[-1] is TryState.SUCCESS
    assert TryState.REVOKED not in states  # nothing of the revoked first life
