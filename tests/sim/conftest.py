"""Fixtures of the simulator tests: an API server without scheduler/kubelet, and the real client for it.

Every client is built from a kubeconfig file written by ``write_kubeconfig`` into its own
``Configuration``/``ApiClient``: the global default configuration of the ``kubernetes`` package is never
touched, so tests cannot leak settings into each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from bridge.sim.api import ApiServer
from bridge.sim.cluster import Simulator
from bridge.sim.faults import Faults
from bridge.sim.kubeconfig import write_kubeconfig
from bridge.sim.logs import LogStore
from bridge.sim.profiles import PROFILES
from bridge.sim.store import ObjectStore

# Short enough that a test which forgets timeout_seconds fails fast instead of hanging the suite.
TEST_WATCH_TIMEOUT_S = 10.0


def _pod_manifest(
    name: str | None = "p", *, labels: dict[str, str] | None = None, image: str = "busybox", **spec: Any
) -> dict[str, Any]:
    """A valid pod body: one container ``base``; ``spec`` keywords are added to (or replace) the spec."""
    metadata: dict[str, Any] = {"name": name} if name else {"generateName": "p-"}
    if labels is not None:
        metadata["labels"] = labels
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "base", "image": image}], "restartPolicy": "Never", **spec},
    }


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    """An API server on a free port (instant profile, no scheduler/kubelet: pods stay Pending, unbound)."""
    server = ApiServer(
        ObjectStore(),
        LogStore(),
        profile=PROFILES["instant"],
        faults=Faults(seed=1),
        default_watch_timeout_s=TEST_WATCH_TIMEOUT_S,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[[ApiServer], Any]]:
    """``connect(server)``: the official CoreV1Api for ``server``, configured only through a kubeconfig file.

    The result is typed Any: the client's models declare every field Optional, and tests read what the
    server sent.
    """
    api_clients: list[client.ApiClient] = []

    def core_v1_for(server: ApiServer) -> Any:
        path = tmp_path / f"kubeconfig-{server.url.rsplit(':', 1)[1]}"
        write_kubeconfig(path, server.url)
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path), client_configuration=configuration
        )
        api_clients.append(client.ApiClient(configuration))
        return client.CoreV1Api(api_clients[-1])

    yield core_v1_for
    for api_client in api_clients:
        api_client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def core_v1(api_server: ApiServer, connect: Callable[[ApiServer], Any]) -> Any:
    """The official CoreV1Api of ``api_server``."""
    return connect(api_server)


@pytest.fixture
def pod_manifest() -> Callable[..., dict[str, Any]]:
    """Builds pod bodies: ``pod_manifest("name", labels={...}, **spec)``."""
    return _pod_manifest


@pytest.fixture
def bind(api_server: ApiServer) -> Callable[[str], None]:
    """``bind(name)`` plays the scheduler for a pod in ``default``: sets ``spec.nodeName`` to node-1."""

    def bind_pod(name: str) -> None:
        api_server.store.update("pods", "default", name, lambda pod: pod["spec"].update(nodeName="node-1"))

    return bind_pod


@pytest.fixture
def new_watch() -> Callable[[], Any]:
    """``new_watch()`` is a fresh ``kubernetes.watch.Watch`` (an untyped class, hence Any)."""
    return watch.Watch


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Simulator]:
    """A whole simulated cluster (one node, instant profile) whose kubelet follows pod annotations."""
    with Simulator(kubelet="scripted", kubeconfig=tmp_path / "kubeconfig", seed=1) as simulator:
        yield simulator
    assert simulator.loop.errors == [], "the kubelet or scheduler failed inside the control loop"


@pytest.fixture
def process_cluster(tmp_path: Path) -> Iterator[Simulator]:
    """A whole simulated cluster (one node, instant profile) whose kubelet runs containers as processes."""
    with Simulator(kubelet="process", kubeconfig=tmp_path / "kubeconfig", seed=1) as simulator:
        yield simulator
    assert simulator.loop.errors == [], "the kubelet or scheduler failed inside the control loop"
