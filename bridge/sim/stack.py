"""The whole bridge on one machine: Redis, a simulated cluster and the workers, as separate processes.

Why: the bridge is a set of processes that only meet in Redis and the Kubernetes API, and the failures it
must survive (a dispatcher killed mid-job, a watcher replaced, Redis restarted) are process failures. The
demo, the end-to-end test and manual experiments therefore run it the way it is deployed: ``kbridge sim``,
``kbridge dispatcher`` and ``kbridge watcher`` started through the CLI from one generated configuration
file, each logging to its own file in a run directory. :class:`LocalStack` owns those processes: it waits
for each to be ready by what it announces (the simulator's ``serving`` line, a dispatcher's heartbeat in
Redis, the watcher's lease), disrupts them on request, and on the way out leaves no process behind.

Every process the stack starts, worker pods of the process kubelet included (through
``[kubernetes_environment_variables]``), carries ``KBRIDGE_STACK_RUN=<run id>`` in its environment, so
:func:`processes_of_run` finds leftovers after a crash or a bad shutdown. This is a development harness;
production code never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

import redis

from bridge.config import KubeConfig, load_config
from bridge.protocol import Keys, decode_text
from bridge.redis_server import RedisServer

if TYPE_CHECKING:
    from bridge.executor import KubernetesExecutor

T = TypeVar("T")

RUN_MARKER = "KBRIDGE_STACK_RUN"
_SERVING = re.compile(r"kbridge sim: serving (\S+) \(kubeconfig: (.+)\)")
_POLL_S = 0.02
_STOP_TIMEOUT_S = 20.0
_PROC = Path("/proc")


class StackError(RuntimeError):
    """A process of the stack did not start, died, or a condition was not reached in time."""


def wait_until(condition: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``condition`` until it returns something other than None/False; its value.

    For conditions in another process (Redis keys, a pod's phase) that announce nothing we can block on.
    ``condition`` may raise :class:`StackError` to give up early (e.g. the process it waits for died).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise StackError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(_POLL_S)


def kbridge_command() -> list[str]:
    """argv prefix running the ``kbridge`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("kbridge")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from bridge.cli import main; sys.exit(main())"]


def _ancestors() -> set[int]:
    """This process and its ancestors: they may carry a run marker they were given, but are not leftovers."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int((_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def processes_of_run(run_id: str) -> list[int]:
    """Live processes with ``KBRIDGE_STACK_RUN=<run_id>`` in their environment (no zombies or ancestors)."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    found = []
    ours = _ancestors()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append(int(entry.name))
    return sorted(found)


class ManagedProcess:
    """One child process whose combined output goes, line by line, to a log file.

    A pump thread copies the output so the child never blocks on a full pipe, and lets a caller wait for
    a line announcing readiness (:meth:`wait_for_line`) instead of sleeping.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env)
        )
        assert self.process.stdout is not None
        self._pump = threading.Thread(
            target=self._copy, args=(self.process.stdout,), name=f"log pump {name}", daemon=True
        )
        self._pump.start()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def _copy(self, stream: IO[bytes]) -> None:
        with stream, self.log_path.open("ab") as log:
            for raw in stream:
                log.write(raw)
                log.flush()
                with self._changed:
                    self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first output line matching ``pattern``; StackError if the process ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match := pattern.search(line):
                        return match
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(remaining)
        reason = (
            f"exited with status {self.process.wait()}" if self._eof else f"gave no sign in {timeout_s:g} s"
        )
        raise StackError(f"{self.name} {reason}; last output:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        with self._changed:
            return "\n".join(self._lines[-lines:]) or "(no output)"

    def output(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """Exit status; StackError when the process is still running after ``timeout_s``."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise StackError(
                f"{self.name} still runs {timeout_s:g} s later; last output:\n{self.tail()}"
            ) from None
        self._pump.join(timeout=5.0)
        return code

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S, *, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already), SIGKILL if still running after ``timeout_s``; exit status.

        SIGTERM is sent once only: a second one means "stop now" to rq and other workers.
        """
        if not signalled:
            self.send(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except StackError:
            self.send(signal.SIGKILL)
            return self.wait(timeout_s)


class LocalStack:
    """Redis + ``kbridge sim`` + N ``kbridge dispatcher`` + ``kbridge watcher``, as a context manager::

        with LocalStack(dispatchers=2, kubelet="process") as stack:
            executor = stack.executor()
            ...
            stack.kill_dispatcher(0)         # SIGKILL by default
            stack.restart_watcher()
            stack.restart_redis(hard=True)

    ``settings`` (``{section: {key: text}}``) override the generated configuration file. ``redis_url``
    uses an existing server instead of starting one (then :meth:`restart_redis` is unavailable, and the
    database must be one the stack may fill); ``redis_appendfsync`` is passed to
    :class:`~bridge.redis_server.RedisServer`. ``run_dir`` keeps the configuration, kubeconfig and logs
    (default: a temporary directory removed by :meth:`stop`).
    """

    def __init__(
        self,
        *,
        dispatchers: int = 2,
        watchers: int = 1,
        kubelet: str = "scripted",
        profile: str = "instant",
        nodes: int = 1,
        settings: Mapping[str, Mapping[str, str]] | None = None,
        redis_url: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 30.0,
        run_id: str | None = None,
        redis_appendfsync: str = "always",
    ) -> None:
        self.run_id = run_id or os.environ.get(RUN_MARKER) or uuid.uuid4().hex[:12]
        self._own_run_dir = run_dir is None
        self.run_dir = (
            Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="kbridge-stack-"))
        )
        self.start_timeout_s = start_timeout_s
        self._initial = (dispatchers, watchers)
        self._kubelet, self._profile, self._nodes = kubelet, profile, nodes
        self._settings = {section: dict(values) for section, values in (settings or {}).items()}
        self._given_redis_url = redis_url
        self._redis_appendfsync = redis_appendfsync
        self.redis_server: RedisServer | None = None
        self.redis_url = redis_url or ""
        self.sim: ManagedProcess | None = None
        self.sim_url = ""
        self.kubeconfig_path = self.run_dir / "kubeconfig.yaml"
        self.config_path = self.run_dir / "kbridge.cfg"
        self.dispatchers: list[ManagedProcess] = []
        self.watchers: list[ManagedProcess] = []
        self._names: Counter[str] = Counter()
        self._config: KubeConfig | None = None
        self._client: redis.Redis | None = None
        self._stopped: dict[str, int | None] | None = None
        self._env = self._child_environment()

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start everything and return once each process is ready; on failure stop what was started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._given_redis_url is None:
            (self.run_dir / "redis").mkdir(exist_ok=True)
            self.redis_server = RedisServer(
                data_dir=self.run_dir / "redis", appendfsync=self._redis_appendfsync
            ).start()
            self.redis_url = self.redis_server.url
        self.sim = self._spawn(
            "sim",
            [
                "sim", "--port", "0", "--kubeconfig", str(self.kubeconfig_path),
                "--kubelet", self._kubelet, "--profile", self._profile, "--nodes", str(self._nodes),
            ],
        )  # fmt: skip
        self.sim_url = self.sim.wait_for_line(_SERVING, self.start_timeout_s)[1]
        self.config_path.write_text(self._config_text())
        self._config = load_config(self.config_path, environ={})  # a bad setting fails here, named
        dispatchers, watchers = self._initial
        started = [self.add_dispatcher(wait=False) for _ in range(dispatchers)]
        self.watchers = [self._spawn_watcher() for _ in range(watchers)]
        for process in started:
            self.wait_dispatcher_ready(process)
        if self.watchers:
            self.wait_watcher_leader()

    def stop(self) -> dict[str, int | None]:
        """Stop the workers (SIGTERM: they finish their current job), then the simulator, then Redis.

        Stragglers are killed, and so are pod processes the simulator left behind. Returns each
        process's exit status (None: it never started), for a test to check the shutdown was clean.
        """
        if self._stopped is not None:
            return self._stopped
        codes: dict[str, int | None] = {}
        workers = [p for p in [*self.dispatchers, *self.watchers] if p.alive]
        for process in workers:
            process.send(signal.SIGTERM)
        for process in [*self.dispatchers, *self.watchers]:
            codes[process.name] = process.stop(signalled=True) if process in workers else process.returncode
        if self.sim is not None:
            codes["sim"] = self.sim.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.redis_server is not None:
            self.redis_server.stop()
        for pid in processes_of_run(self.run_id):  # e.g. pods of a simulator that could not clean up
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self._stopped = codes
        return codes

    # ---- what the stack serves ---------------------------------------------------------------------------

    @property
    def config(self) -> KubeConfig:
        """The settings every process of the stack loads (the file at :attr:`config_path`)."""
        if self._config is None:
            raise StackError("the stack is not started")
        return self._config

    @property
    def keys(self) -> Keys:
        return Keys(self.config.key_prefix, self.config.result_stream)

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def redis(self) -> redis.Redis:
        """A client of the stack's Redis (reconnects by itself after :meth:`restart_redis`)."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_url)
        return self._client

    def executor(self) -> KubernetesExecutor:
        """A fresh (not yet started) executor configured for this stack."""
        from bridge.executor import KubernetesExecutor

        return KubernetesExecutor(self.config)

    def core_v1(self) -> Any:
        """CoreV1Api of the official client, configured from the simulator's kubeconfig only.

        The caller closes ``.api_client`` when done.
        """
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig_path), client_configuration=configuration, persist_config=False
        )
        return client.CoreV1Api(client.ApiClient(configuration))

    # ---- workers -----------------------------------------------------------------------------------------

    def add_dispatcher(self, *, wait: bool = True) -> ManagedProcess:
        """Start one more ``kbridge dispatcher``; with ``wait``, return once its heartbeat is in Redis."""
        name = self._next_name("dispatcher")
        process = self._spawn(name, ["dispatcher", "--config", str(self.config_path), "--name", name])
        self.dispatchers.append(process)
        if wait:
            self.wait_dispatcher_ready(process)
        return process

    def wait_dispatcher_ready(self, process: ManagedProcess) -> None:
        def heartbeat() -> bool:
            self._check_alive(process)
            return self.redis.zscore(self.keys.dispatchers, process.name) is not None

        wait_until(heartbeat, self.start_timeout_s, f"{process.name}'s heartbeat in {self.keys.dispatchers}")

    def kill_dispatcher(self, index: int, signum: int = signal.SIGKILL) -> int:
        """Send ``signum`` to dispatcher ``index`` (order of start) and wait for it to exit; its status."""
        process = self.dispatchers[index]
        process.send(signum)
        return process.wait(_STOP_TIMEOUT_S)

    def alive_dispatchers(self) -> list[str]:
        """Names of the dispatchers whose heartbeat is younger than their lease (Redis server time)."""
        seconds, micros = self.redis.time()
        oldest = seconds * 1000 + micros // 1000 - self.config.dispatcher_lease_seconds * 1000
        return sorted(
            decode_text(name, replace=True)
            for name in self.redis.zrangebyscore(self.keys.dispatchers, oldest, "+inf")
        )

    def watcher_leader(self) -> str | None:
        holder = self.redis.get(self.keys.watcher_leader(self.namespace))
        return None if holder is None else decode_text(holder, replace=True)

    def wait_watcher_leader(self) -> ManagedProcess:
        """The live watcher holding the namespace's lease, once one does."""
        candidates = [watcher for watcher in self.watchers if watcher.alive]
        by_name = {process.name: process for process in candidates}

        def leader() -> ManagedProcess | None:
            for process in candidates:
                self._check_alive(process)
            return by_name.get(self.watcher_leader() or "")

        timeout = self.start_timeout_s + self.config.watcher_lease_seconds  # a killed leader's lease expires
        return wait_until(leader, timeout, f"one of {sorted(by_name)} to hold the watcher lease")

    def restart_watcher(self, signum: int = signal.SIGTERM) -> ManagedProcess:
        """Stop the acting watcher with ``signum``, start a new one, return once a live watcher leads.

        With SIGTERM the old watcher releases its lease; with SIGKILL the lease runs out first
        (``watcher_lease_seconds``). If a standby watcher exists, it may take over instead of the new one.
        """
        holder = self.watcher_leader()
        acting = [w for w in self.watchers if w.alive and w.name == holder] or [
            w for w in self.watchers if w.alive
        ]
        if acting:
            acting[0].send(signum)
            acting[0].wait(_STOP_TIMEOUT_S)
        process = self._spawn_watcher()
        self.watchers.append(process)
        self.wait_watcher_leader()
        return process

    def restart_redis(self, *, hard: bool = True) -> None:
        """Restart the stack's Redis on the same port with the same append-only file (``hard``: SIGKILL)."""
        if self.redis_server is None:
            raise StackError("restart_redis needs the stack's own Redis; this stack was given a redis_url")
        self.redis_server.restart(hard=hard)

    # ---- simulator -------------------------------------------------------------------------------------

    def inject_fault(self, **fault: Any) -> Any:
        """Switch on a fault of the simulated API server (fields as ``POST /_sim/faults``)."""
        return self._sim_admin("POST", "/_sim/faults", fault)

    def clear_faults(self) -> None:
        self._sim_admin("DELETE", "/_sim/faults")

    def _sim_admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.sim_url + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own loopback URL
                text = response.read()
        except urllib.error.HTTPError as error:
            raise StackError(
                f"{method} {path}: {error.code} {error.read().decode(errors='replace')}"
            ) from None
        return json.loads(text) if text else None

    # ---- internals -------------------------------------------------------------------------------------

    def _next_name(self, role: str) -> str:
        self._names[role] += 1  # never reused: rq refuses a second live worker of the same name
        return f"{role}-{self._names[role]}"

    def _spawn_watcher(self) -> ManagedProcess:
        name = self._next_name("watcher")
        return self._spawn(name, ["watcher", "--config", str(self.config_path), "--name", name])

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        return ManagedProcess(name, [*kbridge_command(), *args], self.run_dir / f"{name}.log", self._env)

    def _check_alive(self, process: ManagedProcess) -> None:
        if not process.alive:
            raise StackError(
                f"{process.name} exited with status {process.returncode}; last output:\n{process.tail()}"
            )

    def _child_environment(self) -> dict[str, str]:
        # The generated file is the whole configuration: settings from this process's environment are not
        # passed on, so a developer's KBRIDGE__* variables cannot point a worker at another Redis.
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("KBRIDGE__") and name != "KBRIDGE_CONFIG"
        }
        env[RUN_MARKER] = self.run_id
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they are written
        return env

    def _config_text(self) -> str:
        sections: dict[str, dict[str, str]] = {
            "core": {"log_level": "INFO"},
            "kubernetes": {
                "in_cluster": "False",
                "config_file": str(self.kubeconfig_path),
                "namespace": "default",
                "worker_container_repository": "python",
                "worker_container_tag": "3.12-slim",
                "worker_pods_pending_timeout": "120",
            },
            "bridge": {
                "redis_url": self.redis_url,
                "consumer_name": "local-stack",
                "dispatcher_lease_seconds": "4",
                "watcher_lease_seconds": "4",
            },
            "kubernetes_environment_variables": {RUN_MARKER: self.run_id},
        }
        for section, values in self._settings.items():
            sections.setdefault(section, {}).update(values)
        lines = [f"# Written by bridge.sim.stack.LocalStack (run {self.run_id})."]
        for section, values in sections.items():
            lines += ["", f"[{section}]", *(f"{key} = {value}" for key, value in values.items())]
        return "\n".join(lines) + "\n"


class PodCreations:
    """Counts pod creations per name from the simulator's own watch, independently of the bridge.

    "Exactly one pod per try" cannot be read from the bridge's records (they are what is under test),
    nor from the pods at the end (finished pods are deleted). A list, then a watch from the list's
    resourceVersion, sees every pod created afterwards as one ADDED event (pods that already exist count
    once). The watch runs in short stretches that end with a bookmark, so :meth:`wait_caught_up` knows
    when every write up to a point has been seen.
    """

    stretch_seconds = 1  # each watch request ends after this long (with a bookmark), then resumes

    def __init__(self, sim_url: str, namespace: str = "default") -> None:
        self._url = f"{sim_url}/api/v1/namespaces/{namespace}/pods"
        self.added: Counter[str] = Counter()
        self.uids: dict[str, set[str]] = {}
        self.errors: list[str] = []
        self._resource_version = ""
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod creations watch", daemon=True)

    def __enter__(self) -> PodCreations:
        # List first, in this thread: a pod created and deleted right after ``with`` is still counted.
        listing = self._list()
        for pod in listing["items"]:
            self._apply({"type": "ADDED", "object": pod})
        self._resource_version = listing["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def total(self) -> int:
        """Pod creations seen so far (safe to call while the watch runs)."""
        with self._changed:
            return sum(self.added.values())

    def duplicates(self) -> dict[str, int]:
        """Pod names created more than once."""
        with self._changed:
            return {name: count for name, count in self.added.items() if count > 1}

    def wait_caught_up(self, timeout_s: float = 10.0) -> None:
        """Return once the watch has seen every write made before this call."""
        target = int(self._list(limit=1)["metadata"]["resourceVersion"])
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while int(self._resource_version) < target:
                if self.errors:
                    raise StackError(f"the pod-creation watch failed: {self.errors[-1]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StackError(f"the pod-creation watch did not reach resourceVersion {target}")
                self._changed.wait(remaining)

    def _list(self, limit: int = 0) -> Any:
        query = f"?limit={limit}" if limit else ""
        with urllib.request.urlopen(self._url + query, timeout=10) as response:  # noqa: S310
            return json.load(response)

    def _run(self) -> None:
        while not self._stopping.is_set():
            query = (
                f"?watch=1&allowWatchBookmarks=true&timeoutSeconds={self.stretch_seconds}"
                f"&resourceVersion={self._resource_version}"
            )
            try:
                with urllib.request.urlopen(self._url + query, timeout=10) as stream:  # noqa: S310
                    for line in stream:
                        self._apply(json.loads(line))
            except (OSError, ValueError, StackError) as error:
                with self._changed:
                    self.errors.append(str(error))
                    self._changed.notify_all()
                return

    def _apply(self, event: dict[str, Any]) -> None:
        kind, metadata = event["type"], event["object"].get("metadata", {})
        if kind == "ERROR":
            raise StackError(f"watch error: {event['object'].get('message')}")
        with self._changed:
            if kind == "ADDED":
                self.added[metadata["name"]] += 1
                self.uids.setdefault(metadata["name"], set()).add(metadata["uid"])
            self._resource_version = metadata["resourceVersion"]
            self._changed.notify_all()
