"""The simulated kube-scheduler: simulated nodes with capacity, and pods bound to the node where they fit.

Why it exists: the bridge must cope with pods that wait. A real cluster leaves a pod ``Pending`` with
``PodScheduled=False reason=Unschedulable`` while its requests do not fit, and binds it later when a running
pod ends and frees capacity. Binding is also where the profile's create→bound delay and bind-rate cap apply.

Nodes are real ``Node`` objects in the store (so ``kubectl get nodes`` and ``list_node`` work). The
scheduler follows the store's events; every callback runs on the simulator's control loop, never in the
store's listener (which runs under the store lock).
A node fits a pod when its ``nodeSelector`` matches the node labels and the pod's cpu/memory requests and the
pod count stay within the node's allocatable; among fitting nodes the least-allocated one wins (spreading
pods as the default scheduler does). Requests count from binding until the pod is terminal or removed.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.sim.profiles import Profile
from bridge.sim.store import ApiError, ObjectStore, now_rfc3339
from bridge.sim.validation import parse_quantity

# The control loop's only entry point: run a callback after a delay (seconds), on the loop thread.
CallLater = Callable[[float, Callable[[], None]], None]

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
SELECTOR_MISMATCH = "node(s) didn't match Pod's node affinity/selector"


@dataclass(frozen=True)
class Resources:
    """An amount of the two schedulable resources: cpu in millicores, memory in bytes."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes)

    @classmethod
    def of(cls, quantities: Mapping[str, str]) -> Resources:
        cpu = quantities.get("cpu")
        memory = quantities.get("memory")
        return cls(
            cpu_millis=math.ceil(parse_quantity(cpu) * 1000) if cpu else 0,
            memory_bytes=math.ceil(parse_quantity(memory)) if memory else 0,
        )


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """What a pod asks for: the sum over its containers, or the largest init container if that is more.

    A container with limits but no requests requests its limits (the API server's defaulting).
    """

    def container_requests(container: Mapping[str, Any]) -> Resources:
        resources = container.get("resources") or {}
        return Resources.of({**(resources.get("limits") or {}), **(resources.get("requests") or {})})

    spec = pod.get("spec") or {}
    total = sum((container_requests(c) for c in spec.get("containers") or []), Resources())
    for init in spec.get("initContainers") or []:
        needed = container_requests(init)
        total = Resources(
            max(total.cpu_millis, needed.cpu_millis), max(total.memory_bytes, needed.memory_bytes)
        )
    return total


@dataclass(frozen=True)
class Node:
    """One simulated node: its name, address, allocatable capacity and labels."""

    name: str
    ip: str
    allocatable: Resources
    max_pods: int
    labels: Mapping[str, str]

    def as_object(self, cpu: str, memory: str) -> dict[str, Any]:
        """The Node object as the API serves it."""
        capacity = {"cpu": cpu, "memory": memory, "pods": str(self.max_pods)}
        now = now_rfc3339()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": dict(self.labels)},
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [
                    {"type": "InternalIP", "address": self.ip},
                    {"type": "Hostname", "address": self.name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": self.name,
                    "containerRuntimeVersion": "kbridge-sim://1",
                    "kernelVersion": "sim",
                    "kubeProxyVersion": "",
                    "kubeletVersion": "v1.34.0-sim",
                    "machineID": self.name,
                    "operatingSystem": "linux",
                    "osImage": "kbridge pod-API simulator",
                    "systemUUID": self.name,
                },
            },
        }


