"""The object store of the simulated cluster: what etcd plus kube-apiserver's registry are to a real one.

Why one store for every resource: Kubernetes has a single cluster-wide resourceVersion (the etcd revision),
so a pod write moves the resourceVersion a secret list reports, and a watch can resume from any RV it saw.
The store keeps that counter, a bounded history of changes (older RVs are "compacted" and answer 410), and
the graceful-deletion rules of pods. Stored objects are never mutated in place: every write stores a new
object together with its JSON, so readers and watch streams share bytes instead of copying dicts, and
callers only ever get their own copies.

It also does the garbage collector's work: when an object is finally removed, every object of its namespace
whose ``metadata.ownerReferences`` name it, and whose other owners are gone too, is deleted (an ordinary
DELETE, so a dependent pod terminates gracefully and every removal is a DELETED watch event). An index of
owner uid → dependents, kept by every write, makes that a lookup instead of a scan.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import queue
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.sim import validation
from bridge.sim.selectors import Matcher, SelectorError, compile_filter

Listener = Callable[[str, dict[str, Any]], None]

KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "namespaces": "Namespace",
    "nodes": "Node",
}
CLUSTER_SCOPED = frozenset({"namespaces", "nodes"})
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")

_FIRST_RESOURCE_VERSION = 1000  # "0" means "any" to the API, so real RVs start well above it
_GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
# 27^5 suffixes collide often by the birthday bound (~50% by 4,500 pods of one prefix); since 1.32 the
# server retries generation on a collision (KEP-4420 RetryGenerateName) this many times.
_GENERATE_NAME_ATTEMPTS = 8
_PAGED_SNAPSHOTS_KEPT = 32
_EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def load_object(data: str | bytes) -> dict[str, Any]:
    """A fresh dict from an object's JSON: the cheapest deep copy of JSON-shaped data."""
    obj: dict[str, Any] = json.loads(data)
    return obj


class ApiError(Exception):
    """Becomes a Kubernetes ``Status`` response: ApiError(code, reason, message, details=None)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The Status object, field for field as the API server writes it."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


def conflict(resource: str, name: str, cause: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": {cause}',
        {"name": name, "kind": resource},
    )


def stale_write(resource: str, name: str) -> ApiError:
    """409 for a write based on an old resourceVersion (optimistic concurrency)."""
    return conflict(
        resource,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )


def invalid(resource: str, name: str, errors: list[validation.FieldError]) -> ApiError:
    """422 with every field error, formatted as ``Pod "x" is invalid: field: body`` / ``[e1, e2]``."""
    kind = KINDS.get(resource, resource)
    texts = [error.text for error in errors]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        {"name": name, "kind": kind, "causes": [error.cause() for error in errors]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    """504 for a resourceVersion the server has not reached (the real one gives up after 3 s)."""
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def now_rfc3339(offset_s: float = 0.0) -> str:
    """UTC time with second precision, as ``metav1.Time`` serialises it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


@dataclass(frozen=True, slots=True)
class _Stored:
    """One committed object: the dict (never mutated after commit) and its JSON."""

    obj: dict[str, Any]
    json: bytes


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write, as kept in the history and fed to watches."""

    resource_version: int
    resource: str
    type: str
    namespace: str
    stored: _Stored
    previous: dict[str, Any] | None  # the object before a MODIFIED (to detect selector transitions)
    committed_at: float  # time.monotonic() of the commit, for the profile's watch lag


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch stream: type, the object's JSON, and when the change was committed."""

    type: str
    object_json: bytes
    committed_at: float


@dataclass(frozen=True, slots=True)
class ListPage:
    """A (page of a) list: object JSON in storage-key order, the list RV, and paging metadata."""

    items: list[bytes]
    resource_version: str
    continue_token: str | None
    remaining_item_count: int | None


