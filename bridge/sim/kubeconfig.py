"""A kubeconfig pointing at the simulator, so every client is configured exactly as for a real cluster.

Why a file and not an in-memory Configuration: the bridge, the demo and kubectl all load kubeconfig files;
going through one proves the simulator is reachable the way production code reaches a cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

_NAME = "kbridge-sim"


def write_kubeconfig(path: str | os.PathLike[str], server_url: str, *, namespace: str = "default") -> None:
    """Write a minimal kubeconfig (cluster, user, context, current-context) for the client and kubectl."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": _NAME, "cluster": {"server": server_url}}],
        # An empty user: the simulator needs no credentials, but kubectl wants the entry to exist.
        "users": [{"name": _NAME, "user": {}}],
        "contexts": [{"name": _NAME, "context": {"cluster": _NAME, "user": _NAME, "namespace": namespace}}],
        "current-context": _NAME,
        "preferences": {},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
