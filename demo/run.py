"""``make demo``: fifty real task commands through the whole bridge, on a machine with nothing but Python.

What it shows is the production path, every part a separate process started through the ``kbridge``
CLI (:class:`bridge.sim.stack.LocalStack`): an embedded Redis, ``kbridge sim`` with the process kubelet
(each pod's command really runs), two ``kbridge dispatcher`` and one ``kbridge watcher``. This script plays
the Airflow scheduler: it hands the tries to ``KubernetesExecutor.execute_async`` and calls ``sync()`` in
its loop, printing one live progress line from the try records in Redis, then a table of every try's
final state, reason or exit code and timings. The mix covers the outcomes an operator meets: success,
exit codes, a signal, OOMKilled through a memory limit, an unpullable image, a missing secret, a secret
passed by reference, mapped tasks, and task input the executor refuses before anything is queued.
Everything is shut down at the end and the script checks no process of the run is left.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.protocol import Outcome, TryState, job_id_for, utc_now
from bridge.records import TryRecords
from bridge.sim.stack import LocalStack, kbridge_command, processes_of_run
from bridge.task_key import TaskKey

PY = sys.executable
DAG_ID = "bridge_demo"
RUN_ID = "manual__2026-11-23T00:00:00+00:00"
SECRET_NAME, SECRET_KEY, SECRET_VALUE = "demo-credentials", "token", "s3cr3t-token"
DEADLINE_S = 45.0
LOOP_INTERVAL_S = 0.1  # the scheduler loop's pace: how often sync() runs and the progress line is drawn


@dataclass(frozen=True)
class DemoTask:
    task_id: str
    command: Any  # a list of str; one task passes a str on purpose
    expect: tuple[str, str] = ("success", "")  # (final state, reason) the demo expects
    executor_config: dict[str, Any] | None = None
    map_index: int = -1

    @property
    def key(self) -> TaskKey:
        return TaskKey(DAG_ID, self.task_id, RUN_ID, try_number=1, map_index=self.map_index)

    @property
    def label(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


def _python(code: str) -> list[str]:
    return [PY, "-c", code]


def tasks() -> list[DemoTask]:
    """The demo's 50 tries."""
    unpullable = {"containers": [{"name": "base", "image": "example.com/nonexistent:1"}]}
    secret_ref = {"secretKeyRef": {"name": "not-created", "key": "k"}}
    missing_secret = {"containers": [{"name": "base", "env": [{"name": "API_KEY", "valueFrom": secret_ref}]}]}
    memory_limit = {"KubernetesExecutor": {"request_memory": "64Mi", "limit_memory": "128Mi"}}
    code = {
        "hello": "import platform; print('hello from', platform.python_implementation())",
        "sum_squares": "print(sum(i * i for i in range(10**6)))",
        "uses_secret_by_reference": "import os; print('token length', len(os.environ['DEMO_TOKEN']))",
        "sleep_then_succeed": "import time; time.sleep(1.5); print('done')",
        "writes_a_file": "open('out.txt', 'w').write('x' * 1000); print(len(open('out.txt').read()))",
        "warns_on_stderr": "import sys; print('careful', file=sys.stderr)",
        "reads_pod_env": "import os; print(os.environ['HOSTNAME'])",
        "json_roundtrip": "import json; print(json.loads(json.dumps({'a': [1, 2]})))",
    }
    primes = "n = {}; print(sum(all(k % d for d in range(2, int(k**0.5) + 1)) for k in range(2, n)))"
    failing = [
        DemoTask("exit_1", _python("raise SystemExit(1)"), ("failed", "Error")),
        DemoTask("exit_3", _python("print('failing on purpose'); raise SystemExit(3)"), ("failed", "Error")),
        DemoTask("exit_42", _python("raise SystemExit(42)"), ("failed", "Error")),
        DemoTask("killed_by_sigterm", _python("import os; os.kill(os.getpid(), 15)"), ("failed", "Error")),
        DemoTask("missing_binary", ["/no/such/binary"], ("failed", "StartError")),
        DemoTask(
            "over_memory_limit",
            _python("import time; b = b'x' * (400 * 2**20); time.sleep(10)"),
            ("failed", "OOMKilled"),
            memory_limit,
        ),
        DemoTask(
            "unpullable_image", _python("print('never runs')"), ("failed", "ErrImagePull"),
            {"pod_override": {"spec": unpullable}},
        ),
        DemoTask(
            "missing_secret", _python("print('never runs')"), ("failed", "CreateContainerConfigError"),
            {"pod_override": {"spec": missing_secret}},
        ),
        DemoTask(
            "bad_executor_config", _python("print('never runs')"), ("failed", "InvalidTask"),
            {"KubernetesExecutor": {"request_memory": "lots"}},
        ),
        DemoTask("command_is_a_string", "echo this is not an argv list", ("failed", "InvalidTask")),
    ]  # fmt: skip
    return [
        *(DemoTask(task_id, _python(text)) for task_id, text in code.items()),
        *(
            DemoTask(
                "shard", _python(f"import time; time.sleep({i % 5 / 5}); print('shard {i}')"), map_index=i
            )
            for i in range(22)
        ),
        *(DemoTask("count_primes", _python(primes.format((i + 1) * 20000)), map_index=i) for i in range(10)),
        *failing,
    ]


