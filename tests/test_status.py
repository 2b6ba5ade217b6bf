"""``kbridge status`` reports the pipeline from Redis alone (real Redis; state written by the real modules).

The Redis state is built the way the processes build it: try records and stream entries through
``TryRecords.advance``, rq jobs through an rq ``Queue`` with ``BridgeJob`` and a real ``SimpleWorker``,
pending entries through XREADGROUP, heartbeats with ZADD at Redis' own time, the watcher lease with SET.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from bridge import cli, status
from bridge.config import KubeConfig
from bridge.jobs import SERIALIZER, BridgeJob, job_class_with
from bridge.protocol import (
    LAUNCH_POD,
    Keys,
    LaunchRequest,
    Outcome,
    TryRecord,
    TryState,
    job_id_for,
    render_key_table_markdown,
)
from bridge.records import TryRecords
from bridge.redis_server import RedisServer
from bridge.task_key import TaskKey
from workers.dispatcher import default_worker_name

pytestmark = pytest.mark.timeout(60)

PREFIX = "st"
QUEUE = "launch"
NAMESPACE = "ns1"
KEYS = Keys(PREFIX)


def _config_text(redis_url: str) -> str:
    return (
        f"[kubernetes]\nnamespace = {NAMESPACE}\n\n"
        f"[bridge]\nredis_url = {redis_url}\nkey_prefix = {PREFIX}\nqueue_name = {QUEUE}\n"
        "dispatcher_lease_seconds = 10\n"
    )


@pytest.fixture
def config_file(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis) -> Path:
    path = tmp_path / "kbridge.cfg"
    path.write_text(_config_text(redis_server.url))
    return path


@pytest.fixture
def config(redis_server: RedisServer) -> KubeConfig:
    return KubeConfig(
        {
            "kubernetes": {"namespace": NAMESPACE},
            "bridge": {"redis_url": redis_server.url, "key_prefix": PREFIX, "queue_name": QUEUE},
        }
    )


def run_status(config_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["status", "--config", str(config_file), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def command(client: redis.Redis, *args: str) -> Any:
    """A raw command (as redis-cli sends it); redis-py leaves this call untyped."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def redis_now_ms(client: redis.Redis) -> int:
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def key(task: str, try_number: int = 1) -> TaskKey:
    return TaskKey("etl", task, "manual__1", try_number)


def enqueue_launch(queue: Queue, task_key: TaskKey) -> None:
    request = LaunchRequest(task_key, ("python", "-c", "pass"), QUEUE)
    queue.enqueue_call(
        LAUNCH_POD,
        args=(request.to_payload(None),),
        job_id=request.job_id,
        description=f"etl.{task_key.task_id}",
        result_ttl=60,
        failure_ttl=600,
    )


