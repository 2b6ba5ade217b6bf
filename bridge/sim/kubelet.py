"""The simulated kubelet: runs the pods bound to the simulated nodes and reports their status like a real one.

Why: the bridge's watcher turns pod status into task outcomes, so the statuses it sees must be the real ones,
written in the real order (the canonical sequences of §4.6 in the team's research notes,
``../shared/research/kubernetes-pod-api-simulator-spec.md``), one store write (one watch event) per
transition:

1. first status: ``startTime``, ``hostIP``, containers ``waiting ContainerCreating``, phase Pending;
2. after the profile's ``kubelet_start`` delay: the sandbox is up (``PodReadyToStartContainers``, ``podIP``)
   and the containers start (phase Running) -- or wait with ``ErrImagePull``/``ImagePullBackOff`` (image
   matches the unpullable pattern) or ``CreateContainerConfigError`` (a missing secret/configmap or key; the
   pod starts when the missing object appears);
3. the containers terminate: ``Completed`` (exit 0), ``Error`` (exit N, or 128+signal), ``OOMKilled`` (137),
   ``StartError`` (128, the command could not be started); phase Succeeded or Failed.

Deleting a running pod (``deletionTimestamp`` set by the API server) stops its containers (SIGTERM, SIGKILL
after the grace period; a scripted container exits 143 at once), writes the terminal status and removes the
pod. A force-deleted pod (DELETED while still running) has its processes killed at once.

Simplifications: every pod runs with ``restartPolicy: Never`` semantics whatever its spec says (containers
are never restarted), init containers are not run (they count as completed), there are no probes, and the
sandbox is not torn down after the containers exit, so the terminal status is a pod's last status write.

Two ways to run a container, chosen per simulator and overridable per pod with annotation
``sim.kbridge.io/kubelet: process|scripted``:

``process``
    ``command + args`` of each container (the image ENTRYPOINT counts as empty) run as a local subprocess,
    argv list, never a shell, in its own session (process group) and a fresh working directory per pod
    (``workingDir``, volumes and security contexts are ignored).
    The environment is the container's ``env``/``envFrom`` with ``secretKeyRef``/``configMapKeyRef``/
    ``fieldRef`` values resolved and ``$(VAR)`` references expanded, over the simulator's PATH and HOME.
    stdout and stderr go, interleaved, to the pod log. ``limits.memory`` is enforced by watching the
    resident memory of the process tree and killing it (OOMKilled) when it goes above the limit.

``scripted``
    Nothing runs; these pod annotations say what happens (all optional):

    ==============================  ================================================================
    ``sim.kbridge.io/outcome``      ``succeed`` (default), ``fail``, ``oom``, ``evict``, ``pending``
                                    (stays ContainerCreating), ``err-image-pull``,
                                    ``create-container-config-error``, ``start-error``
    ``sim.kbridge.io/exit-code``    exit code of ``fail``, 1-255 (default 1)
    ``sim.kbridge.io/run-seconds``  seconds the containers run before the outcome (default 0)
    ``sim.kbridge.io/log``          text each container writes to its log when it starts
    ==============================  ================================================================

    ``evict`` ends like a node-pressure eviction: phase Failed, ``reason: Evicted``, a "The node was low on
    resource: memory." message and a ``DisruptionTarget`` condition. A bad annotation value is reported as
    a ``CreateContainerConfigError`` whose message names the annotation, the value and the accepted values.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from bridge.sim.logs import LogStore
from bridge.sim.profiles import Profile
from bridge.sim.scheduler import TERMINAL_PHASES, CallLater, Node
from bridge.sim.store import ApiError, ObjectStore, now_rfc3339
from bridge.sim.validation import parse_quantity

KubeletMode = Literal["process", "scripted"]
KUBELET_MODES: tuple[KubeletMode, ...] = ("process", "scripted")

ANNOTATION_KUBELET = "sim.kbridge.io/kubelet"
ANNOTATION_OUTCOME = "sim.kbridge.io/outcome"
ANNOTATION_EXIT_CODE = "sim.kbridge.io/exit-code"
ANNOTATION_RUN_SECONDS = "sim.kbridge.io/run-seconds"
ANNOTATION_LOG = "sim.kbridge.io/log"
OUTCOMES = (
    "succeed",
    "fail",
    "oom",
    "evict",
    "pending",
    "err-image-pull",
    "create-container-config-error",
    "start-error",
)

# Images whose reference matches this are "missing from the registry" (overridable per simulator).
DEFAULT_UNPULLABLE_IMAGE = r"(^|[/:])(unpullable|nonexistent|does-not-exist)"
EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. "
    "Container {container} was using 200Mi, request is 0, has larger consumption of memory. "
)
_PULL_BACKOFF_INITIAL_S = 10.0  # the kubelet's image pull back-off: 10 s doubling, capped at 300 s
_PULL_BACKOFF_MAX_S = 300.0
_MEMORY_POLL_S = 0.05
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_VAR_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_FIELD_REF_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_SIGTERM_EXIT = 128 + signal.SIGTERM
_SIGKILL_EXIT = 128 + signal.SIGKILL


class ContainerConfigError(Exception):
    """A container cannot be configured; the message becomes its ``CreateContainerConfigError`` message."""


class _PodGone(Exception):
    """Raised inside a store mutation: the stored pod is another incarnation, so write nothing."""


@dataclass(frozen=True)
class Script:
    """What a scripted pod does, read from its annotations."""

    outcome: str = "succeed"
    exit_code: int = 1
    run_seconds: float = 0.0
    log: str = ""

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Script:
        outcome = annotations.get(ANNOTATION_OUTCOME, "succeed")
        if outcome not in OUTCOMES:
            raise ContainerConfigError(
                f'annotation {ANNOTATION_OUTCOME}: "{outcome}" is not valid; use one of {", ".join(OUTCOMES)}'
            )
        exit_code = _annotation_number(
            annotations, ANNOTATION_EXIT_CODE, "1", int, lambda code: 1 <= code <= 255
        )
        run_seconds = _annotation_number(
            annotations, ANNOTATION_RUN_SECONDS, "0", float, lambda seconds: 0 <= seconds < float("inf")
        )
        return cls(outcome, exit_code, run_seconds, annotations.get(ANNOTATION_LOG, ""))


_ANNOTATION_ADVICE = {
    ANNOTATION_EXIT_CODE: "use an integer from 1 to 255",
    ANNOTATION_RUN_SECONDS: "use seconds >= 0, e.g. 0.5",
}


def _annotation_number(
    annotations: Mapping[str, str],
    key: str,
    default: str,
    kind: Callable[[str], Any],
    valid: Callable[[Any], bool],
) -> Any:
    text = annotations.get(key, default)
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise ContainerConfigError(f'annotation {key}: "{text}" is not valid; {_ANNOTATION_ADVICE[key]}')
    return value


@dataclass
class _Container:
    """One container of a pod: its spec, its current state and, in process mode, its process."""

    spec: Mapping[str, Any]
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    container_id: str | None = None
    process: subprocess.Popen[bytes] | None = None
    memory_limit: int | None = None
    oom_killed: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def image(self) -> str:
        return str(self.spec.get("image") or "")

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> bool:
        return "terminated" in self.state

    def wait(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}

    def finish(self, exit_code: int, reason: str, message: str | None = None) -> None:
        started_at = self.state.get("running", {}).get("startedAt")
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
        if message:
            terminated["message"] = message
        terminated |= {"startedAt": started_at, "finishedAt": now_rfc3339()}
        if self.container_id:
            terminated["containerID"] = self.container_id
        self.state = {"terminated": terminated}

    def status(self) -> dict[str, Any]:
        created = self.container_id is not None
        status: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": {},
            "ready": self.running,
            "restartCount": 0,
            "image": self.image,
            "imageID": _image_id(self.image) if created else "",
            "started": self.running,
        }
        if created:
            status["containerID"] = self.container_id
        return status


@dataclass
class _Pod:
    """What the kubelet knows of one pod it runs."""

    namespace: str
    name: str
    uid: str
    node: Node
    pod_ip: str
    mode: str
    spec: Mapping[str, Any]
    annotations: Mapping[str, str]
    containers: list[_Container]
    start_time: str = field(default_factory=now_rfc3339)
    sandbox_ready: bool = False
    awaiting_config: bool = False  # CreateContainerConfigError: retried when a secret or configmap changes
    deleting: bool = False
    forced_phase: str | None = None  # deleted before its containers ran
    eviction: str | None = None  # the eviction message of an evicted pod
    workdir: Path | None = None

    def phase(self) -> str:
        """``getPhase`` for restartPolicy Never: waiting → Pending, running → Running, all done → terminal."""
        if self.forced_phase:
            return self.forced_phase
        states = [container.state for container in self.containers]
        if any("waiting" in state for state in states):
            return "Pending"
        if any("running" in state for state in states):
            return "Running"
        succeeded = all(state["terminated"]["exitCode"] == 0 for state in states)
        return "Succeeded" if succeeded and not self.eviction else "Failed"


class PodAddressPool:
    """The pod IPs of one node, lowest free first, from its own /20 (node 0: 10.244.0.0/20, node 1: .16.0/20).

    Addresses of removed pods are given back, so however long the simulator runs no two live pods share
    an IP (a node holds at most a few hundred pods; the /20 has room for 4094).
    """

    _BLOCK = 4096
    _NETWORK = int(ipaddress.IPv4Address("10.244.0.0"))
    _FIRST_HOST = 2  # .0 names the network and .1 is the node's bridge, as with the usual CNI plugins

    def __init__(self, node_index: int) -> None:
        self._base = self._NETWORK + node_index * self._BLOCK
        self._released: list[int] = []  # a heap of host numbers free for reuse
        self._next_host = self._FIRST_HOST

    def take(self) -> str:
        """A pod IP no live pod of this node has."""
        if self._released:
            host = heapq.heappop(self._released)
        elif self._next_host < self._BLOCK - 1:  # the last address is the broadcast address
            host, self._next_host = self._next_host, self._next_host + 1
        else:
            raise RuntimeError(f"all {self._BLOCK - 3} pod IPs of a simulated node are in use")
        return str(ipaddress.IPv4Address(self._base + host))

    def release(self, address: str) -> None:
        """The pod holding ``address`` is gone: the address may be handed out again."""
        heapq.heappush(self._released, int(ipaddress.IPv4Address(address)) - self._base)


class Kubelet:
    """Runs the pods bound to ``nodes`` and writes their status; every callback runs on the control loop."""

    def __init__(
        self,
        store: ObjectStore,
        logs: LogStore,
        profile: Profile,
        call_later: CallLater,
        nodes: Sequence[Node],
        *,
        mode: KubeletMode,
        unpullable_image: re.Pattern[str],
        rng: random.Random,
    ) -> None:
        self._store = store
        self._logs = logs
        self._profile = profile
        self._call_later = call_later
        self._nodes = {node.name: node for node in nodes}
        self._mode = mode
        self._unpullable = unpullable_image
        self._rng = rng
        self._pods: dict[str, _Pod] = {}  # by uid
        self._addresses = {name: PodAddressPool(index) for index, name in enumerate(self._nodes)}
        self._memory_watch: list[tuple[_Pod, _Container]] = []
        self._workdirs: Path | None = None  # holds one working directory per process-mode pod
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._workdirs = Path(tempfile.mkdtemp(prefix="kbridge-sim-kubelet-"))
        self._unsubscribe = self._store.subscribe(self._on_event)

    def stop(self) -> None:
        """Stop following events, kill every process this kubelet started and remove the working dirs.

        Call it after the control loop has stopped, so no callback can start a process afterwards.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        processes = [c.process for pod in self._pods.values() for c in pod.containers if c.process]
        for process in processes:
            _signal_group(process, signal.SIGKILL)
        for process in processes:
            process.wait()
        if self._workdirs is not None:
            shutil.rmtree(self._workdirs, ignore_errors=True)

    # ---- events ----------------------------------------------------------------------------------------

    def _on_event(self, event_type: str, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        if kind == "Pod":  # the store calls us under its lock: only hand over to the loop
            self._call_later(0.0, lambda: self._on_pod(event_type, obj))
        elif kind in ("Secret", "ConfigMap") and event_type != "DELETED":
            self._call_later(0.0, lambda: self._retry_config(obj["metadata"]["namespace"]))

    def _on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        run = self._pods.get(metadata["uid"])
        if event_type == "DELETED":
            if run is not None:
                self._discard(run)
            return
        if run is None:
            node = self._nodes.get(pod["spec"].get("nodeName") or "")
            if node is None or pod["status"].get("phase") in TERMINAL_PHASES:
                return
            run = self._admit(pod, node)
        if metadata.get("deletionTimestamp") and not run.deleting:
            self._terminate(run, int(metadata.get("deletionGracePeriodSeconds") or 0))

    def _retry_config(self, namespace: str) -> None:
        for run in list(self._pods.values()):
            if run.awaiting_config and run.namespace == namespace and not run.deleting:
                self._prepare(run)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def _admit(self, pod: dict[str, Any], node: Node) -> _Pod:
        metadata = pod["metadata"]
        annotations = metadata.get("annotations") or {}
        run = _Pod(
            namespace=metadata["namespace"],
            name=metadata["name"],
            uid=metadata["uid"],
            node=node,
            pod_ip=self._addresses[node.name].take(),
            mode=annotations.get(ANNOTATION_KUBELET, self._mode),
            spec=pod["spec"],
            annotations=annotations,
            # The kubelet reports containerStatuses sorted by name, whatever the order in the spec.
            containers=[
                _Container(spec) for spec in sorted(pod["spec"]["containers"], key=lambda c: c["name"])
            ],
        )
        self._pods[run.uid] = run
        self._publish(run)
        self._call_later(self._profile.kubelet_start.sample(self._rng), lambda: self._prepare(run))
        return run

    def _active(self, run: _Pod) -> bool:
        return self._pods.get(run.uid) is run and not run.deleting

    def _prepare(self, run: _Pod) -> None:
        """Sandbox up: pull images, build each container's configuration, start the containers."""
        if not self._active(run):
            return
        run.sandbox_ready = True
        try:
            if run.mode not in KUBELET_MODES:
                raise ContainerConfigError(
                    f'annotation {ANNOTATION_KUBELET}: "{run.mode}" is not a kubelet mode; '
                    f"use one of {', '.join(KUBELET_MODES)}"
                )
            script = Script.from_annotations(run.annotations) if run.mode == "scripted" else None
        except ContainerConfigError as error:
            self._wait_all(run, "CreateContainerConfigError", str(error))
            return
        outcome = script.outcome if script else None
        unpullable = [c for c in run.containers if self._unpullable.search(c.image)]
        if outcome == "err-image-pull":
            unpullable = run.containers
        if unpullable:
            self._fail_pull(run, unpullable, attempt=1)
            return
        if outcome == "create-container-config-error":
            message = f"{ANNOTATION_OUTCOME}=create-container-config-error asks the simulator for this error"
            self._wait_all(run, "CreateContainerConfigError", message)
            return
        if outcome == "pending":
            self._publish(run)
            return
        try:
            environments = {c.name: _Environment(self._store, run).build(c.spec) for c in run.containers}
        except ContainerConfigError as error:
            run.awaiting_config = True
            self._wait_all(run, "CreateContainerConfigError", str(error))
            return
        run.awaiting_config = False
        if script is not None:
            self._start_scripted(run, script)
        else:
            self._start_processes(run, environments)

    def _wait_all(self, run: _Pod, reason: str, message: str) -> None:
        for container in run.containers:
            container.wait(reason, message)
        self._publish(run)

    def _fail_pull(self, run: _Pod, containers: list[_Container], attempt: int) -> None:
        """ErrImagePull, then ImagePullBackOff until the back-off expires, then the next (failing) pull."""
        if not self._active(run):
            return
        pattern = self._unpullable.pattern
        for container in containers:
            container.wait(
                "ErrImagePull",
                f'failed to pull and unpack image "{container.image}": not found '
                f"(the simulator treats images matching {pattern!r} as missing from the registry)",
            )
        self._publish(run)
        for container in containers:
            container.wait("ImagePullBackOff", f'Back-off pulling image "{container.image}"')
        self._publish(run)
        backoff = min(_PULL_BACKOFF_INITIAL_S * 2 ** (attempt - 1), _PULL_BACKOFF_MAX_S)
        self._call_later(backoff, lambda: self._fail_pull(run, containers, attempt + 1))

    def _start_scripted(self, run: _Pod, script: Script) -> None:
        for container in run.containers:
            if script.outcome == "start-error":
                container.finish(
                    128, "StartError", f"{ANNOTATION_OUTCOME}=start-error asks for a failed start"
                )
                continue
            self._logs.start(run.namespace, run.name, container.name)
            if script.log:
                self._logs.append(run.namespace, run.name, container.name, script.log.encode())
            self._mark_running(run, container)
        self._publish(run)
        if script.outcome != "start-error":
            self._call_later(script.run_seconds, lambda: self._finish_scripted(run, script))

    def _finish_scripted(self, run: _Pod, script: Script) -> None:
        if not self._active(run):
            return
        for container in run.containers:
            self._logs.close(run.namespace, run.name, container.name)
            if script.outcome == "succeed":
                container.finish(0, "Completed")
            elif script.outcome == "fail":
                container.finish(script.exit_code, "Error")
            elif script.outcome == "oom":
                container.finish(_SIGKILL_EXIT, "OOMKilled")
            else:  # evict: the kubelet kills every container
                container.finish(_SIGKILL_EXIT, "Error")
        if script.outcome == "evict":
            run.eviction = EVICTION_MESSAGE.format(container=run.containers[0].name)
        self._publish(run)

    def _start_processes(self, run: _Pod, environments: Mapping[str, dict[str, str]]) -> None:
        run.workdir = Path(tempfile.mkdtemp(prefix=f"{run.namespace}.{run.name}.", dir=self._workdirs))
        for container in run.containers:
            environment = environments[container.name]
            argv = [
                _expand(str(part), environment)
                for part in [*(container.spec.get("command") or []), *(container.spec.get("args") or [])]
            ]
            if not argv:
                container.finish(
                    128,
                    "StartError",
                    "failed to start container process: no command: the simulator takes the image ENTRYPOINT "
                    f"as empty; set spec.containers[{container.name}].command",
                )
                continue
            self._logs.start(run.namespace, run.name, container.name)
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=run.workdir,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: the whole tree can be signalled
                )
            except OSError as error:
                self._logs.close(run.namespace, run.name, container.name)
                container.finish(128, "StartError", _start_error_message(argv[0], error))
                continue
            container.process = process
            self._mark_running(run, container)
            self._watch_memory(run, container)
            threading.Thread(
                target=self._supervise,
                args=(run, container, process),
                name=f"kubelet {run.namespace}/{run.name}/{container.name}",
                daemon=True,
            ).start()
        self._publish(run)

    def _mark_running(self, run: _Pod, container: _Container) -> None:
        digest = hashlib.sha256(f"{run.uid}/{container.name}".encode()).hexdigest()
        container.container_id = f"containerd://{digest}"
        container.state = {"running": {"startedAt": now_rfc3339()}}

    def _supervise(self, run: _Pod, container: _Container, process: subprocess.Popen[bytes]) -> None:
        """Thread: pump the output into the log, wait for the exit, hand the exit code to the loop."""
        assert process.stdout is not None
        pump = threading.Thread(
            target=self._pump, args=(run, container, process.stdout), name="kubelet log pump", daemon=True
        )
        pump.start()
        returncode = process.wait()
        _signal_group(process, signal.SIGKILL)  # its main process is gone: so is the rest, as in a container
        pump.join(timeout=5.0)
        self._call_later(0.0, lambda: self._process_exited(run, container, returncode))

    def _pump(self, run: _Pod, container: _Container, stream: IO[bytes]) -> None:
        with stream:
            for chunk in _chunks(stream):
                self._logs.append(run.namespace, run.name, container.name, chunk)

    def _process_exited(self, run: _Pod, container: _Container, returncode: int) -> None:
        container.process = None
        if self._pods.get(run.uid) is not run:  # force-deleted meanwhile
            return
        self._logs.close(run.namespace, run.name, container.name)
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if container.oom_killed:
            container.finish(_SIGKILL_EXIT, "OOMKilled")
        else:
            container.finish(exit_code, "Completed" if exit_code == 0 else "Error")
        self._publish(run)
        if run.deleting and all(c.terminated for c in run.containers):
            self._remove(run)

    def _terminate(self, run: _Pod, grace_s: int) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after the grace period; terminal status; removal."""
        run.deleting = True
        processes = [c.process for c in run.containers if c.process is not None]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        if processes:
            self._call_later(float(grace_s), lambda: self._kill(run))
            return  # _process_exited finishes the deletion
        for container in run.containers:
            if container.running:  # scripted: the container honours SIGTERM at once
                self._logs.close(run.namespace, run.name, container.name)
                container.finish(_SIGTERM_EXIT, "Error")
        if not all(c.terminated for c in run.containers):
            run.forced_phase = "Failed"  # deleted before its containers ever ran
        self._publish(run)
        self._remove(run)

    def _kill(self, run: _Pod) -> None:
        for container in run.containers:
            if container.process is not None:
                _signal_group(container.process, signal.SIGKILL)

    def _remove(self, run: _Pod) -> None:
        """Final step of a graceful deletion: the containers are stopped, so clean up and remove the pod."""
        self._remove_workdir(run)
        try:
            if self._store.get("pods", run.namespace, run.name)["metadata"]["uid"] == run.uid:
                self._store.remove("pods", run.namespace, run.name)
        except ApiError as error:
            if error.code != 404:
                raise

    def _discard(self, run: _Pod) -> None:
        """The pod is gone from the API: kill what still runs, drop its logs and working directory."""
        del self._pods[run.uid]
        self._addresses[run.node.name].release(run.pod_ip)
        self._kill(run)
        self._logs.drop(run.namespace, run.name)
        self._remove_workdir(run)

    @staticmethod
    def _remove_workdir(run: _Pod) -> None:
        if run.workdir is not None:
            shutil.rmtree(run.workdir, ignore_errors=True)
            run.workdir = None

    # ---- memory limits ---------------------------------------------------------------------------------

    def _watch_memory(self, run: _Pod, container: _Container) -> None:
        limit = ((container.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if not limit:
            return
        container.memory_limit = int(parse_quantity(str(limit)))
        self._memory_watch.append((run, container))
        if len(self._memory_watch) == 1:
            self._call_later(_MEMORY_POLL_S, self._poll_memory)

    def _poll_memory(self) -> None:
        """Kill (OOMKilled) every process tree whose resident memory is above its container's limit."""
        watched = []
        for run, container in self._memory_watch:
            process = container.process
            if process is None or container.memory_limit is None:
                continue
            if _tree_rss(process.pid) > container.memory_limit:
                container.oom_killed = True
                _signal_group(process, signal.SIGKILL)
            else:
                watched.append((run, container))
        self._memory_watch = watched
        if watched:
            self._call_later(_MEMORY_POLL_S, self._poll_memory)

    # ---- status ----------------------------------------------------------------------------------------

    def _publish(self, run: _Pod) -> None:
        """Write the pod's current status: one store write, one MODIFIED event (none if nothing changed)."""

        def write_status(pod: dict[str, Any]) -> None:
            if pod["metadata"]["uid"] != run.uid:
                raise _PodGone
            pod["status"] = self._status(run, pod.get("status") or {})

        try:
            self._store.update("pods", run.namespace, run.name, write_status)
        except _PodGone:
            pass
        except ApiError as error:
            if error.code != 404:  # 404: removed meanwhile; its DELETED event cleans up
                raise

    def _status(self, run: _Pod, old: Mapping[str, Any]) -> dict[str, Any]:
        phase = run.phase()
        status: dict[str, Any] = {"phase": phase}
        if run.eviction:
            status |= {"reason": "Evicted", "message": run.eviction}
        old_conditions = {c["type"]: c for c in old.get("conditions") or []}
        conditions = [c for c in old_conditions.values() if c["type"] not in _KUBELET_CONDITIONS]
        if run.eviction and "DisruptionTarget" not in old_conditions:
            conditions.insert(
                0, _condition(old_conditions, "DisruptionTarget", "True", "TerminationByKubelet")
            )
        for condition_type, value, reason, message in self._conditions(run, phase):
            conditions.append(_condition(old_conditions, condition_type, value, reason, message))
        if "PodScheduled" in old_conditions:
            conditions.append(old_conditions["PodScheduled"])
        status["conditions"] = conditions
        status |= {"hostIP": run.node.ip, "hostIPs": [{"ip": run.node.ip}]}
        if run.sandbox_ready:
            status |= {"podIP": run.pod_ip, "podIPs": [{"ip": run.pod_ip}]}
        status["startTime"] = run.start_time
        status["containerStatuses"] = [container.status() for container in run.containers]
        if "qosClass" in old:
            status["qosClass"] = old["qosClass"]
        return status

    @staticmethod
    def _conditions(run: _Pod, phase: str) -> Iterator[tuple[str, str, str | None, str | None]]:
        """(type, status, reason, message) of the kubelet's conditions, in the kubelet's order."""
        yield "PodReadyToStartContainers", str(run.sandbox_ready), None, None
        yield "Initialized", "True", "PodCompleted" if phase == "Succeeded" else None, None
        unready = [c.name for c in run.containers if not c.running]
        if phase in TERMINAL_PHASES:
            reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            ready: tuple[str, str | None, str | None] = ("False", reason, None)
        elif unready:
            ready = ("False", "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
        else:
            ready = ("True", None, None)
        yield ("Ready", *ready)
        yield ("ContainersReady", *ready)


_KUBELET_CONDITIONS = frozenset(
    {"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"}
)


def _condition(
    old: Mapping[str, Mapping[str, Any]],
    condition_type: str,
    value: str,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """A pod condition whose lastTransitionTime only moves when its status flips."""
    previous = old.get(condition_type)
    changed_at = previous["lastTransitionTime"] if previous and previous["status"] == value else now_rfc3339()
    condition: dict[str, Any] = {
        "type": condition_type,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": changed_at,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


# ---- container configuration ---------------------------------------------------------------------------


def _image_id(image: str) -> str:
    repository = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _expand(text: str, environment: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` is a ``$``, the rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return environment.get(match[1], match[0])

    return _VAR_REFERENCE.sub(replace, text)


def _start_error_message(executable: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        cause = "no such file or directory" if "/" in executable else "executable file not found in $PATH"
    elif isinstance(error, PermissionError):
        cause = "permission denied"
    else:
        cause = error.strerror or str(error)
    return f'failed to start container process: exec: "{executable}": {cause}'


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    read = getattr(stream, "read1", stream.read)
    while chunk := read(65536):
        yield chunk


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, signum)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * _PAGE_SIZE
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


class _Environment:
    """Builds one container's environment, resolving references through the store."""

    def __init__(self, store: ObjectStore, run: _Pod) -> None:
        self._store = store
        self._run = run

    def build(self, container: Mapping[str, Any]) -> dict[str, str]:
        environment = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.environ.get("HOME", "/"),
            "HOSTNAME": self._run.name,
        }
        for source in container.get("envFrom") or []:
            environment |= self._source(source)
        for variable in container.get("env") or []:
            value = self._value(variable, environment)
            if value is not None:
                environment[variable["name"]] = value
        return environment

    def _source(self, source: Mapping[str, Any]) -> dict[str, str]:
        prefix = source.get("prefix") or ""
        for resource, reference in (
            ("secrets", source.get("secretRef")),
            ("configmaps", source.get("configMapRef")),
        ):
            if reference:
                data = self._data(resource, reference["name"], optional=bool(reference.get("optional")))
                return {prefix + key: value for key, value in (data or {}).items()}
        return {}

    def _value(self, variable: Mapping[str, Any], environment: Mapping[str, str]) -> str | None:
        source = variable.get("valueFrom")
        if not source:
            return _expand(str(variable.get("value") or ""), environment)
        for resource, reference in (
            ("secrets", source.get("secretKeyRef")),
            ("configmaps", source.get("configMapKeyRef")),
        ):
            if reference:
                return self._key(resource, reference)
        if source.get("fieldRef"):
            return self._field(str(source["fieldRef"].get("fieldPath")), variable["name"])
        raise ContainerConfigError(
            f"env {variable['name']}: the simulator resolves valueFrom secretKeyRef, configMapKeyRef and "
            f"fieldRef only, not {', '.join(source)}"
        )

    def _data(self, resource: str, name: str, *, optional: bool) -> dict[str, str] | None:
        noun = "secret" if resource == "secrets" else "configmap"
        try:
            obj = self._store.get(resource, self._run.namespace, name)
        except ApiError as error:
            if error.code == 404 and optional:
                return None
            if error.code == 404:
                raise ContainerConfigError(f'{noun} "{name}" not found') from None
            raise
        if resource == "secrets":
            return {
                key: base64.b64decode(value).decode(errors="replace")
                for key, value in obj.get("data", {}).items()
            }
        return dict(obj.get("data") or {})

    def _key(self, resource: str, reference: Mapping[str, Any]) -> str | None:
        optional = bool(reference.get("optional"))
        data = self._data(resource, reference["name"], optional=optional)
        if data is None:
            return None
        if reference["key"] not in data:
            if optional:
                return None
            kind = "Secret" if resource == "secrets" else "ConfigMap"
            raise ContainerConfigError(
                f"couldn't find key {reference['key']} in {kind} {self._run.namespace}/{reference['name']}"
            )
        return data[reference["key"]]

    def _field(self, path: str, variable: str) -> str:
        run = self._run
        simple = {
            "metadata.name": run.name,
            "metadata.namespace": run.namespace,
            "metadata.uid": run.uid,
            "spec.nodeName": run.node.name,
            "spec.serviceAccountName": str(run.spec.get("serviceAccountName") or ""),
            "status.hostIP": run.node.ip,
            "status.podIP": run.pod_ip,
        }
        if path in simple:
            return simple[path]
        keyed = _FIELD_REF_KEY.match(path)
        if keyed and keyed[1] == "annotations":
            return str(run.annotations.get(keyed[2], ""))
        if keyed:
            pod = self._store.get("pods", run.namespace, run.name)
            return str((pod["metadata"].get("labels") or {}).get(keyed[2], ""))
        raise ContainerConfigError(
            f"env {variable}: fieldRef {path!r} is not supported by the simulator; "
            f"use one of {', '.join(simple)}"
        )
