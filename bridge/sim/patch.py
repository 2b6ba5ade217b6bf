"""The three PATCH dialects of the Kubernetes API: JSON merge patch, strategic merge patch and JSON patch.

Why a module of its own: how a patch document turns the stored object into the wanted one is pure data
manipulation with its own RFCs (7386, 6902) and Kubernetes' strategic-merge rules; the HTTP server only
picks the dialect from the Content-Type and hands the result to the store's validation. Errors are
``ApiError``s the server returns as they are: 400 for a malformed patch, 422 for one that cannot apply.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.sim.store import ApiError, bad_request

# PATCH Content-Type → dialect. Server-side apply is approximated by a strategic merge (no field ownership).
MEDIA_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
# Lists that strategic-merge-patch merges element by element (by this key) instead of replacing.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "conditions": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}


def apply_patch(dialect: str, current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The object ``patch`` (of ``dialect``, a value of :data:`MEDIA_TYPES`) makes of ``current``.

    ``current`` is not modified.
    """
    if dialect == "json":
        if not isinstance(patch, list):
            raise bad_request("a JSON patch (application/json-patch+json) must be a list of operations")
        return _json_patch(current, patch)
    if not isinstance(patch, dict):
        raise bad_request(f"a {dialect} patch must be a JSON object")
    result = _merge(current, patch) if dialect == "merge" else _strategic_merge(current, patch)
    assert isinstance(result, dict)  # merging an object into an object gives an object
    return result


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _strategic_merge(target: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge patch: like a merge patch, but known lists merge element-wise by their merge key."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        result = dict(target) if isinstance(target, dict) else {}
        for field, value in patch.items():
            if field.startswith("$"):
                continue  # directives such as $setElementOrder only affect ordering
            if value is None:
                result.pop(field, None)
            else:
                result[field] = _strategic_merge(result.get(field), value, field)
        return result
    merge_key = _MERGE_KEYS.get(key or "")
    if isinstance(patch, list) and merge_key and isinstance(target, list):
        merged = list(target)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise bad_request(
                    f"strategic merge patch: every element of {key} needs its merge key {merge_key!r}"
                )
            index = next((i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del merged[index]
            elif index is None:
                merged.append({k: v for k, v in item.items() if not k.startswith("$")})
            else:
                merged[index] = _strategic_merge(merged[index], item)
        return merged
    return patch


def _json_patch(document: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test), applied to a deep copy."""
    result: Any = json.loads(json.dumps(document))
    for number, operation in enumerate(operations):
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"json patch operation {number} must be an object with 'op' and 'path'")
        op, path = operation["op"], operation["path"]
        try:
            if op == "test":
                if _pointer_get(result, _pointer_parts(path)) != operation.get("value"):
                    raise ApiError(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our "
                        f"request: json patch test operation {number} failed at {path}",
                    )
            elif op == "remove":
                _pointer_remove(result, _pointer_parts(path))
            elif op in ("add", "replace"):
                if op == "replace":
                    _pointer_get(result, _pointer_parts(path))  # replace needs an existing target
                result = _pointer_add(
                    result, _pointer_parts(path), operation.get("value"), replace=op == "replace"
                )
            elif op in ("move", "copy"):
                source = _pointer_parts(operation.get("from", ""))
                value = json.loads(json.dumps(_pointer_get(result, source)))
                if op == "move":
                    _pointer_remove(result, source)
                result = _pointer_add(result, _pointer_parts(path), value, replace=False)
            else:
                raise bad_request(f"json patch operation {number}: unknown op {op!r}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(
                422, "Invalid", f"json patch operation {number} ({op} {path}): the path does not exist"
            ) from None
    if not isinstance(result, dict):
        raise bad_request("a json patch must leave an object")
    return result


def _pointer_parts(path: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON pointer ("" is the whole document)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(path)
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _pointer_get(document: Any, parts: list[str]) -> Any:
    for part in parts:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def _pointer_add(document: Any, parts: list[str], value: Any, *, replace: bool) -> Any:
    if not parts:
        return value
    parent, last = _pointer_get(document, parts[:-1]), parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if replace:
            parent[index] = value
        elif 0 <= index <= len(parent):
            parent.insert(index, value)
        else:
            raise IndexError(index)
    else:
        parent[last] = value
    return document


def _pointer_remove(document: Any, parts: list[str]) -> None:
    parent, last = _pointer_get(document, parts[:-1]), parts[-1]
    del parent[int(last) if isinstance(parent, list) else last]