def build_pipeline_state(client: redis.Redis, config: KubeConfig) -> dict[str, Any]:
    """Tries in every stage, a failed job, a half-dequeued job, outcomes read but not acked, a leader.

    Returns what a dispatcher saw while it ran a job: ``collect_status`` taken from inside the job function.
    """
    records = TryRecords(client, KEYS, 600)
    queue = Queue(QUEUE, connection=client, job_class=BridgeJob, serializer=SERIALIZER)

    # A job naming a function outside the allowlist: a dispatcher fails it without calling anything.
    queue.enqueue_call("os.system", args=("true",), job_id="forged", failure_ttl=600)
    allowlisted = job_class_with({LAUNCH_POD: lambda payload: {"ok": True}})
    SimpleWorker([queue], connection=client, job_class=allowlisted, serializer=SERIALIZER).work(burst=True)

    # Tries at each state (records and stream entries exactly as the dispatchers and the watcher write them).
    records.advance(TryRecord(key("launched"), TryState.LAUNCHED, pod="p1", namespace=NAMESPACE))
    records.advance(
        TryRecord(key("pending"), TryState.PENDING, phase="Pending", reason="ContainerCreating"),
    )
    records.advance(
        TryRecord(key("running"), TryState.RUNNING, phase="Running"),
        Outcome(key("running"), TryState.RUNNING),
    )
    records.advance(
        TryRecord(key("done"), TryState.SUCCESS, phase="Succeeded", exit_code=0),
        Outcome(key("done"), TryState.SUCCESS, exit_code=0),
    )
    client.sadd(KEYS.in_flight, "expired-try")  # its record expired: counted apart, never a crash

    # The executor's group has read one outcome and not acknowledged it yet.
    client.xgroup_create(KEYS.results, "executor", id="0")
    client.xreadgroup("executor", "scheduler-1", {KEYS.results: ">"}, count=1)

    # A dispatcher that took a job off the queue and died before starting it (the reaper's business).
    enqueue_launch(queue, key("taken"))
    assert Queue.dequeue_any([queue], None, connection=client, job_class=BridgeJob, serializer=SERIALIZER)

    # Three launches waiting; a live dispatcher runs the first and looks at the status meanwhile.
    for task in ("a", "b", "c"):
        enqueue_launch(queue, key(task))
    seen: dict[str, Any] = {}

    def launch(payload: dict[str, Any]) -> dict[str, bool]:
        seen["status"] = status.collect_status(client, config)
        return {"ok": True}

    worker = SimpleWorker(
        [queue], connection=client, job_class=job_class_with({LAUNCH_POD: launch}), serializer=SERIALIZER
    )
    worker.name = "kbridge-dispatcher-alive-1"
    now = redis_now_ms(client)
    client.zadd(KEYS.dispatchers, {worker.name: now, "kbridge-dispatcher-gone-7": now - 60_000})
    seen["worker"] = worker.name
    worker.work(burst=True, max_jobs=1)

    # The watcher of our namespace holds its lease; another namespace has only a checkpoint left.
    client.set(KEYS.watcher_leader(NAMESPACE), "watcher-a", px=15_000)
    client.set(KEYS.watcher_checkpoint(NAMESPACE), "4711")
    client.set(KEYS.watcher_checkpoint("other"), "12")
    return seen


