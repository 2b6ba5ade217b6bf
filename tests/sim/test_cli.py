"""``kbridge sim`` as a user runs it: a separate process, reached only through the kubeconfig it writes."""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.pod_log import pod_log

KBRIDGE = str(Path(sys.executable).parent / "kbridge")
START_TIMEOUT_S = 20.0


def read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The next stdout line of ``process``, waiting at most ``timeout_s`` for it."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise AssertionError(f"no output from {process.args!r} within {timeout_s} s")
    return process.stdout.readline()


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``kbridge sim --port 0`` with the process kubelet, started as a subprocess; killed if a test fails."""
    kubeconfig = tmp_path / "k.yaml"
    process = subprocess.Popen(
        [KBRIDGE, "sim", "--port", "0", "--kubeconfig", str(kubeconfig), "--kubelet", "process"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, kubeconfig
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def core_v1_from(kubeconfig: Path) -> Any:
    """The official client, loaded from the kubeconfig file into its own Configuration (used untyped)."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return client.CoreV1Api(client.ApiClient(configuration))


def watch_until_phase(core_v1: Any, name: str, since: str, phases: set[str]) -> Any:
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(  # type: ignore[no-untyped-call]
        core_v1.list_namespaced_pod,
        "default",
        field_selector=f"metadata.name={name}",
        resource_version=since,
        timeout_seconds=15,
    ):
        if event["object"].status.phase in phases:
            stream.stop()  # type: ignore[no-untyped-call]
            return event["object"]
    raise AssertionError(f"pod {name} never reached {phases}")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_kbridge_sim_serves_a_pod_end_to_end_and_exits_cleanly(
    simulator_process: tuple[subprocess.Popen[str], Path],
) -> None:
    process, kubeconfig = simulator_process
    banner = read_line(process, START_TIMEOUT_S)
    assert banner.startswith("kbridge sim: serving http://127.0.0.1:")
    assert f"(kubeconfig: {kubeconfig})" in banner
    core_v1 = core_v1_from(kubeconfig)

    since = core_v1.list_namespaced_pod("default").metadata.resource_version
    hello = {
        "metadata": {"name": "hello"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "base", "image": "python:3.11", "command": [sys.executable, "-c", "print('hi')"]}
            ],
        },
    }
    core_v1.create_namespaced_pod("default", hello)
    assert watch_until_phase(core_v1, "hello", since, {"Succeeded", "Failed"}).status.phase == "Succeeded"
    assert pod_log(core_v1, "hello", "default") == "hi\n"
    core_v1.delete_namespaced_pod("hello", "default")

    since = core_v1.list_namespaced_pod("default").metadata.resource_version
    sleeper = {
        "metadata": {"name": "sleeper"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "base",
                    "image": "python:3.11",
                    "command": [
                        sys.executable,
                        "-c",
                        "import os, time; print(os.getpid(), flush=True); time.sleep(600)",
                    ],
                }
            ],
        },
    }
    core_v1.create_namespaced_pod("default", sleeper)
    watch_until_phase(core_v1, "sleeper", since, {"Running"})
    log = core_v1.read_namespaced_pod_log("sleeper", "default", follow=True, _preload_content=False)
    pid = int(log.readline())
    log.release_conn()
    assert pid_alive(pid)
    core_v1.api_client.close()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert not pid_alive(pid), "the simulator left its pod's process running"


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--port", "http"], "--port: 'http' is not a TCP port"),
        (["--kubelet", "docker"], "--kubelet: invalid choice: 'docker'"),
        (["--node-cpu", "lots"], "--node-cpu: 'lots' is not a resource quantity"),
        (["--unpullable-image", "("], "--unpullable-image: '(' is not a regular expression"),
        ([], "the following arguments are required: --kubeconfig"),
    ],
)
def test_bad_arguments_are_explained_without_a_traceback(
    tmp_path: Path, arguments: list[str], complaint: str
) -> None:
    kubeconfig = [] if not arguments else ["--kubeconfig", str(tmp_path / "k.yaml")]
    result = subprocess.run(
        [KBRIDGE, "sim", *kubeconfig, *arguments], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_explained_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [KBRIDGE, "sim", "--port", str(port), "--kubeconfig", str(tmp_path / "k.yaml")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert result.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "choose another --port" in result.stderr
    assert "Traceback" not in result.stderr
