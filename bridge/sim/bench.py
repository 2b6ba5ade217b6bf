"""How fast the simulator is through the official client, and how long pods take to start under a profile.

Why: the bridge's own benchmarks run against the simulator, so its numbers are only meaningful if the
simulator itself is not the bottleneck and its ``realistic`` profile behaves like a healthy cluster. This
reports (it asserts nothing):

* per-verb latency (create, get, list, patch, log, delete) and creates/s from one client thread, with the
  ``instant`` profile and the scripted kubelet running every created pod to completion meanwhile;
* create→Running and create→Succeeded latency of a batch of pods observed through a watch, with the
  ``realistic`` profile and the scripted kubelet, next to the 5 s pod-startup SLO.

The simulator runs in its own process (``python -m bridge.sim``), as it does for the bridge's workers. In
one process the client, the API server and the control loop would share one GIL, so every server step
would queue behind the client's own model encoding/decoding and the kubelet's work on earlier pods, and
creates/s would measure the benchmark's process rather than the server. The first calls (connection set-up,
the client's lazy imports) are warm-up and are not counted.

Run it with ``make bench`` or ``python -m bridge.sim.bench [--calls N] [--pods N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bridge.sim.kubelet import ANNOTATION_LOG, ANNOTATION_RUN_SECONDS

NAMESPACE = "default"
POD_STARTUP_SLO_S = 5.0  # p99, creation to running observed via watch (sig-scalability SLO)
_LIFECYCLE_DEADLINE_S = 40  # the watch of the lifecycle batch gives up after this
_LIST_CALLS_MAX = 50  # a list returns every pod, so the client's decoding dominates: a few calls suffice
_WARM_UP_CALLS = 20
_PODS_PER_NODE = 110  # the simulator's (and the kubelet's) default max pods per node
_SERVER_START_S = 30.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _pod(name: str, run_seconds: float) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"app": "bench"},
            "annotations": {ANNOTATION_LOG: f"{name} says hello\n", ANNOTATION_RUN_SECONDS: str(run_seconds)},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "busybox", "command": ["true"]}],
        },
    }


def _timed(names: Sequence[str], call: Callable[[str], object]) -> list[float]:
    """Call ``call(name)`` for each name, in order; the seconds each call took."""
    durations = []
    for name in names:
        started = time.perf_counter()
        call(name)
        durations.append(time.perf_counter() - started)
    return durations


def _record_phases(core_v1: Any, since: str, names: set[str], seen: dict[str, dict[str, float]]) -> None:
    """Note when a watch from ``since`` first shows each pod in each phase of ``seen``, until all succeed."""
    from kubernetes import watch

    stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(
        core_v1.list_namespaced_pod, NAMESPACE, resource_version=since, timeout_seconds=_LIFECYCLE_DEADLINE_S
    ):
        pod = event["object"]
        if pod.status.phase in seen:
            seen[pod.status.phase].setdefault(pod.metadata.name, time.monotonic())
        if names <= seen["Succeeded"].keys():
            stream.stop()
            return


@contextlib.contextmanager
def served_simulator(*, profile: str, pods: int) -> Iterator[Any]:
    """The CoreV1Api of a ``python -m bridge.sim`` process (scripted kubelet) with room for ``pods`` pods."""
    from kubernetes import client, config

    nodes = pods // _PODS_PER_NODE + 1
    with tempfile.TemporaryDirectory(prefix="kbridge-bench-") as directory:
        kubeconfig = Path(directory) / "kubeconfig.yaml"
        command = [sys.executable, "-m", "bridge.sim", "--port", "0", "--kubeconfig", str(kubeconfig)]
        command += ["--kubelet", "scripted", "--profile", profile, "--nodes", str(nodes)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            ready = threading.Timer(_SERVER_START_S, server.kill)  # readline must not wait forever
            ready.start()
            banner = server.stdout.readline()
            ready.cancel()
            if "serving" not in banner:
                raise RuntimeError(f"the simulator did not start: {banner}{server.communicate()[1]}")
            configuration = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
            with client.ApiClient(configuration) as api_client:
                yield client.CoreV1Api(api_client)
        finally:
            server.terminate()
            server.communicate(timeout=10)


def _warm_up(core_v1: Any) -> None:
    """Open the connection and load the client's models before anything is timed."""
    for index in range(_WARM_UP_CALLS):
        core_v1.create_namespaced_pod(NAMESPACE, _pod(f"warm-up-{index}", 0))
        core_v1.read_namespaced_pod(f"warm-up-{index}", NAMESPACE)
        core_v1.list_namespaced_pod(NAMESPACE, limit=1)