@dataclass
class Seen:
    """What the scheduler side saw of one try."""

    queued_at: datetime
    running: Outcome | None = None
    final: tuple[str, Outcome] | None = None


def _seconds(start: datetime, outcome: Outcome | None) -> str:
    """Seconds from ``start`` to when the outcome was observed (by the watcher, or the executor)."""
    if outcome is None or not outcome.at:
        return "-"
    return f"{(datetime.fromisoformat(outcome.at) - start).total_seconds():.1f}"


def _reason(outcome: Outcome) -> str:
    if outcome.exit_code is None:
        return outcome.reason
    return f"{outcome.reason} (exit {outcome.exit_code})" if outcome.reason else f"exit {outcome.exit_code}"


def _as_expected(task: DemoTask, state: str, outcome: Outcome) -> bool:
    want_state, want_reason = task.expect
    return state == want_state and (outcome.reason == want_reason or (not want_reason and state == "success"))


def table(demo_tasks: list[DemoTask], seen: dict[TaskKey, Seen]) -> tuple[list[str], int]:
    """The final table (one line per try) and how many tries ended otherwise than expected.

    Times count from ``execute_async``; "running" is blank when the try never ran, or started and ended
    between two ``sync()`` calls (the executor then reports only the end).
    """
    header = f"{'task':26} {'state':8} {'reason / exit code':34} {'running':>7} {'done':>6}  detail"
    lines, wrong = [header, "-" * 110], 0
    for task in demo_tasks:
        entry = seen[task.key]
        if entry.final is None:
            lines.append(
                f"{task.label:26} {'(none)':8} {'':34} {'-':>7} {'-':>6}  <-- no final state in time"
            )
            wrong += 1
            continue
        state, outcome = entry.final
        ok = _as_expected(task, state, outcome)
        wrong += not ok
        detail = outcome.message.splitlines()[0] if state == "failed" and outcome.message else ""
        if not ok:
            detail = f"<-- expected {' '.join(task.expect)}".rstrip()
        running, done = _seconds(entry.queued_at, entry.running), _seconds(entry.queued_at, outcome)
        lines.append(
            f"{task.label:26} {state:8} {_reason(outcome)[:34]:34} {running:>7} {done:>6}  {detail[:60]}"
        )
    return lines, wrong


