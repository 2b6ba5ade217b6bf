"""``kbridge sim``: serve a simulated cluster until interrupted, for the demo, manual runs and kubectl.

Why a command: the bridge's workers run as separate processes and find the cluster through a kubeconfig,
exactly as in production. This command writes that kubeconfig, prints one line with the URL (flushed, so a
parent process can wait for it), serves until SIGINT/SIGTERM and, on the way out, kills every process its
kubelet started.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import re
import signal
import sys
import threading
from types import FrameType

from bridge.errors import UserInputError
from bridge.sim.kubelet import DEFAULT_UNPULLABLE_IMAGE, KUBELET_MODES
from bridge.sim.profiles import PROFILES
from bridge.sim.validation import parse_quantity

GC_FREEZE_INTERVAL_S = 1.0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; use 0 (any free port) to 65535")
    return port


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _quantity(text: str) -> str:
    try:
        parse_quantity(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a resource quantity; examples: 8, 500m (cpu), 16Gi, 512Mi (memory)"
        ) from None
    return text


def _pattern(text: str) -> str:
    try:
        re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {error}") from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbridge sim", description=main.__doc__)
    parser.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig of the simulator")
    parser.add_argument(
        "--kubelet",
        choices=KUBELET_MODES,
        default="process",
        help="process: run each container's command locally; scripted: outcomes from pod annotations",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="instant", help="latency profile")
    parser.add_argument("--nodes", type=_positive, default=1, help="number of nodes (default 1)")
    parser.add_argument(
        "--node-cpu", type=_quantity, default="8", help="allocatable cpu per node (default 8)"
    )
    parser.add_argument(
        "--node-memory", type=_quantity, default="16Gi", help="memory per node (default 16Gi)"
    )
    parser.add_argument(
        "--unpullable-image",
        type=_pattern,
        default=DEFAULT_UNPULLABLE_IMAGE,
        metavar="REGEX",
        help="images matching this fail with ErrImagePull (default %(default)r)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Serve a simulated Kubernetes pod API (with scheduler and kubelet) until SIGINT or SIGTERM."""
    options = _parser().parse_args(argv)
    from bridge.sim.cluster import Simulator  # after parsing: `--help` and bad arguments stay instant

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    with contextlib.ExitStack() as running:
        try:
            simulator = running.enter_context(
                Simulator(
                    kubelet=options.kubelet,
                    profile=options.profile,
                    nodes=options.nodes,
                    node_cpu=options.node_cpu,
                    node_memory=options.node_memory,
                    port=options.port,
                    kubeconfig=options.kubeconfig,
                    unpullable_image_pattern=options.unpullable_image,
                )
            )
        except OSError as error:
            raise UserInputError(
                f"cannot serve on 127.0.0.1:{options.port} or write {options.kubeconfig}: "
                f"{error.strerror or error}; choose another --port (0 picks a free one) or --kubeconfig path"
            ) from None
        print(f"kbridge sim: serving {simulator.url} (kubeconfig: {simulator.kubeconfig_path})", flush=True)
        while not stop.wait(GC_FREEZE_INTERVAL_S):
            # An apiserver's Go GC runs concurrently; CPython's full collections stop the world for as
            # long as it takes to scan every stored object (~100 ms after a few thousand pods), which
            # would show up as API latency no real cluster has. Freezing what survived so far keeps each
            # collection to the objects made since; stored pods hold no cycles, so refcounting frees them.
            gc.freeze()
    print("kbridge sim: stopped", file=sys.stderr, flush=True)
    return 0