def measure_verbs(calls: int) -> tuple[dict[str, list[float]], float]:
    """Latency samples per verb with the instant profile, and creates per second from one thread."""
    with served_simulator(profile="instant", pods=calls + _WARM_UP_CALLS) as core_v1:
        _warm_up(core_v1)
        names = [f"bench-{index}" for index in range(calls)]
        since = core_v1.list_namespaced_pod(NAMESPACE).metadata.resource_version
        samples = {
            "create": _timed(names, lambda name: core_v1.create_namespaced_pod(NAMESPACE, _pod(name, 0)))
        }
        creates_per_s = calls / sum(samples["create"])
        _record_phases(core_v1, since, set(names), {"Succeeded": {}})  # logs exist once the pods ran
        samples["get"] = _timed(names, lambda name: core_v1.read_namespaced_pod(name, NAMESPACE))
        samples["list"] = _timed(
            names[:_LIST_CALLS_MAX],
            lambda _: core_v1.list_namespaced_pod(NAMESPACE, label_selector="app=bench"),
        )
        label = {"metadata": {"labels": {"patched": "yes"}}}
        samples["patch"] = _timed(names, lambda name: core_v1.patch_namespaced_pod(name, NAMESPACE, label))
        samples["log"] = _timed(names, lambda name: core_v1.read_namespaced_pod_log(name, NAMESPACE))
        samples["delete"] = _timed(names, lambda name: core_v1.delete_namespaced_pod(name, NAMESPACE))
    return samples, creates_per_s


def measure_lifecycle(pods: int, run_seconds: float) -> dict[str, list[float]]:
    """create→Running and create→Succeeded seconds per pod, realistic profile, observed through a watch."""
    names = [f"life-{index}" for index in range(pods)]
    created: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {"Running": {}, "Succeeded": {}}
    with served_simulator(profile="realistic", pods=pods) as core_v1:
        since = core_v1.list_namespaced_pod(NAMESPACE).metadata.resource_version
        watcher = threading.Thread(
            target=_record_phases, args=(core_v1, since, set(names), seen), name="bench watch", daemon=True
        )
        watcher.start()
        for name in names:
            created[name] = time.monotonic()
            core_v1.create_namespaced_pod(NAMESPACE, _pod(name, run_seconds))
        watcher.join(_LIFECYCLE_DEADLINE_S + 5)
    return {
        f"create→{phase}": [at - created[name] for name, at in dict(times).items()]
        for phase, times in seen.items()
    }


def _row(label: str, values: Sequence[float], scale: float, *extra: str) -> str:
    if not values:
        return f"{label:<18} {0:>6}  (no samples)"
    stats = [percentile(values, q) * scale for q in (0.5, 0.9, 0.99)] + [max(values) * scale]
    return f"{label:<18} {len(values):>6}" + "".join(f"{v:>10.2f}" for v in stats) + "".join(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.sim.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per verb (instant profile)")
    parser.add_argument(
        "--pods", type=int, default=100, help="pods of the lifecycle batch (realistic profile)"
    )
    parser.add_argument("--run-seconds", type=float, default=1.0, help="how long each batch pod runs")
    options = parser.parse_args(argv)
    if options.calls < 1 or options.pods < 1 or options.run_seconds < 0:
        parser.error("--calls and --pods must be at least 1, --run-seconds at least 0")

    samples, creates_per_s = measure_verbs(options.calls)
    header = f"{'':<18} {'n':>6}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}"
    print("API calls through the official client, one thread, profile 'instant' (milliseconds)")
    print(header)
    for verb, values in samples.items():
        print(_row(verb, values, 1000.0))
    print(f"creates/s from one client thread: {creates_per_s:.0f}\n")

    lifecycle = measure_lifecycle(options.pods, options.run_seconds)
    print(
        f"Pod lifecycle observed through a watch, profile 'realistic', {options.pods} pods running "
        f"{options.run_seconds:g} s (seconds; pod-startup SLO: p99 <= {POD_STARTUP_SLO_S:g} s to Running)"
    )
    print(header)
    for label, values in lifecycle.items():
        print(_row(label, values, 1.0))
    missing = options.pods - len(lifecycle["create→Succeeded"])
    if missing:
        print(f"{missing} pod(s) did not succeed within {_LIFECYCLE_DEADLINE_S} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