def make_nodes(count: int, *, cpu: str, memory: str, max_pods: int) -> list[Node]:
    """``count`` identical nodes ``sim-node-0``, ``sim-node-1``, ... (ValueError names a bad argument)."""
    if count < 1:
        raise ValueError(f"nodes must be at least 1, got {count}")
    if max_pods < 1:
        raise ValueError(f"node pods must be at least 1, got {max_pods}")
    for field, quantity in (("cpu", cpu), ("memory", memory)):
        try:
            parse_quantity(quantity)
        except ValueError:
            raise ValueError(
                f"node {field} {quantity!r} is not a resource quantity (examples: 500m, 8, 512Mi, 16Gi)"
            ) from None
    allocatable = Resources.of({"cpu": cpu, "memory": memory})
    return [
        Node(
            name=f"sim-node-{index}",
            ip=f"10.0.{index // 250}.{index % 250 + 2}",
            allocatable=allocatable,
            max_pods=max_pods,
            labels={
                "kubernetes.io/hostname": f"sim-node-{index}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        )
        for index in range(count)
    ]


class _Skip(Exception):
    """Raised inside a store mutation to abandon the write: the pod changed since we looked."""


@dataclass
class _Binding:
    node: str
    requests: Resources


class Scheduler:
    """Binds pending pods to nodes with room for them; keeps the unschedulable ones and retries them."""

    def __init__(
        self,
        store: ObjectStore,
        profile: Profile,
        call_later: CallLater,
        nodes: Sequence[Node],
        *,
        node_cpu: str,
        node_memory: str,
        rng: random.Random,
    ) -> None:
        self._store = store
        self._profile = profile
        self._call_later = call_later
        self._nodes = list(nodes)
        self._node_cpu = node_cpu
        self._node_memory = node_memory
        self._rng = rng
        self._bindings: dict[str, _Binding] = {}  # pod uid → where it runs and what it holds
        self._queued: set[str] = set()  # uids with a bind attempt pending on the loop
        self._unschedulable: dict[str, tuple[str, str]] = {}  # uid → (namespace, name), in arrival order
        self._next_bind_at = 0.0
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """Register the nodes in the store and start following pod events."""
        for node in self._nodes:
            self._store.create("nodes", None, node.as_object(self._node_cpu, self._node_memory))
        self._unsubscribe = self._store.subscribe(self._on_event)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event_type: str, obj: dict[str, Any]) -> None:
        if obj.get("kind") == "Pod":  # the store calls us under its lock: only hand over to the loop
            self._call_later(0.0, lambda: self._handle(event_type, obj))

    def _handle(self, event_type: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        node_name = pod.get("spec", {}).get("nodeName")
        if event_type == "DELETED" or pod.get("status", {}).get("phase") in TERMINAL_PHASES:
            self._queued.discard(uid)
            self._unschedulable.pop(uid, None)
            if self._bindings.pop(uid, None) is not None:
                self._retry_unschedulable()
        elif node_name:
            if uid not in self._bindings and any(n.name == node_name for n in self._nodes):
                self._bindings[uid] = _Binding(node_name, pod_requests(pod))  # bound by someone else
        elif (
            uid not in self._queued
            and uid not in self._unschedulable
            and not pod["metadata"].get("deletionTimestamp")
        ):
            self._queued.add(uid)
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            delay = self._profile.schedule.sample(self._rng)
            self._call_later(delay, lambda: self._attempt(uid, key))

    def _retry_unschedulable(self) -> None:
        waiting = list(self._unschedulable.items())
        self._unschedulable.clear()
        for uid, key in waiting:
            self._queued.add(uid)
            self._attempt(uid, key)

    def _attempt(self, uid: str, key: tuple[str, str]) -> None:
        if uid not in self._queued:  # deleted or finished meanwhile
            return
        rate = self._profile.schedule_rate_per_s
        now = time.monotonic()
        if rate is not None and now < self._next_bind_at:
            self._call_later(self._next_bind_at - now, lambda: self._attempt(uid, key))
            return
        self._queued.discard(uid)
        try:
            pod = self._store.get("pods", *key)
        except ApiError:
            return
        if (
            pod["metadata"]["uid"] != uid
            or pod["spec"].get("nodeName")
            or pod["metadata"].get("deletionTimestamp")
        ):
            return
        try:
            requests = pod_requests(pod)
        except ValueError as exc:
            self._mark_unschedulable(uid, key, f"invalid resource requests: {exc}")
            return
        node, reasons = self._choose(pod, requests)
        if node is None:
            self._mark_unschedulable(uid, key, self._fit_error(reasons))
            return
        if rate is not None:
            self._next_bind_at = max(now, self._next_bind_at) + 1.0 / rate
        self._bind(uid, key, node, requests)

    def _choose(self, pod: Mapping[str, Any], requests: Resources) -> tuple[Node | None, Counter[str]]:
        """The least-allocated node that fits, or None and how many nodes failed for each reason."""
        selector: Mapping[str, str] = pod["spec"].get("nodeSelector") or {}
        used: dict[str, Resources] = {}
        pods: Counter[str] = Counter()
        for binding in self._bindings.values():
            used[binding.node] = used.get(binding.node, Resources()) + binding.requests
            pods[binding.node] += 1
        reasons: Counter[str] = Counter()
        best: tuple[float, Node] | None = None
        for node in self._nodes:
            if any(node.labels.get(key) != value for key, value in selector.items()):
                reasons[SELECTOR_MISMATCH] += 1
                continue
            free = node.allocatable - used.get(node.name, Resources())
            misses = [
                label
                for label, short in (
                    ("Too many pods", pods[node.name] + 1 > node.max_pods),
                    ("Insufficient cpu", requests.cpu_millis > free.cpu_millis),
                    ("Insufficient memory", requests.memory_bytes > free.memory_bytes),
                )
                if short
            ]
            if misses:
                reasons.update(misses)
                continue
            load = 1 - free.cpu_millis / max(node.allocatable.cpu_millis, 1)
            if best is None or load < best[0]:
                best = (load, node)
        return (best[1] if best else None), reasons

    def _fit_error(self, reasons: Counter[str]) -> str:
        details = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return f"0/{len(self._nodes)} nodes are available: {details}."

    def _bind(self, uid: str, key: tuple[str, str], node: Node, requests: Resources) -> None:
        def bind(pod: dict[str, Any]) -> None:
            if pod["metadata"]["uid"] != uid or pod["spec"].get("nodeName"):
                raise _Skip
            pod["spec"]["nodeName"] = node.name
            _set_scheduled_condition(pod, "True")

        try:
            self._store.update("pods", *key, bind)
        except (_Skip, ApiError):
            return
        self._bindings[uid] = _Binding(node.name, requests)

    def _mark_unschedulable(self, uid: str, key: tuple[str, str], message: str) -> None:
        # Re-reporting the same message changes nothing, and the store turns a no-op write into no event.
        self._unschedulable[uid] = key

        def report(latest: dict[str, Any]) -> None:
            if latest["metadata"]["uid"] != uid or latest["spec"].get("nodeName"):
                raise _Skip
            _set_scheduled_condition(latest, "False", reason="Unschedulable", message=message)

        try:
            self._store.update("pods", *key, report)
        except (_Skip, ApiError):
            return


def _set_scheduled_condition(pod: dict[str, Any], status: str, **detail: str) -> None:
    conditions: list[dict[str, Any]] = pod.setdefault("status", {}).setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == "PodScheduled"), None)
    changed_at = old["lastTransitionTime"] if old and old.get("status") == status else now_rfc3339()
    new = {"type": "PodScheduled", "status": status, "lastProbeTime": None, "lastTransitionTime": changed_at}
    conditions[:] = [c for c in conditions if c["type"] != "PodScheduled"] + [{**new, **detail}]
