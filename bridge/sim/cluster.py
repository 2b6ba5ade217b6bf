"""A whole simulated cluster in one object: store, API server, scheduler and kubelet, wired and started.

Why: tests, the demo and the benchmarks all need "a cluster at a URL with a kubeconfig", and all need it
gone afterwards with no process left behind. :class:`Simulator` is that, as a context manager::

    with Simulator(kubelet="process") as sim:
        core_v1 = sim.core_v1()   # the official client, configured from sim.kubeconfig_path
        ...

The scheduler and the kubelet never act inside the store's listener (which runs under the store lock).
They hand each event to one :class:`ControlLoop` thread, which also runs their timers from a heap: one thread
owns all cluster-side state, so none of it needs locks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from bridge.sim.api import ApiServer
from bridge.sim.faults import Faults
from bridge.sim.kubeconfig import write_kubeconfig
from bridge.sim.kubelet import DEFAULT_UNPULLABLE_IMAGE, Kubelet
from bridge.sim.logs import LogStore
from bridge.sim.profiles import PROFILES
from bridge.sim.scheduler import Scheduler, make_nodes
from bridge.sim.store import ObjectStore

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api

log = logging.getLogger(__name__)


class ControlLoop:
    """One thread running callbacks at their due time, in order; a failing callback is logged and skipped.

    Skipping keeps a long-running simulator alive, but would hide a kubelet or scheduler bug behind a
    timeout: every failure is also kept in :attr:`errors`, which test fixtures check at teardown.
    """

    def __init__(self, name: str = "sim-control-loop") -> None:
        self.errors: list[Exception] = []
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties run in submission order
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Run nothing more (pending callbacks are dropped) and wait for the current callback to finish."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread after ``delay_s`` seconds; never blocks."""
        with self._changed:
            if self._stopped:
                return
            heapq.heappush(self._due, (time.monotonic() + max(delay_s, 0.0), next(self._order), callback))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and (not self._due or self._due[0][0] > time.monotonic()):
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception as error:  # one bad pod must not stop the cluster
                log.exception("simulator control loop: callback failed")
                self.errors.append(error)


class Simulator:
    """A simulated Kubernetes cluster serving the pod API on 127.0.0.1 (a context manager)."""

    def __init__(
        self,
        *,
        kubelet: Literal["process", "scripted"] = "scripted",
        profile: str = "instant",
        nodes: int = 1,
        node_cpu: str = "8",
        node_memory: str = "16Gi",
        node_pods: int = 110,
        port: int = 0,
        kubeconfig: str | os.PathLike[str] | None = None,
        unpullable_image_pattern: str = DEFAULT_UNPULLABLE_IMAGE,
        seed: int | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r} is not known; use one of {', '.join(PROFILES)}")
        try:
            unpullable = re.compile(unpullable_image_pattern)
        except re.error as error:
            raise ValueError(
                f"unpullable image pattern {unpullable_image_pattern!r} is not a regular expression: {error}"
            ) from None
        rng = random.Random(seed)  # noqa: S311 - simulated delays, not security
        node_list = make_nodes(nodes, cpu=node_cpu, memory=node_memory, max_pods=node_pods)
        self.profile = PROFILES[profile]
        self.store = ObjectStore()
        self.logs = LogStore()
        self.faults = Faults(seed)
        self.loop = ControlLoop()
        self.scheduler = Scheduler(
            self.store,
            self.profile,
            self.loop.call_later,
            node_list,
            node_cpu=node_cpu,
            node_memory=node_memory,
            rng=rng,
        )
        self.kubelet = Kubelet(
            self.store,
            self.logs,
            self.profile,
            self.loop.call_later,
            node_list,
            mode=kubelet,
            unpullable_image=unpullable,
            rng=rng,
        )
        self.server = ApiServer(
            self.store, self.logs, profile=self.profile, faults=self.faults, port=port, seed=seed
        )
        self._kubeconfig = kubeconfig
        self._own_dir: Path | None = None  # a temporary directory for the kubeconfig when none was given
        self.kubeconfig_path = Path()
        self.url = ""
        self._clients: list[ApiClient] = []

    def __enter__(self) -> Simulator:
        if self._kubeconfig is not None:
            self.kubeconfig_path = Path(self._kubeconfig)
        else:
            self._own_dir = Path(tempfile.mkdtemp(prefix="kbridge-sim-"))
            self.kubeconfig_path = self._own_dir / "kubeconfig.yaml"
        self.loop.start()
        self.scheduler.start()
        self.kubelet.start()
        try:
            self.server.start()
            self.url = self.server.url
            write_kubeconfig(self.kubeconfig_path, self.url)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, stop the control plane, kill every process the kubelet started, remove temp files."""
        for client in self._clients:
            client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
        self.server.stop()
        self.scheduler.stop()
        self.loop.stop()  # no callback runs after this, so the kubelet can start no new process
        self.kubelet.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def core_v1(self) -> CoreV1Api:
        """A ``CoreV1Api`` of the official client, configured from this simulator's kubeconfig only."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig_path), client_configuration=configuration
        )
        api_client = client.ApiClient(configuration)
        self._clients.append(api_client)
        return client.CoreV1Api(api_client)
