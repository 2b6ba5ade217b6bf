"""The ObjectStore contract the scheduler and kubelet build on: listeners, copies, writes, history bounds."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sim.store import ApiError, ObjectStore
from bridge.sim.validation import parse_quantity


def _pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "base", "image": "busybox"}]}}


def test_listeners_see_every_write_in_order_as_private_copies() -> None:
    store = ObjectStore()
    seen: list[tuple[str, str, int]] = []

    def listener(event_type: str, obj: dict[str, Any]) -> None:
        seen.append((event_type, obj["kind"], int(obj["metadata"]["resourceVersion"])))
        obj["metadata"]["labels"] = {"tampered": "yes"}  # must not reach the store

    unsubscribe = store.subscribe(listener)
    store.create("pods", "default", _pod("p"))
    store.update("pods", "default", "p", lambda pod: pod["status"].update(phase="Running"))
    store.create("secrets", "default", {"metadata": {"name": "s"}})
    store.remove("pods", "default", "p")
    unsubscribe()
    store.create("pods", "default", _pod("after"))
    assert [(kind, resource) for kind, resource, _ in seen] == [
        ("ADDED", "Pod"),
        ("MODIFIED", "Pod"),
        ("ADDED", "Secret"),
        ("DELETED", "Pod"),
    ]
    versions = [version for _, _, version in seen]
    assert versions == sorted(versions)
    assert "labels" not in store.get("secrets", "default", "s")["metadata"]


def test_update_is_one_write_and_a_no_op_is_none() -> None:
    store = ObjectStore()
    created = store.create("pods", "default", _pod("p"))
    updated = store.update("pods", "default", "p", lambda pod: pod["spec"].update(nodeName="node-1"))
    assert int(updated["metadata"]["resourceVersion"]) == int(created["metadata"]["resourceVersion"]) + 1
    unchanged = store.update("pods", "default", "p", lambda pod: pod["spec"].update(nodeName="node-1"))
    assert unchanged["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    renamed = store.update("pods", "default", "p", lambda pod: pod["metadata"].update(name="other", uid="x"))
    assert (renamed["metadata"]["name"], renamed["metadata"]["uid"]) == ("p", created["metadata"]["uid"])


def test_a_failing_mutation_writes_nothing() -> None:
    store = ObjectStore()
    store.create("pods", "default", _pod("p"))
    before = store.resource_version

    def refuse(pod: dict[str, Any]) -> None:
        pod["spec"]["nodeName"] = "half-done"
        raise ApiError(409, "Conflict", "no")

    with pytest.raises(ApiError):
        store.update("pods", "default", "p", refuse)
    assert store.resource_version == before
    assert "nodeName" not in store.get("pods", "default", "p")["spec"]


def test_missing_objects_are_404() -> None:
    store = ObjectStore()
    with pytest.raises(ApiError) as read:
        store.get("pods", "default", "nope")
    with pytest.raises(ApiError) as written:
        store.update("pods", "default", "nope", lambda pod: None)
    with pytest.raises(ApiError) as removed:
        store.remove("pods", "default", "nope")
    for caught in (read, written, removed):
        assert (caught.value.code, caught.value.message) == (404, 'pods "nope" not found')


def test_the_bounded_history_expires_old_watch_starts() -> None:
    store = ObjectStore(history_size=3)
    first = store.create("pods", "default", _pod("a"))["metadata"]["resourceVersion"]
    for name in ("b", "c", "d"):
        store.create("pods", "default", _pod(name))
    # The last three changes (b, c, d) are kept: a watch from a's RV is whole, one from before it is not.
    kept = store.watch("pods", "default", resource_version=first)
    assert [event.type for event in kept.drain_initial()] == ["ADDED"] * 3
    kept.close()
    with pytest.raises(ApiError) as caught:
        store.watch("pods", "default", resource_version=str(int(first) - 1))
    assert (caught.value.code, caught.value.reason) == (410, "Expired")


@settings(max_examples=100, deadline=None)
@given(number=st.integers(min_value=0, max_value=10**6))
def test_quantities_scale_by_their_suffix(number: int) -> None:
    assert parse_quantity(f"{number}Ki") == number * 1024
    assert parse_quantity(f"{number}m") == Decimal(number) / 1000
    assert parse_quantity(f"{number}G") == number * 10**9
    assert parse_quantity(f"{number}e3") == number * 1000
    with pytest.raises(ValueError, match="Kb"):
        parse_quantity(f"{number}Kb")