def test_empty_redis_shows_the_configured_queue_and_no_leader(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_status(config_file, capsys, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["queues"] == [{"name": QUEUE, "waiting": 0, "taken": 0, "started": 0, "failed": 0}]
    assert report["dispatchers"] == []
    assert report["in_flight"]["total"] == 0
    assert report["results"] == {
        "key": KEYS.results,
        "length": 0,
        "first_id": "",
        "last_id": "",
        "groups": [],
    }
    assert report["watchers"] == [
        {"namespace": NAMESPACE, "leader": "", "lease_expires_in_seconds": None, "checkpoint": ""}
    ]
    code, out, _ = run_status(config_file, capsys)
    assert code == 0
    assert "Dispatchers: 0 alive of 0" in out
    assert "no consumer group: the executor has not started reading" in out
    assert out.splitlines()[-1].split() == [NAMESPACE, "NONE", "-", "-"]


def test_status_reports_every_part_of_the_pipeline(
    config_file: Path, config: KubeConfig, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = build_pipeline_state(redis_client, config)

    # While the dispatcher ran its job: one started, the rest waiting, the dispatcher busy with it.
    during: status.BridgeStatus = seen["status"]
    assert [(q.name, q.waiting, q.taken, q.started, q.failed) for q in during.queues] == [(QUEUE, 2, 1, 1, 1)]
    busy = {d.name: d for d in during.dispatchers}[seen["worker"]]
    assert (busy.alive, busy.rq_state, busy.current_job) == (True, "busy", job_id_for(key("a")))

    code, out, err = run_status(config_file, capsys, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["queues"] == [{"name": QUEUE, "waiting": 2, "taken": 1, "started": 0, "failed": 1}]
    dispatchers = {d["name"]: d for d in report["dispatchers"]}
    assert dispatchers["kbridge-dispatcher-alive-1"]["alive"] is True
    assert dispatchers["kbridge-dispatcher-alive-1"]["last_beat_seconds_ago"] < 10
    assert dispatchers["kbridge-dispatcher-gone-7"]["alive"] is False
    assert dispatchers["kbridge-dispatcher-gone-7"]["last_beat_seconds_ago"] >= 60
    assert report["dispatchers"][0]["name"] == "kbridge-dispatcher-alive-1"  # live ones first
    assert report["in_flight"] == {
        "total": 4,
        "by_state": {"launched": 1, "pending": 1, "running": 1},
        "by_phase": {"": 1, "Pending": 1, "Running": 1},
        "by_reason": {"ContainerCreating": 1},
        "without_record": 1,
    }
    results = report["results"]
    assert results["length"] == 2  # running + success; launched/pending are not streamed
    entries: Any = redis_client.xrange(KEYS.results)
    entry_ids = [entry_id.decode() for entry_id, _ in entries]
    assert (results["first_id"], results["last_id"]) == (entry_ids[0], entry_ids[-1])
    [group] = results["groups"]
    assert (group["name"], group["pending"], group["lag"]) == ("executor", 1, 1)
    assert group["last_delivered_id"] == results["first_id"]
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("scheduler-1", 1)]
    watchers = {w["namespace"]: w for w in report["watchers"]}
    assert (watchers[NAMESPACE]["leader"], watchers[NAMESPACE]["checkpoint"]) == ("watcher-a", "4711")
    assert 0 < watchers[NAMESPACE]["lease_expires_in_seconds"] <= 15
    assert (watchers["other"]["leader"], watchers["other"]["checkpoint"]) == ("", "12")

    code, out, _ = run_status(config_file, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("kbridge status: redis://127.0.0.1:")
    queue_header = lines.index("Queues") + 1
    assert lines[queue_header].split() == ["QUEUE", "WAITING", "TAKEN", "STARTED", "FAILED"]
    assert lines[queue_header + 1].split() == [QUEUE, "2", "1", "0", "1"]
    assert "Dispatchers: 1 alive of 2 (alive = heartbeat within 10 s)" in lines
    gone = next(line for line in lines if "kbridge-dispatcher-gone-7" in line)
    assert " NO " in gone
    assert "In-flight tries (pod launched, not finished): 4" in lines
    assert "  by state: launched 1, pending 1, running 1" in lines
    assert "  by pod phase: (not reported) 1, Pending 1, Running 1" in lines
    assert "  without a record (expired or unreadable): 1" in lines
    assert any(line.startswith(f"Result stream {KEYS.results}: 2 entries") for line in lines)
    executor = next(line for line in lines if line.startswith("  executor "))
    assert executor.split()[1:3] == ["1", "1"]
    assert "scheduler-1 (1 pending" in executor
    leader = next(line for line in lines if line.startswith(f"  {NAMESPACE} "))
    assert (leader.split()[1], leader.split()[-1]) == ("watcher-a", "4711")


def test_status_only_reads(config: KubeConfig, redis_client: redis.Redis) -> None:
    build_pipeline_state(redis_client, config)
    # An abandoned started job: rq's registry helpers would clean it up on read; status must not.
    redis_client.zadd(Keys.rq_started(QUEUE), {"abandoned:exec": 1})
    before = {key: redis_client.dump(key) for key in redis_client.keys("*")}
    status.collect_status(redis_client, config)
    status.collect_task(redis_client, config, key("a"))
    assert {key: redis_client.dump(key) for key in redis_client.keys("*")} == before


def test_task_shows_job_id_record_and_rq_job(
    config_file: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    mapped = TaskKey("etl", "load", "manual__1", 2, 3)
    queue = Queue(QUEUE, connection=redis_client, job_class=BridgeJob, serializer=SERIALIZER)
    enqueue_launch(queue, mapped)
    TryRecords(redis_client, KEYS, 600).advance(TryRecord(mapped, TryState.QUEUED, queue=QUEUE))

    args = ("--task", "etl", "load", "manual__1", "--try", "2", "--map-index", "3")
    code, out, err = run_status(config_file, capsys, *args, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["job_id"] == job_id_for(mapped)
    assert report["key"] == mapped.as_dict()
    assert (report["record"]["state"], report["record"]["queue"]) == ("queued", QUEUE)
    assert (report["job"]["status"], report["job"]["origin"]) == ("queued", QUEUE)
    assert (report["in_flight"], report["delete_job"]) == (False, {})

    code, out, _ = run_status(config_file, capsys, *args)
    assert code == 0
    assert f"  job id / pod name: {job_id_for(mapped)}" in out
    assert {"    state: queued", "    status: queued"} <= set(out.splitlines())

    code, out, _ = run_status(
        config_file, capsys, "--task", "etl", "load", "manual__1"
    )  # try 1: never queued
    assert code == 0
    assert f"  job id / pod name: {job_id_for(key('load'))}" in out
    assert "  try record: none (never queued, or expired)" in out
    assert "  rq job: none (never queued, or expired)" in out


def test_bytes_that_are_not_utf8_are_shown_not_a_crash(config: KubeConfig, redis_client: redis.Redis) -> None:
    job_id = job_id_for(key("odd"))
    redis_client.hset(KEYS.try_record(job_id), mapping={"state": "running", "message": b"caf\xe9"})
    redis_client.sadd(KEYS.in_flight, job_id, b"\xff")
    redis_client.zadd(KEYS.dispatchers, {b"kbridge-dispatcher-\xff": redis_now_ms(redis_client)})
    task = status.collect_task(redis_client, config, key("odd"))
    assert task.record["message"] == "caf\ufffd"
    report = status.collect_status(redis_client, config)
    assert (report.in_flight.total, report.in_flight.without_record) == (2, 2)  # both records unreadable
    assert [dispatcher.name for dispatcher in report.dispatchers] == ["kbridge-dispatcher-\ufffd"]


@pytest.mark.parametrize(
    ("member", "age_ms", "ready"),
    [
        (default_worker_name(), 0, True),
        (socket.gethostname(), 0, True),  # started with --name <pod name>
        (default_worker_name(), 30_000, False),  # beat older than the lease
        (default_worker_name().replace(socket.gethostname(), "another-pod"), 0, False),
        (default_worker_name().replace(socket.gethostname(), f"{socket.gethostname()}-x"), 0, False),
    ],
)
def test_probe_dispatcher_is_ready_only_while_this_hosts_dispatcher_beats(
    config_file: Path,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    member: str,
    age_ms: int,
    ready: bool,
) -> None:
    redis_client.zadd(KEYS.dispatchers, {member: redis_now_ms(redis_client) - age_ms})
    code, out, err = run_status(config_file, capsys, "--probe", "dispatcher")
    if ready:
        assert (code, out.split(":")[0]) == (0, f"dispatcher {member}")
    else:
        assert (code, out) == (1, "")
        assert (
            err
            == f"kbridge status: no dispatcher of host {socket.gethostname()} has beaten in the last 10 s\n"
        )


def test_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "kbridge.cfg"
    path.write_text(_config_text(f"redis://user:hunter2@127.0.0.1:{port}/0"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kbridge"), "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"kbridge status: cannot read Redis at redis://user:<redacted>@127.0.0.1:{port}/0"
    )
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--try", "2"], "--try and --map-index select a try of --task DAG TASK RUN; add --task"),
        (["--task", "d", "t", "r", "--probe", "dispatcher"], "--task and --probe are separate checks"),
        (["--task", "d", "t", "r", "--try", "-1"], "task key field 'try_number' must be an integer >= 0"),
    ],
)
def test_bad_flags_are_usage_errors(
    config_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_status(config_file, capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("kbridge status: ")
    assert message in err
    assert "Traceback" not in err


def test_status_is_listed_by_kbridge_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    summary = (status.main.__doc__ or "").splitlines()[0]
    listed = [line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert ["status", summary] in listed


# --- docs/redis.md --------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "redis.md"
DEFAULT_KEYS = Keys()


def test_docs_key_table_is_the_one_protocol_renders() -> None:
    text = DOCS.read_text()
    start, end = "<!-- redis-keys:start -->\n", "<!-- redis-keys:end -->"
    assert text.count(start) == 1
    assert text.split(start, 1)[1].split(end, 1)[0] == render_key_table_markdown()


def _recipes() -> list[str]:
    """The ``redis-cli`` lines of the docs' shell blocks, without the ``redis-cli`` word."""
    lines, in_shell = [], False
    for line in DOCS.read_text().splitlines():
        if line.startswith("```"):
            in_shell = line == "```sh"
        elif in_shell and line.startswith("redis-cli "):
            lines.append(line.removeprefix("redis-cli "))
    return lines


def test_every_redis_cli_recipe_runs_against_real_bridge_state(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # A try whose launch job failed in the dispatcher (record still queued): the requeue recipe's case.
    task_key = key("load")
    job_id = job_id_for(task_key)
    queue = Queue("kbridge", connection=redis_client, job_class=BridgeJob, serializer=SERIALIZER)
    records = TryRecords(redis_client, DEFAULT_KEYS, 600)
    records.advance(TryRecord(task_key, TryState.QUEUED, queue="kbridge"))
    request = LaunchRequest(task_key, ("true",), "kbridge")
    queue.enqueue_call(LAUNCH_POD, args=(request.to_payload(None),), job_id=job_id, failure_ttl=600)

    def broken(payload: dict[str, Any]) -> None:
        raise RuntimeError("API unreachable")

    worker = SimpleWorker(
        [queue],
        connection=redis_client,
        job_class=job_class_with({LAUNCH_POD: broken}),
        serializer=SERIALIZER,
    )
    worker.work(burst=True)
    assert redis_client.zscore(Keys.rq_failed("kbridge"), job_id) is not None
    other = key("other")
    records.advance(TryRecord(other, TryState.RUNNING, phase="Running"), Outcome(other, TryState.RUNNING))
    redis_client.xgroup_create(DEFAULT_KEYS.results, "executor", id="0")
    redis_client.xreadgroup("executor", "scheduler-0", {DEFAULT_KEYS.results: ">"})
    redis_client.zadd(DEFAULT_KEYS.dispatchers, {worker.name: redis_now_ms(redis_client)})
    redis_client.set(DEFAULT_KEYS.watcher_leader("default"), "watcher-a", px=15_000)
    redis_client.set(DEFAULT_KEYS.watcher_checkpoint("default"), "7")

    placeholders = {
        "<job id>": job_id,
        "<dispatcher name>": worker.name,
        "<now ms - 10000>": str(redis_now_ms(redis_client) - 10_000),
    }
    cli_like = redis_server.client()
    cli_like.response_callbacks.clear()  # raw replies, as redis-cli gets them
    recipes = _recipes()
    assert len(recipes) >= 20
    replies: dict[str, Any] = {}
    for recipe in recipes:
        for placeholder, value in placeholders.items():
            recipe = recipe.replace(placeholder, value)
        args = shlex.split(recipe, comments=True)
        assert not any("<" in arg for arg in args), f"unknown placeholder in {recipe!r}"
        if args[:2] == ["--scan", "--pattern"]:
            replies[recipe] = list(redis_client.scan_iter(match=args[2]))
        else:
            replies[recipe] = command(cli_like, *args)  # a wrong key type raises WRONGTYPE
    by_command = {" ".join(shlex.split(recipe, comments=True)): reply for recipe, reply in replies.items()}
    assert by_command[f"HGET kbridge:try:{job_id} state"] == b"queued"
    assert sorted(by_command["--scan --pattern kbridge:try:etl-*"]) == sorted(
        DEFAULT_KEYS.try_record(job_id_for(task)).encode() for task in (task_key, other)
    )
    assert by_command["SCARD kbridge:in-flight"] == 1
    assert by_command["GET kbridge:watcher:default:leader"] == b"watcher-a"
    # The requeue recipe put the job back where a dispatcher will take it.
    assert redis_client.lrange(Keys.rq_queue("kbridge"), 0, -1) == [job_id.encode()]
    assert redis_client.hget(Keys.rq_job(job_id), "status") == b"queued"
    assert redis_client.zcard(Keys.rq_failed("kbridge")) == 0


def _acl_rules() -> dict[str, list[str]]:
    rules = {}
    for line in DOCS.read_text().splitlines():
        words = line.split()
        if words[:2] == ["ACL", "SETUSER"]:
            rules[words[2]] = words[3:]
    return rules


# rq asks for CLIENT LIST (a -@dangerous command) only to learn its own address, and warns without it.
@pytest.mark.filterwarnings("ignore:CLIENT LIST command not supported")
def test_documented_acl_users_can_do_their_job_and_no_more(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    rules = _acl_rules()
    assert set(rules) == {"kbridge-executor", "kbridge-dispatcher", "kbridge-watcher", "kbridge-status"}

    def login(user: str) -> redis.Redis:
        password = f"pw-{user}"
        command(
            redis_client, "ACL", "SETUSER", user, *[f">{password}" if r == ">…" else r for r in rules[user]]
        )
        return redis.Redis.from_url(redis_server.url, username=user, password=password)

    try:
        task_key = key("acl")
        executor = login("kbridge-executor")
        queue = Queue("kbridge", connection=executor, job_class=BridgeJob, serializer=SERIALIZER)
        request = LaunchRequest(task_key, ("true",), "kbridge")
        queue.enqueue_call(LAUNCH_POD, args=(request.to_payload(None),), job_id=request.job_id)
        TryRecords(executor, DEFAULT_KEYS, 600).advance(TryRecord(task_key, TryState.QUEUED, queue="kbridge"))
        executor.xgroup_create(DEFAULT_KEYS.results, "executor", id="0", mkstream=True)

        dispatcher = login("kbridge-dispatcher")
        launched: list[str] = []

        def launch(payload: dict[str, Any]) -> dict[str, bool]:
            records = TryRecords(dispatcher, DEFAULT_KEYS, 600)
            launched.append(payload["key"]["task_id"])
            return {"launched": records.advance(TryRecord(task_key, TryState.LAUNCHED, pod=request.job_id))}

        dispatchers = Queue("kbridge", connection=dispatcher, job_class=BridgeJob, serializer=SERIALIZER)
        worker = SimpleWorker(
            [dispatchers],
            connection=dispatcher,
            job_class=job_class_with({LAUNCH_POD: launch}),
            serializer=SERIALIZER,
        )
        assert worker.work(burst=True)
        assert launched == ["acl"]
        assert redis_client.hget(Keys.rq_job(request.job_id), "status") == b"finished"
        dispatcher.zadd(DEFAULT_KEYS.dispatchers, {worker.name: redis_now_ms(dispatcher)})

        watcher = login("kbridge-watcher")
        assert TryRecords(watcher, DEFAULT_KEYS, 600).advance(
            TryRecord(task_key, TryState.SUCCESS, exit_code=0),
            Outcome(task_key, TryState.SUCCESS, exit_code=0),
        )
        assert watcher.set(DEFAULT_KEYS.watcher_leader("default"), "w", nx=True, px=15_000)
        with pytest.raises(redis.exceptions.NoPermissionError):
            watcher.llen(Keys.rq_queue("kbridge"))  # the watcher has no business with rq's keys

        read: Any = executor.xreadgroup("executor", "s", {DEFAULT_KEYS.results: ">"})
        [[_, [(_, fields)]]] = read
        assert Outcome.from_fields(fields).state == TryState.SUCCESS

        reader = login("kbridge-status")
        defaults = KubeConfig({"bridge": {"redis_url": redis_server.url}})
        report = status.collect_status(reader, defaults)
        assert (report.results.length, report.watchers[0].leader) == (1, "w")
        assert status.collect_task(reader, defaults, task_key).record["state"] == "success"
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set("kbridge:anything", "1")
    finally:
        for user in rules:
            command(redis_client, "ACL", "DELUSER", user)