class Progress:
    """One status line, redrawn in place on a terminal; printed only when it changes otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._last = ""
        self._tty = sys.stdout.isatty()

    def show(self, states: Counter[str], synced: int) -> None:
        counts = "  ".join(f"{state} {states[state]:2d}" for state in TryState if states[state])
        line = (
            f"[{time.monotonic() - self.started:5.1f} s] {counts}  | executor has {synced}/{self.total} final"
        )
        if self._tty:
            print(f"\r{line}\x1b[K", end="", flush=True)
        elif line.split("]", 1)[1] != self._last.split("]", 1)[-1]:
            print(line, flush=True)
        self._last = line

    def done(self) -> None:
        if self._tty:
            print()


def run(stack: LocalStack, demo_tasks: list[DemoTask]) -> dict[TaskKey, Seen]:
    core = stack.core_v1()
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    core.create_namespaced_secret(
        stack.namespace, {"metadata": {"name": SECRET_NAME}, "data": {SECRET_KEY: encoded}}
    )
    core.api_client.close()

    executor = stack.executor()
    executor.start()
    seen: dict[TaskKey, Seen] = {}
    for task in demo_tasks:
        seen[task.key] = Seen(datetime.now(UTC))
        executor.execute_async(task.key, task.command, executor_config=task.executor_config)
    print(
        f"handed {len(demo_tasks)} task tries to KubernetesExecutor.execute_async; scheduler loop running\n"
    )

    records = TryRecords(stack.redis, stack.keys, stack.config.record_ttl_seconds)
    job_ids = [job_id_for(task.key) for task in demo_tasks]
    progress = Progress(len(demo_tasks))
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        executor.sync()
        for key, (state, outcome) in executor.get_event_buffer().items():
            entry = seen[TaskKey(*key)]
            if not outcome.at:  # refused by the executor itself: observed now
                outcome = dataclasses.replace(outcome, at=utc_now())
            if state == "running":
                entry.running = outcome
            else:
                entry.final = (state, outcome)
        states = Counter(record.state.value for record in records.get_many(job_ids).values() if record)
        finished = sum(entry.final is not None for entry in seen.values())
        progress.show(states, finished)
        if finished == len(demo_tasks):
            break
        time.sleep(LOOP_INTERVAL_S)
    progress.done()
    executor.end(timeout=5)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="keep the configuration and every process's log here")
    options = parser.parse_args(argv)
    demo_tasks = tasks()
    started = time.monotonic()
    stack = LocalStack(
        dispatchers=2,
        watchers=1,
        kubelet="process",
        run_dir=options.run_dir,
        settings={
            "kubernetes": {"delete_worker_pods_on_failure": "True"},
            "kubernetes_secrets": {"DEMO_TOKEN": f"{SECRET_NAME}={SECRET_KEY}"},
        },
    )
    with stack:
        # The executor runs in this process, as in a scheduler: its log goes next to the workers' logs.
        logging.basicConfig(
            filename=stack.run_dir / "executor.log",
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        print(f"{'redis':12} {stack.redis_url}")
        print(f"{'simulator':12} {stack.sim_url}  (kbridge sim --kubelet process)")
        for process in [*stack.dispatchers, *stack.watchers]:
            args = process.argv[len(kbridge_command()) :]
            print(f"{process.name:12} pid {process.pid:<7}  $ kbridge {' '.join(args)}")
        print(
            f"ready in {time.monotonic() - started:.1f} s; watcher lease held by {stack.watcher_leader()}\n"
        )
        seen = run(stack, demo_tasks)
        codes = stack.stop()
    lines, wrong = table(demo_tasks, seen)
    print("\n".join(lines))
    leftovers = processes_of_run(stack.run_id)
    print(f"\nshutdown: {', '.join(f'{name} exit {code}' for name, code in codes.items())}")
    print(f"processes left behind: {leftovers or 'none'}")
    if options.run_dir:
        print(f"configuration and logs of every process: {options.run_dir}")
    elapsed = time.monotonic() - started
    print(f"\n{len(demo_tasks) - wrong}/{len(demo_tasks)} tasks ended as expected in {elapsed:.1f} s")
    return 1 if wrong or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