class Watch:
    """The events of one watch request: ``initial`` (replayed or synthetic) first, then live ones."""

    def __init__(
        self, store: ObjectStore, resource: str, namespace: str | None, matcher: Matcher | None
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.initial: list[WatchEvent] = []
        self.synced_resource_version = "0"
        self.send_initial_events = False
        self.closed = False
        self._matcher = matcher
        self._store = store
        self._queue: queue.SimpleQueue[WatchEvent | None] = queue.SimpleQueue()

    def offer(self, change: Change) -> None:
        """Queue ``change`` if this watch sees it, turned into ADDED/DELETED when it crosses the selector."""
        if self.namespace is not None and change.namespace != self.namespace:
            return
        event_type, object_json = change.type, change.stored.json
        if self._matcher is not None:
            matches_now = self._matcher(change.stored.obj)
            if change.type == "MODIFIED":
                matched_before = change.previous is not None and self._matcher(change.previous)
                if not matches_now and not matched_before:
                    return
                if not matched_before:
                    event_type = "ADDED"
                elif not matches_now:
                    # Like the watch cache: the last state the watcher was allowed to see, at the new RV.
                    assert change.previous is not None
                    event_type, object_json = (
                        "DELETED",
                        _restamped_json(change.previous, change.resource_version),
                    )
            elif not matches_now:
                return
        self._queue.put(WatchEvent(event_type, object_json, change.committed_at))

    def next(self, timeout: float) -> WatchEvent | None:
        """The next live event, or None after ``timeout`` seconds or once the watch is closed."""
        if self.closed:
            return None
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def idle_resource_version(self) -> str | None:
        """The store's current RV if every event up to it has been taken from this watch (for a BOOKMARK)."""
        with self._store._lock:
            return self._store.resource_version if self._queue.empty() else None

    def drain_initial(self) -> list[WatchEvent]:
        events, self.initial = self.initial, []
        return events

    def close(self) -> None:
        """Stop the watch; a blocked ``next`` returns None at once."""
        if not self.closed:
            self.closed = True
            self._store._unregister(self)
            self._queue.put(None)


class ObjectStore:
    """All objects of all resources; one cluster-wide resourceVersion counter; bounded event history."""

    def __init__(self, history_size: int = 10_000) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], _Stored]] = {resource: {} for resource in KINDS}
        self._revision = _FIRST_RESOURCE_VERSION
        self._history: deque[Change] = deque(maxlen=history_size)
        self._oldest_watchable = _FIRST_RESOURCE_VERSION  # a watch from RV >= this is served from history
        self._listeners: list[Listener] = []
        self._watches: list[Watch] = []
        self._snapshots: OrderedDict[tuple[str, int], list[tuple[tuple[str, str], _Stored]]] = OrderedDict()
        self._live_uids: set[str] = set()
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}  # owner uid -> (resource, ns, name)
        for namespace in INITIAL_NAMESPACES:
            self.create("namespaces", None, {"metadata": {"name": namespace}})

    @property
    def resource_version(self) -> str:
        """The current cluster-wide resourceVersion."""
        return str(self._revision)

    # ---- writes -------------------------------------------------------------------------------------

    def create(
        self, resource: str, namespace: str | None, obj: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Admit (default + validate) and persist a new object; returns the stored object (a copy)."""
        new = load_object(_dumps(obj))
        metadata = new.get("metadata")
        if not isinstance(metadata, dict):
            metadata = new["metadata"] = {}
        namespace = self._check_namespace(resource, namespace, metadata)
        new["kind"], new["apiVersion"] = KINDS[resource], "v1"
        for system_field in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(system_field, None)
        prefix = str(metadata["generateName"])[:58] if metadata.get("generateName") else None
        if metadata.get("name"):
            prefix = None  # an explicit name wins over generateName
        elif prefix is not None:
            metadata["name"] = _generate_name(prefix)
        _apply_create_defaults(resource, new)
        errors = validation.validate_object(resource, new)
        if errors:
            raise invalid(resource, str(metadata.get("name") or metadata.get("generateName") or ""), errors)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        if resource == "pods":
            metadata["generation"] = 1
            new["status"] = {"phase": "Pending", "qosClass": validation.qos_class(new["spec"])}
        with self._lock:
            if namespace is not None and self._namespace_missing(namespace):
                raise not_found("namespaces", namespace)
            for attempt in itertools.count(1):
                key = (namespace or "", metadata["name"])
                if key not in self._objects[resource]:
                    break
                name = metadata["name"]
                if prefix is None:
                    raise ApiError(
                        409,
                        "AlreadyExists",
                        f'{resource} "{name}" already exists',
                        {"name": name, "kind": resource},
                    )
                if attempt == _GENERATE_NAME_ATTEMPTS:
                    raise ApiError(
                        409,
                        "AlreadyExists",
                        f'{resource} "{name}" already exists, the server was not able to generate a unique '
                        "name for the object",
                        {"name": name, "kind": resource, "retryAfterSeconds": 1},
                    )
                metadata["name"] = _generate_name(prefix)
            if dry_run:
                metadata["resourceVersion"] = self.resource_version
                return new
            return load_object(self._commit(resource, key, "ADDED", new).json)

    def update(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], None],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """ONE write: ``mutate`` a copy under the lock, bump the RV, emit one MODIFIED; return a copy.

        ``mutate`` may raise (e.g. ApiError) to abort without a write. Identity fields (name, namespace, uid,
        creationTimestamp) are kept from the stored object. A mutation that changes nothing is not a write:
        no new RV and no event, exactly like the real server.
        """
        with self._lock:
            key = (namespace or "", name)
            current = self._objects[resource].get(key)
            if current is None:
                raise not_found(resource, name)
            new = load_object(current.json)
            mutate(new)
            metadata = new.setdefault("metadata", {})
            for identity in ("name", "namespace", "uid", "creationTimestamp"):
                if identity in current.obj["metadata"]:
                    metadata[identity] = current.obj["metadata"][identity]
            new["kind"], new["apiVersion"] = KINDS[resource], "v1"
            metadata["resourceVersion"] = current.obj["metadata"]["resourceVersion"]
            if new == current.obj or dry_run:
                return new
            return load_object(self._commit(resource, key, "MODIFIED", new, previous=current.obj).json)

    def remove(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Final removal: emits DELETED (the last state stamped with a new RV), then deletes the objects it
        owned that have no other owner left; 404 if already gone."""
        with self._lock:
            key = (namespace or "", name)
            current = self._objects[resource].get(key)
            if current is None:
                raise not_found(resource, name)
            if resource == "namespaces":  # the namespace controller empties a namespace before it goes
                for contained in KINDS.keys() - CLUSTER_SCOPED:
                    for _, inner_name in [inner for inner in self._objects[contained] if inner[0] == name]:
                        if (name, inner_name) in self._objects[contained]:  # not collected meanwhile
                            self.remove(contained, name, inner_name)
            removed = load_object(self._commit(resource, key, "DELETED", load_object(current.json)).json)
            self._collect_dependents(removed["metadata"]["uid"], key[0])
            return removed

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """An API DELETE: preconditions, then graceful deletion for running pods, removal for the rest.

        Returns (object, removed). A bound, non-terminal pod with a grace period > 0 only gets
        ``deletionTimestamp``/``deletionGracePeriodSeconds`` (one MODIFIED) and is left to the kubelet; a
        later delete may only shorten the grace period. Other pods are marked (MODIFIED) and removed
        (DELETED) at once; other resources are simply removed.
        """
        with self._lock:
            key = (namespace or "", name)
            current = self._objects[resource].get(key)
            if current is None:
                raise not_found(resource, name)
            metadata = current.obj["metadata"]
            kind = KINDS[resource]
            if uid is not None and uid != metadata["uid"]:
                raise conflict(
                    kind,
                    name,
                    f"the UID in the precondition ({uid}) does not match the UID in record "
                    f"({metadata['uid']}). The object might have been deleted and then recreated",
                )
            if resource_version is not None and resource_version != metadata["resourceVersion"]:
                raise conflict(
                    kind,
                    name,
                    f"the ResourceVersion in the precondition ({resource_version}) does not match the "
                    f"ResourceVersion in record ({metadata['resourceVersion']}). "
                    "The object might have been modified",
                )
            grace = _grace_period(resource, current.obj, grace_period_seconds)
            already = metadata.get("deletionGracePeriodSeconds")
            if already is not None and grace >= already:
                return load_object(current.json), False  # a delete may only shorten the grace period
            if dry_run:
                return load_object(current.json), grace == 0

            def mark(obj: dict[str, Any]) -> None:
                obj["metadata"]["deletionTimestamp"] = now_rfc3339(grace)
                obj["metadata"]["deletionGracePeriodSeconds"] = grace
                if "generation" in obj["metadata"]:
                    obj["metadata"]["generation"] += 1

            if resource != "pods":
                return self.remove(resource, namespace, name), True
            marked = self.update(resource, namespace, name, mark)
            if grace > 0:
                return marked, False
            return self.remove(resource, namespace, name), True

    def compact(self) -> None:
        """Forget all history: watches and continue tokens from older RVs now answer 410 Expired."""
        with self._lock:
            self._history.clear()
            self._oldest_watchable = self._revision
            self._snapshots.clear()

    # ---- reads --------------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """A copy of one object; 404 NotFound if absent."""
        return load_object(self.get_json(resource, namespace, name))

    def get_json(self, resource: str, namespace: str | None, name: str) -> bytes:
        """One object's JSON (shared immutable bytes: the cheap read path of the API server)."""
        stored = self._objects[resource].get((namespace or "", name))
        if stored is None:
            raise not_found(resource, name)
        return stored.json

    def list(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Copies of the matching objects in storage-key order, and the list resourceVersion."""
        page = self.list_json(
            resource, namespace, label_selector=label_selector, field_selector=field_selector
        )
        return [load_object(item) for item in page.items], page.resource_version

    def list_json(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ListPage:
        """A page of matching objects' JSON; a ``continue_token`` page reads the first page's snapshot."""
        matcher = self._matcher(resource, label_selector, field_selector)
        with self._lock:
            if continue_token:
                revision, start = _decode_continue(continue_token)
                snapshot = self._snapshots.get((resource, revision))
                if snapshot is None or revision < self._oldest_watchable:
                    raise expired(_EXPIRED_CONTINUE)
            else:
                revision, start = self._revision, None
                snapshot = sorted(self._objects[resource].items(), key=lambda entry: entry[0])
        selected = [
            (key, stored)
            for key, stored in snapshot
            if (namespace is None or key[0] == namespace)
            and (start is None or key > start)
            and (matcher is None or matcher(stored.obj))
        ]
        if limit is None or limit <= 0 or len(selected) <= limit:
            return ListPage([stored.json for _, stored in selected], str(revision), None, None)
        with self._lock:
            self._snapshots[(resource, revision)] = snapshot
            self._snapshots.move_to_end((resource, revision))
            while len(self._snapshots) > _PAGED_SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        page = selected[:limit]
        remaining = None if matcher is not None else len(selected) - limit
        return ListPage(
            [stored.json for _, stored in page],
            str(revision),
            _encode_continue(revision, page[-1][0]),
            remaining,
        )

    def watch(
        self,
        resource: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        initial_state: bool | None = None,
    ) -> Watch:
        """Register a watch; ``initial`` holds the current state or the history after ``resource_version``.

        ``initial_state`` None follows the RV (unset/"0" → state); True forces synthetic ADDEDs for the state
        (sendInitialEvents). A history-based start from a compacted RV raises 410 Expired (the API server
        turns it into an ERROR event).
        """
        matcher = self._matcher(resource, label_selector, field_selector)
        since = parse_resource_version(resource_version) if resource_version not in (None, "", "0") else None
        watch = Watch(self, resource, namespace, matcher)
        with self._lock:
            watch.send_initial_events = bool(initial_state)
            if initial_state or (initial_state is None and since is None):
                for key, stored in sorted(self._objects[resource].items(), key=lambda entry: entry[0]):
                    if (namespace is None or key[0] == namespace) and (
                        matcher is None or matcher(stored.obj)
                    ):
                        watch.initial.append(WatchEvent("ADDED", stored.json, time.monotonic()))
            elif since is not None:
                if since < self._oldest_watchable:
                    raise expired(f"too old resource version: {since} ({self._oldest_watchable + 1})")
                if since > self._revision:
                    raise too_large_resource_version(since, self._revision)
                for change in self._history:
                    if change.resource_version > since and change.resource == resource:
                        watch.offer(change)
                while (event := watch.next(0)) is not None:
                    watch.initial.append(event)
            watch.synced_resource_version = self.resource_version
            self._watches.append(watch)
        return watch

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event_type, obj_copy)`` after every committed write; returns ``unsubscribe``.

        Listeners run under the store lock, in resourceVersion order, and must not block.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # ---- internals ----------------------------------------------------------------------------------

    def _commit(
        self,
        resource: str,
        key: tuple[str, str],
        event_type: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None = None,
    ) -> _Stored:
        """Persist one write (caller holds the lock): new RV, history, watches, listeners."""
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        stored = _Stored(obj, _dumps(obj).encode())
        before = self._objects[resource].get(key)
        self._track(resource, key, before.obj if before else None, None if event_type == "DELETED" else obj)
        if event_type == "DELETED":
            del self._objects[resource][key]
        else:
            self._objects[resource][key] = stored
        change = Change(self._revision, resource, event_type, key[0], stored, previous, time.monotonic())
        if len(self._history) == self._history.maxlen and self._history:
            self._oldest_watchable = self._history[0].resource_version
        self._history.append(change)
        for watch in self._watches:
            if watch.resource == resource:
                watch.offer(change)
        for listener in self._listeners:
            listener(event_type, load_object(stored.json))
        return stored

    def _collect_dependents(self, owner_uid: str, namespace: str) -> None:
        """Delete the objects of ``namespace`` that ``owner_uid`` owned, unless another owner still exists."""
        for resource, dependent_namespace, name in sorted(self._dependents.pop(owner_uid, ())):
            stored = self._objects[resource].get((dependent_namespace, name))
            if dependent_namespace != namespace or stored is None:
                continue
            owners = {owner.get("uid") for owner in _owner_references(stored.obj)}
            if self._live_uids.isdisjoint(owners - {owner_uid}):
                self.delete(resource, dependent_namespace or None, name)

    def _track(
        self, resource: str, key: tuple[str, str], old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        """Keep the live uids and the owner index in step with one write (``new`` None: a removal)."""
        dependent = (resource, *key)
        before = {owner.get("uid") for owner in _owner_references(old)}
        after = {owner.get("uid") for owner in _owner_references(new)}
        for uid in before - after:
            dependents = self._dependents.get(str(uid))
            if dependents is not None:
                dependents.discard(dependent)
                if not dependents:
                    del self._dependents[str(uid)]
        for uid in after - before:
            self._dependents.setdefault(str(uid), set()).add(dependent)
        if new is None:
            self._live_uids.discard((old or {}).get("metadata", {}).get("uid"))
        else:
            self._live_uids.add(new["metadata"]["uid"])

    def _unregister(self, watch: Watch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def _namespace_missing(self, namespace: str) -> bool:
        return ("", namespace) not in self._objects["namespaces"]

    def _check_namespace(self, resource: str, namespace: str | None, metadata: dict[str, Any]) -> str | None:
        if resource in CLUSTER_SCOPED:
            metadata.pop("namespace", None)
            return None
        if not namespace:
            raise bad_request(f"{resource} must be created in a namespace: the request has none")
        declared = metadata.get("namespace")
        if declared and declared != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        metadata["namespace"] = namespace
        return namespace

    @staticmethod
    def _matcher(resource: str, label_selector: str | None, field_selector: str | None) -> Matcher | None:
        try:
            return compile_filter(resource, label_selector, field_selector)
        except SelectorError as error:
            raise bad_request(str(error)) from None


def _owner_references(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    references = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return [reference for reference in references if isinstance(reference, dict)]


def _restamped_json(obj: dict[str, Any], resource_version: int) -> bytes:
    """The JSON of ``obj`` with another resourceVersion (``obj`` itself is left alone)."""
    metadata = {**obj["metadata"], "resourceVersion": str(resource_version)}
    return _dumps({**obj, "metadata": metadata}).encode()


def _generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_GENERATED_NAME_ALPHABET) for _ in range(5))


def _apply_create_defaults(resource: str, obj: dict[str, Any]) -> None:
    if resource == "pods":
        validation.default_pod(obj)
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) if string_data else obj.get("data")
        for key, value in string_data.items():
            assert data is not None
            data[key] = base64.b64encode(str(value).encode()).decode()
    elif resource == "namespaces":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj["status"] = {"phase": "Active"}


def _grace_period(resource: str, obj: dict[str, Any], requested: int | None) -> int:
    """The effective grace period: forced to 0 for unbound or finished pods and for other resources."""
    if resource != "pods":
        return 0
    if not obj["spec"].get("nodeName") or obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    if requested is None:
        requested = obj["spec"].get("terminationGracePeriodSeconds", 30)
    return 1 if requested < 0 else requested


def parse_resource_version(text: str | None) -> int:
    """A resourceVersion as a number; a non-numeric one is the 500 the real storage layer answers."""
    try:
        return int(str(text))
    except ValueError:
        raise ApiError(
            500,
            "InternalError",
            f'resourceVersion: Invalid value: "{text}": strconv.ParseUint: parsing "{text}": invalid syntax',
        ) from None


def _encode_continue(revision: int, last_key: tuple[str, str]) -> str:
    token = _dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": "/".join(last_key)})
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        namespace, _, name = decoded["start"].partition("/")
        return int(decoded["rv"]), (namespace, name)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise bad_request(f"invalid continue token: {error}") from None
