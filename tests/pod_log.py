"""Reading a pod's log as text, the same with every supported ``kubernetes`` client.

Clients before 37 hand ``read_namespaced_pod_log`` bodies through ``str(bytes)`` ("b'hi\\n'"); asking for the
raw response and decoding it ourselves gives the text the API server sent, whatever the client version.
"""

from __future__ import annotations

from typing import Any


def pod_log(api: Any, name: str, namespace: str, **kwargs: Any) -> str:
    """The log text of pod ``name`` (``kwargs`` as for ``read_namespaced_pod_log``)."""
    response = api.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
    return str(response.data.decode("utf-8"))
