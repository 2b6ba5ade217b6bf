"""The HTTP face of the simulator: the subset of the Kubernetes core/v1 REST API the official client uses.

Why hand-written on ``http.server``: the point is that the unmodified ``kubernetes`` client cannot tell this
server from a cluster, so every byte that client depends on is under our control here — status codes and
Status bodies, ``Content-Type`` rules, chunked watch streams that end on ``timeoutSeconds``, ``Retry-After``,
trailing-slash discovery paths. Pure stdlib keeps it dependency-free and fast enough (TCP_NODELAY, one
``send`` per response, JSON bytes shared from the store) for benchmarks of the bridge.

Test hooks live under ``/_sim/``: ``GET|POST|DELETE /_sim/faults`` and ``POST /_sim/compact``.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from bridge.sim import validation
from bridge.sim.faults import Fault, FaultError, Faults
from bridge.sim.logs import LogStore
from bridge.sim.patch import MEDIA_TYPES, apply_patch
from bridge.sim.profiles import Latency, Profile
from bridge.sim.store import (
    CLUSTER_SCOPED,
    KINDS,
    ApiError,
    ObjectStore,
    Watch,
    WatchEvent,
    bad_request,
    expired,
    invalid,
    not_found,
    parse_resource_version,
    stale_write,
    too_large_resource_version,
)

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_NAMESPACED = frozenset(KINDS) - CLUSTER_SCOPED
_NAMESPACED_PATH = r"^/api/v1/namespaces/(?P<namespace>[^/]+)/(?P<resource>pods|secrets|configmaps)"
_ROUTES = (
    re.compile(_NAMESPACED_PATH + r"(?:/(?P<name>[^/]+)(?:/(?P<sub>status|log|eviction))?)?/?$"),
    re.compile(
        r"^/api/v1/(?P<resource>pods|secrets|configmaps|namespaces|nodes)(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?/?$"
    ),
)
_TOO_MANY_REQUESTS = b"Too many requests, please try again later.\n"
_PLAIN_TEXT = "text/plain; charset=utf-8"
_HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
# The Status reasons kube-apiserver uses for these codes (metav1.StatusReason).
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    410: "Expired",
    413: "RequestEntityTooLarge",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_MAX_WATCH_TIMEOUT_S = 3600.0
_MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's default request body limit
_READ_PIECE_BYTES = 65_536  # the largest single read: a chunk-size line, a trailer, a piece of a body
_MAX_DISCARDED_BYTES = 64 * 1024 * 1024  # an oversized body up to this is read and dropped, beyond it cut
_FAULT_EXAMPLE = '{"verb": "create", "status": 503}'
# The JSON type of DeleteOptions fields: (field, Python type, what a valid value looks like).
_DELETE_OPTION_TYPES = (
    ("gracePeriodSeconds", int, "an integer number of seconds, such as 30"),
    ("propagationPolicy", str, 'one of "Foreground", "Background", "Orphan"'),
    ("orphanDependents", bool, "true or false"),
    ("preconditions", dict, 'an object such as {"uid": "..."}'),
    ("dryRun", list, 'a list such as ["All"]'),
)
_DRAIN_S = 2.0  # how long stop() lets requests in flight finish before it cuts their connections
_SHUTDOWN_POLL_S = 0.02  # how often serve_forever checks for stop(): the teardown cost of every test
_VERSION_INFO = {
    "major": "1",
    "minor": "34",
    "emulationMajor": "1",
    "emulationMinor": "34",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0-kbridge-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_API_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": _ALL_VERBS,
            "shortNames": ["po"],
            "categories": ["all"],
        },
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
        {
            "name": "pods/status",
            "singularName": "",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "pods/eviction",
            "singularName": "",
            "namespaced": True,
            "group": "policy",
            "version": "v1",
            "kind": "Eviction",
            "verbs": ["create"],
        },
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": _ALL_VERBS,
        },
        {
            "name": "configmaps",
            "singularName": "configmap",
            "namespaced": True,
            "kind": "ConfigMap",
            "verbs": _ALL_VERBS,
            "shortNames": ["cm"],
        },
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": ["ns"],
        },
        {
            "name": "nodes",
            "singularName": "node",
            "namespaced": False,
            "kind": "Node",
            "verbs": ["get", "list", "watch"],
            "shortNames": ["no"],
        },
    ],
}


class _Target(NamedTuple):
    """What a REST path names: ``/api/v1/namespaces/{namespace}/{resource}/{name}/{subresource}``."""

    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None


class _Request:
    """What one HTTP request asks for, parsed once."""

    def __init__(self, handler: _Handler, body: bytes) -> None:
        url = urlsplit(handler.path)
        self.method = handler.command
        self.path = url.path
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        self.body = body
        self.handler = handler

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("true", "1")

    def integer(self, name: str) -> int | None:
        text = self.query.get(name)
        if text is None or text == "":
            return None
        try:
            return int(text)
        except ValueError:
            raise bad_request(f"{name}: Invalid value: {text!r}: must be an integer") from None

    def json_body(self) -> Any:
        """The body as JSON (YAML for server-side apply); no Content-Type means JSON, like kube-apiserver."""
        if not self.body.strip():
            return None
        if self.content_type == "application/apply-patch+yaml":
            try:
                return yaml.safe_load(self.body)
            except yaml.YAMLError as error:
                raise bad_request(f"the apply patch is not valid YAML: {error}") from None
        if self.content_type not in ("", "application/json") and not self.content_type.endswith("+json"):
            raise _unsupported_media_type(self.content_type, accepted="application/json")
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise bad_request(f"the request body is not valid JSON: {error}") from None

    def json_object(self) -> dict[str, Any]:
        document = self.json_body()
        if not isinstance(document, dict):
            raise bad_request("the request body must be a JSON object (a Kubernetes object)")
        return document

    def dry_run(self, options: dict[str, Any] | None = None) -> bool:
        values = [self.query["dryRun"]] if "dryRun" in self.query else []
        values += (options or {}).get("dryRun") or []
        for value in values:
            if value != "All":
                raise ApiError(
                    422, "Invalid", f'dryRun: Unsupported value: "{value}": supported values: "All"'
                )
        return bool(values)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: ApiServer) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # Without this, Nagle + delayed ACK add ~40 ms to every response on Linux loopback.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or a connection cut by stop()) is normal, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    # Whether the current request's response has begun: after that, an error can no longer be a Status.
    response_started = False

    def _dispatch(self) -> None:
        self.response_started = False  # one handler serves every request of a keep-alive connection
        self.server.app.handle(self)

    def send_bytes(self, data: bytes) -> None:
        """Write (part of) the response."""
        self.response_started = True
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a request log would cost more than the request."""


class ApiServer:
    """The simulated kube-apiserver: REST over a :class:`ObjectStore` and a :class:`LogStore`."""

    def __init__(
        self,
        store: ObjectStore,
        logs: LogStore,
        *,
        profile: Profile,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        default_watch_timeout_s: float = 1800.0,
        bookmark_interval_s: float = 60.0,
        max_inflight: int | None = None,
        seed: int | None = None,
    ) -> None:
        """``max_inflight`` caps concurrent non-watch requests like kube-apiserver's max-requests-inflight:
        one more is answered 429 ``Retry-After: 1`` (None: no cap). Watches and logs never count against it.
        """
        self.store = store
        self.logs = logs
        self.profile = profile
        self.faults = faults if faults is not None else Faults()
        self.default_watch_timeout_s = default_watch_timeout_s
        self.bookmark_interval_s = bookmark_interval_s
        self._address = (host, port)
        self._seats = threading.BoundedSemaphore(max_inflight) if max_inflight is not None else None
        self._rng = random.Random(seed)  # noqa: S311 - latency jitter, not security
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._watches: set[Watch] = set()
        self._requests_in_flight = 0  # watches and log follows included
        self._in_flight_changed = threading.Condition()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("ApiServer.url is only known after start()")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Serve on a background thread (port 0 picks a free port; see :attr:`url`).

        After a stop(), start() serves again on the same port, so kubeconfigs stay valid across a restart.
        """
        self._stopping.clear()
        self._httpd = _HTTPServer(self._address, self)
        self._address = (self._address[0], self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(_SHUTDOWN_POLL_S,), name="sim-apiserver", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: end open watches and log follows, let requests in flight finish, drop connections.

        Profile delays are cut short, so a request in flight is answered at once and every stream ends with
        its terminating chunk: a clean end for the client rather than a broken connection.
        """
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        with self._in_flight_changed:
            watches = list(self._watches)
        for watch in watches:
            watch.close()
        with self._in_flight_changed:  # let every request finish, streams with their terminating chunk
            self._in_flight_changed.wait_for(lambda: self._requests_in_flight == 0, timeout=_DRAIN_S)
        with self._httpd.connections_lock:
            connections = list(self._httpd.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    # ---- request handling ---------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> None:
        """Answer one request; every failure becomes a Status response, never a traceback.

        A failure after the response has begun (a stream) closes the connection instead: a Status written
        there would corrupt the body the client is reading.
        """
        with self._in_flight():
            self._answer(handler)

    def _answer(self, handler: _Handler) -> None:
        try:
            request = _Request(handler, _read_body(handler))
            if request.path.startswith("/_sim/"):
                self._admin(request)
            elif request.path.rstrip("/") in _HEALTH_PATHS:
                self._send(handler, 200, b"ok", _PLAIN_TEXT)
            elif (document := self._discovery(request.path)) is not None:
                self._send_json(handler, 200, _dumps(document).encode())
            else:
                self._resource(request)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        except Exception as error:  # the server must answer, whatever went wrong inside
            if handler.response_started:  # a Status now would land inside the body already sent
                log.exception("simulated API server: %s failed mid-response", handler.path)
                _drop(handler)
                return
            if not isinstance(error, ApiError):
                error = ApiError(
                    500, "InternalError", f"Internal error occurred: {type(error).__name__}: {error}"
                )
            self._send_status(handler, error)

    def _resource(self, request: _Request) -> None:
        target = _target(request.path)
        verb = _verb(request, target)
        if target.resource == "nodes" and verb not in ("get", "list", "watch"):
            raise ApiError(
                405,
                "MethodNotAllowed",
                f'{verb} is not supported on resources of kind "nodes" in this simulator',
            )
        fault = self.faults.take(verb, target.resource)
        if verb == "watch":
            self._watch(request, target.resource, target.namespace, fault)
            return
        if fault is not None:
            self._apply_fault(request, fault, target.resource, target.name)
            return
        seats = self._seats if verb != "log" else None  # long-running requests take no seat
        if seats is not None and not seats.acquire(blocking=False):
            self._send(request.handler, 429, _TOO_MANY_REQUESTS, _PLAIN_TEXT, {"Retry-After": "1"})
            return
        try:
            self._serve(request, verb, target)
        finally:
            if seats is not None:
                seats.release()

    def _serve(self, request: _Request, verb: str, target: _Target) -> None:
        if verb == "get":
            self._delay(self.profile.get)
            found = self.store.get_json(target.resource, target.namespace, target.name or "")
            self._send_json(request.handler, 200, found)
        elif verb == "list":
            self._list(request, target.resource, target.namespace)
        elif verb == "log":
            self._delay(self.profile.get)
            self._log(request, target.namespace or "", target.name or "")
        else:
            self._delay(self.profile.write)
            self._write(request, verb, target)

    def _write(self, request: _Request, verb: str, target: _Target) -> None:
        if verb == "create" and target.subresource == "eviction":
            self._evict(request, target)
        elif verb == "create":
            created = self.store.create(
                target.resource, target.namespace, request.json_object(), dry_run=request.dry_run()
            )
            self._send_json(request.handler, 201, _dumps(created).encode())
        elif verb in ("update", "patch"):
            code, obj = self._update(request, verb, target)
            self._send_json(request.handler, code, _dumps(obj).encode())
        elif verb == "delete":
            self._delete(request, target)
        else:
            self._delete_collection(request, target)

    def _evict(self, request: _Request, target: _Target) -> None:
        """POST pods/{name}/eviction: delete the pod with the Eviction's deleteOptions (no budgets here)."""
        options = _delete_options(request.json_object().get("deleteOptions"), field_prefix="deleteOptions.")
        self._delete_one(request, target, options)
        self._send_json(request.handler, 201, _success_status(code=201))

    def _delete(self, request: _Request, target: _Target) -> None:
        """DELETE of one object: a pod answers with itself, other kinds with a success Status."""
        obj = self._delete_one(request, target, _delete_options(request.json_body()))
        if target.resource == "pods":
            self._send_json(request.handler, 200, _dumps(obj).encode())
            return
        details = {"name": target.name, "kind": target.resource, "uid": obj["metadata"].get("uid")}
        self._send_json(request.handler, 200, _success_status(details=details))

    def _delete_collection(self, request: _Request, target: _Target) -> None:
        """DELETE of a collection: every object the selectors match, answered as a list of them."""
        options = _delete_options(request.json_body())
        items, revision = self.store.list(
            target.resource,
            target.namespace,
            label_selector=request.query.get("labelSelector"),
            field_selector=request.query.get("fieldSelector"),
        )
        deleted = [
            self._delete_one(
                request,
                target._replace(namespace=item["metadata"].get("namespace"), name=item["metadata"]["name"]),
                options,
            )
            for item in items
        ]
        listing = {
            "kind": f"{KINDS[target.resource]}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": revision},
            "items": deleted,
        }
        self._send_json(request.handler, 200, _dumps(listing).encode())

    def _delete_one(self, request: _Request, target: _Target, options: dict[str, Any]) -> dict[str, Any]:
        """Delete ``target`` with ``options`` (already type-checked) and the query's DeleteOptions."""
        policy = request.query.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is not None and policy not in ("Foreground", "Background", "Orphan"):
            raise _invalid_delete_options(
                f'propagationPolicy: Unsupported value: "{policy}": '
                'supported values: "Foreground", "Background", "Orphan"'
            )
        if policy is not None and ("orphanDependents" in request.query or "orphanDependents" in options):
            raise _invalid_delete_options(
                f'propagationPolicy: Invalid value: "{policy}": '
                "orphanDependents and deletionPropagation cannot be both set"
            )
        grace = request.integer("gracePeriodSeconds")
        if grace is None:
            grace = options.get("gracePeriodSeconds")
        preconditions = options.get("preconditions") or {}
        obj, _ = self.store.delete(
            target.resource,
            target.namespace,
            target.name or "",
            grace_period_seconds=grace,
            uid=preconditions.get("uid"),
            resource_version=preconditions.get("resourceVersion"),
            dry_run=request.dry_run(options),
        )
        return obj

    def _update(self, request: _Request, verb: str, target: _Target) -> tuple[int, dict[str, Any]]:
        """PUT or PATCH of an object or its status; (HTTP code, resulting object)."""
        resource, namespace, sub = target.resource, target.namespace, target.subresource
        name = target.name or ""
        patch_type = None
        if verb == "patch":
            patch_type = MEDIA_TYPES.get(request.content_type)
            if patch_type is None:
                raise _unsupported_media_type(request.content_type, accepted=", ".join(MEDIA_TYPES))
            if patch_type == "apply" and not request.query.get("fieldManager"):
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                    "value: is required for apply patch",
                )
            if patch_type != "apply" and "force" in request.query:
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not '
                    "be specified for non-apply patch",
                )
        document = request.json_body()
        if patch_type == "apply":
            try:
                self.store.get_json(resource, namespace, name)
            except ApiError as error:
                if error.code != 404 or sub is not None:
                    raise
                body = request.json_object()
                body.setdefault("metadata", {}).setdefault("name", name)
                return 201, self.store.create(resource, namespace, body, dry_run=request.dry_run())
        if patch_type is None and not isinstance(document, dict):
            raise bad_request("the request body must be a JSON object (a Kubernetes object)")

        def compute(current: dict[str, Any]) -> dict[str, Any]:
            if patch_type is None:
                return dict(document)
            return apply_patch(patch_type, current, document)

        updated = self.store.update(
            resource,
            namespace,
            name,
            lambda obj: _replace(resource, name, sub, obj, compute(obj)),
            dry_run=request.dry_run(),
        )
        return 200, updated

    def _list(self, request: _Request, resource: str, namespace: str | None) -> None:
        query = request.query
        limit = request.integer("limit")
        continue_token = query.get("continue") or None
        _check_list_options(query, continue_token, watch=False)
        requested = query.get("resourceVersion") or ""
        if requested not in ("", "0") and continue_token is None:
            revision = parse_resource_version(requested)
            current = int(self.store.resource_version)
            if revision > current:
                raise too_large_resource_version(revision, current)
            exact = query.get("resourceVersionMatch") == "Exact" or (
                limit and query.get("resourceVersionMatch") is None
            )
            if exact and revision < current:
                raise expired("The resourceVersion for the provided list is too old.")
        page = self.store.list_json(
            resource,
            namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            limit=limit,
            continue_token=continue_token,
        )
        metadata: dict[str, Any] = {"resourceVersion": page.resource_version}
        if page.continue_token is not None:
            metadata["continue"] = page.continue_token
            if page.remaining_item_count is not None:
                metadata["remainingItemCount"] = page.remaining_item_count
        self._delay(self.profile.list_base, extra_s=self.profile.list_per_item_s * len(page.items))
        head = f'{{"kind":"{KINDS[resource]}List","apiVersion":"v1","metadata":'.encode()
        body = head + _dumps(metadata).encode() + b',"items":[' + b",".join(page.items) + b"]}"
        self._send_json(request.handler, 200, body)

    # ---- watch --------------------------------------------------------------------------------------

    def _watch(self, request: _Request, resource: str, namespace: str | None, fault: Fault | None) -> None:
        """A chunked stream of ``{"type":..,"object":..}\\n`` events until timeoutSeconds or server stop."""
        query = request.query
        _check_list_options(query, None, watch=True)
        timeout = request.integer("timeoutSeconds")
        timeout_s = min(
            float(timeout) if timeout and timeout > 0 else self.default_watch_timeout_s, _MAX_WATCH_TIMEOUT_S
        )
        bookmarks = request.flag("allowWatchBookmarks")
        send_initial = query.get("sendInitialEvents")
        if fault is not None and fault.action == "error":
            self._apply_fault(request, fault, resource, None)
            return
        if fault is not None and fault.action == "expire" and fault.form == "http":
            raise expired("The resourceVersion for the provided watch is too old.")
        handler = request.handler
        error_status: dict[str, Any] | None = None
        watch: Watch | None = None
        if fault is not None and fault.action == "expire":
            requested, current = query.get("resourceVersion", ""), self.store.resource_version
            error_status = expired(f"too old resource version: {requested} ({current})").status()
        else:
            try:
                watch = self.store.watch(
                    resource,
                    namespace,
                    label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                    resource_version=query.get("resourceVersion"),
                    initial_state=None if send_initial is None else send_initial.lower() == "true",
                )
            except ApiError as error:
                if error.code not in (410, 504):  # after a parsed RV, the stream itself carries the error
                    raise
                error_status = error.status()
        try:
            handler.send_bytes(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                b"Cache-Control: no-cache, private\r\n\r\n"
            )
            if watch is None:
                assert error_status is not None
                _write_chunk(handler, b'{"type":"ERROR","object":' + _dumps(error_status).encode() + b"}\n")
                _write_chunk(handler, b"")
                return
            with self._in_flight_changed:
                self._watches.add(watch)
                if self._stopping.is_set():  # stop() already closed the watches it knew of
                    watch.close()
            self._stream_events(handler, watch, timeout_s, bookmarks, fault)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            if watch is not None:
                watch.close()
                with self._in_flight_changed:
                    self._watches.discard(watch)

    def _stream_events(
        self,
        handler: _Handler,
        watch: Watch,
        timeout_s: float,
        bookmarks: bool,
        fault: Fault | None,
    ) -> None:
        """Write the events of ``watch`` as chunks; a cut/drop fault ends the stream after its budget."""
        budget = fault.after_events if fault is not None and fault.action in ("cut", "drop") else None
        lines = self._event_lines(watch, time.monotonic() + timeout_s, bookmarks)
        while budget != 0:
            line, is_object_event = next(lines, (b"", False))
            if not line:
                break
            _write_chunk(handler, line)
            if is_object_event and budget is not None:
                budget -= 1
        if budget == 0 and fault is not None and fault.action == "drop":
            _drop(handler)
            return
        if watch.closed:  # the server is stopping: end the stream and the connection
            handler.close_connection = True
        _write_chunk(handler, b"")

    def _event_lines(self, watch: Watch, deadline: float, bookmarks: bool) -> Iterator[tuple[bytes, bool]]:
        """(line, is an object event) for initial events, live events and bookmarks, until the deadline."""
        kind = KINDS[watch.resource]
        for initial in watch.drain_initial():
            yield _event_line(initial), True
        if watch.send_initial_events:
            yield _bookmark(kind, watch.synced_resource_version, initial_events_end=True), False
        next_bookmark = time.monotonic() + self.bookmark_interval_s
        while not watch.closed:
            now = time.monotonic()
            if now >= deadline:
                if bookmarks and (revision := watch.idle_resource_version()) is not None:
                    yield _bookmark(kind, revision), False
                return
            event = watch.next((min(deadline, next_bookmark) if bookmarks else deadline) - now)
            if event is not None:
                lag = self.profile.watch_lag.sample(self._rng)
                pause = event.committed_at + lag - time.monotonic()
                if lag and pause > 0:
                    self._stopping.wait(pause)
                yield _event_line(event), True
            elif bookmarks and not watch.closed and time.monotonic() >= next_bookmark:
                next_bookmark = time.monotonic() + self.bookmark_interval_s
                if (revision := watch.idle_resource_version()) is not None:
                    yield _bookmark(kind, revision), False

    # ---- logs ---------------------------------------------------------------------------------------

    def _log(self, request: _Request, namespace: str, name: str) -> None:
        """GET pods/{name}/log: the container's log so far, or with follow=true a stream until it exits."""
        pod = self.store.get(namespace=namespace, name=name, resource="pods")
        container = _log_container(pod, request.query.get("container") or "")
        if not pod["spec"].get("nodeName"):
            request.handler.send_bytes(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            return
        if request.flag("previous"):
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        if not self.logs.is_started(namespace, name, container):
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {_waiting(pod, container)}'
            )
        selection: dict[str, Any] = {
            "tail_lines": request.integer("tailLines"),
            "since_seconds": request.integer("sinceSeconds"),
            "timestamps": request.flag("timestamps"),
        }
        limit = request.integer("limitBytes")
        if request.flag("follow"):
            self._follow_log(request.handler, (namespace, name, container), selection, limit)
            return
        data = self.logs.read(namespace, name, container, limit_bytes=limit, **selection)
        if data is None:  # the pod was removed since it was read above
            raise not_found("pods", name)
        self._send(request.handler, 200, data, "text/plain")

    def _follow_log(
        self, handler: _Handler, key: tuple[str, str, str], selection: dict[str, Any], limit: int | None
    ) -> None:
        """Stream the log as chunks until the container exits, the pod goes, ``limit`` bytes or stop()."""
        handler.send_bytes(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        left = limit
        try:
            for chunk in self.logs.follow(*key, stop=self._stopping, **selection):
                piece = chunk if left is None else chunk[:left]
                if piece:
                    _write_chunk(handler, piece)
                if left is not None:
                    left -= len(piece)
                    if left == 0:
                        break
            _write_chunk(handler, b"")
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a request being answered, so that stop() can let it finish (streams end at stop)."""
        with self._in_flight_changed:
            self._requests_in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_changed:
                self._requests_in_flight -= 1
                self._in_flight_changed.notify_all()

    # ---- admin, discovery, faults -------------------------------------------------------------------

    def _admin(self, request: _Request) -> None:
        handler = request.handler
        if request.path == "/_sim/faults" and request.method == "GET":
            active = [fault.to_json() for fault in self.faults.active()]
            self._send_json(handler, 200, _dumps({"faults": active}).encode())
        elif request.path == "/_sim/faults" and request.method == "POST":
            try:  # JSON whatever the Content-Type says: plain `curl -d` sends form-urlencoded
                document = json.loads(request.body or b"null")
            except ValueError as error:
                raise bad_request(f"a fault must be JSON, such as {_FAULT_EXAMPLE}: {error}") from None
            try:
                fault = self.faults.inject_json(document)
            except FaultError as error:
                raise bad_request(str(error)) from None
            self._send_json(handler, 201, _dumps(fault.to_json()).encode())
        elif request.path == "/_sim/faults" and request.method == "DELETE":
            self.faults.clear()
            self._send_json(handler, 200, b'{"faults":[]}')
        elif request.path == "/_sim/compact" and request.method == "POST":
            self.store.compact()
            self._send_json(handler, 200, _dumps({"resourceVersion": self.store.resource_version}).encode())
        else:
            raise ApiError(
                404,
                "NotFound",
                f"no simulator admin endpoint {request.method} {request.path}: "
                "use GET/POST/DELETE /_sim/faults or POST /_sim/compact",
                {},
            )

    def _discovery(self, path: str) -> dict[str, Any] | None:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return _VERSION_INFO
        if path == "/api":
            host, port = self._address  # not self.url: that is unknown once stop() has closed the socket
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}
                ],
            }
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if path == "/api/v1":
            return _API_RESOURCES
        return None

    def _apply_fault(self, request: _Request, fault: Fault, resource: str, name: str | None) -> None:
        handler = request.handler
        if fault.action == "drop":
            _drop(handler)
            return
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.status == 429:  # what API Priority and Fairness answers: plain text, not a Status
            self._send(handler, 429, _TOO_MANY_REQUESTS, _PLAIN_TEXT, headers)
            return
        if fault.status == 409:
            error = stale_write(resource, name or "")
        else:
            reason = _STATUS_REASONS.get(fault.status) or _phrase(fault.status).replace(" ", "")
            error = ApiError(
                fault.status, reason, f"injected fault: {fault.status} {reason} (simulator /_sim/faults)"
            )
        if fault.retry_after is not None:
            error.details = {**(error.details or {}), "retryAfterSeconds": fault.retry_after}
        self._send_status(handler, error, headers)

    # ---- responses ----------------------------------------------------------------------------------

    def _delay(self, latency: Latency, *, extra_s: float = 0.0) -> None:
        pause = latency.sample(self._rng) + extra_s
        if pause > 0:
            self._stopping.wait(pause)

    def _send_status(self, handler: _Handler, error: ApiError, headers: dict[str, str] | None = None) -> None:
        """The error as a Status; like kube-apiserver, a positive retryAfterSeconds becomes Retry-After."""
        retry_after = (error.details or {}).get("retryAfterSeconds")
        if retry_after:
            headers = {"Retry-After": str(retry_after), **(headers or {})}
        self._send(handler, error.code, _dumps(error.status()).encode(), "application/json", headers)

    def _send_json(self, handler: _Handler, code: int, body: bytes) -> None:
        self._send(handler, code, body, "application/json")

    @staticmethod
    def _send(
        handler: _Handler,
        code: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Status line, headers and body in one ``send``: no partial packets for Nagle to hold back."""
        lines = [
            f"HTTP/1.1 {code} {_phrase(code)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        if handler.close_connection:
            lines.append("Connection: close")
        handler.send_bytes(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _read_body(handler: _Handler) -> bytes:
    """The request body, by Content-Length or chunked (``curl -T``); a bad framing ends the connection."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        return _read_chunked_body(handler)
    text = handler.headers.get("Content-Length") or "0"
    if not text.isdigit():
        handler.close_connection = True  # the request boundary is unknown: this connection is unusable
        raise bad_request(f"Content-Length: Invalid value: {text!r}: must be a non-negative integer")
    length = int(text)
    if length > _MAX_BODY_BYTES:
        if length <= _MAX_DISCARDED_BYTES:  # read it away: closing on unread data would reset the answer
            _discard(handler, length)
        else:
            handler.close_connection = True
        raise _too_large(length)
    return handler.rfile.read(length) if length else b""


def _discard(handler: _Handler, length: int) -> None:
    while length > 0:
        piece = handler.rfile.read(min(length, _READ_PIECE_BYTES))
        if not piece:
            return
        length -= len(piece)


def _read_chunked_body(handler: _Handler) -> bytes:
    body = bytearray()
    while True:
        size_line = handler.rfile.readline(_READ_PIECE_BYTES).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            handler.close_connection = True
            raise bad_request(
                f"Transfer-Encoding: chunked: chunk size {size_line!r} is not hexadecimal"
            ) from None
        if size == 0:
            while handler.rfile.readline(_READ_PIECE_BYTES).strip():
                pass  # trailer fields, up to the blank line
            return bytes(body)
        if len(body) + size > _MAX_BODY_BYTES:
            handler.close_connection = True
            raise _too_large(len(body) + size)
        body += handler.rfile.read(size)
        handler.rfile.readline(_READ_PIECE_BYTES)  # the CRLF after the chunk


def _too_large(size: int) -> ApiError:
    return ApiError(
        413,
        "RequestEntityTooLarge",
        f"Request entity too large: limit is {_MAX_BODY_BYTES} bytes, the request has at least {size}",
    )


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _target(path: str) -> _Target:
    """The resource a REST path names (404 NotFound for any other path)."""
    for route in _ROUTES:
        if match := route.match(path):
            break
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
    groups = match.groupdict()
    target = _Target(
        resource=match["resource"],
        namespace=unquote(groups["namespace"]) if groups.get("namespace") else None,
        name=unquote(match["name"]) if match["name"] else None,
        subresource=match["sub"],
    )
    if target.name is not None and target.namespace is None and target.resource in _NAMESPACED:
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
    return target


def _verb(request: _Request, target: _Target) -> str:
    method, name, sub = request.method, target.name, target.subresource
    if sub == "log":
        return "log"
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if request.flag("watch") else "list"
    if method == "POST":
        if name is not None and sub != "eviction":
            raise ApiError(
                405, "MethodNotAllowed", "POST is only allowed on a collection (to create an object)"
            )
        return "create"
    if name is None:
        if method == "DELETE":
            return "deletecollection"
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete"
    raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")


def _check_list_options(query: dict[str, str], continue_token: str | None, *, watch: bool) -> None:
    """The ListOptions rules kube-apiserver enforces before listing or watching (422 / 400)."""
    match = query.get("resourceVersionMatch")
    version = query.get("resourceVersion") or ""
    send_initial = query.get("sendInitialEvents")
    if send_initial is not None and not watch:
        raise _invalid_options("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
    if match is not None and match not in ("Exact", "NotOlderThan"):
        raise _invalid_options(
            f'resourceVersionMatch: Unsupported value: "{match}": supported values: "Exact", "NotOlderThan"'
        )
    if watch:
        if send_initial is not None and match != "NotOlderThan":
            raise _invalid_options(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to "
                "NotOlderThan"
            )
        if match is not None and send_initial is None:
            raise _invalid_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
                "sendInitialEvents is provided"
            )
        return
    if match is not None and not version:
        raise _invalid_options(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
            "resourceVersion is provided"
        )
    if match == "Exact" and version == "0":
        raise _invalid_options(
            'resourceVersionMatch: Forbidden: "exact" is forbidden for resourceVersion "0"'
        )
    if continue_token is not None and version not in ("", "0"):
        raise bad_request("specifying resource version is not allowed when using continue")


def _delete_options(document: Any, *, field_prefix: str = "") -> dict[str, Any]:
    """A request's DeleteOptions (None: all defaults), with each field's JSON type checked.

    The apiserver refuses a body it cannot decode with 400 BadRequest; so does this, naming the field.
    """
    if document is None:
        return {}
    if not isinstance(document, dict):
        where = field_prefix.rstrip(".") or "the DELETE body"
        raise bad_request(
            f"{where}: Invalid value: {_dumps(document)}: must be DeleteOptions, "
            'a JSON object such as {"gracePeriodSeconds": 30}'
        )
    for field, wanted, example in _DELETE_OPTION_TYPES:
        value = document.get(field)
        is_bool = isinstance(value, bool)  # a bool is an int to Python, not to JSON
        if value is not None and (not isinstance(value, wanted) or is_bool != (wanted is bool)):
            raise bad_request(f"{field_prefix}{field}: Invalid value: {_dumps(value)}: must be {example}")
    for field in ("uid", "resourceVersion"):
        value = (document.get("preconditions") or {}).get(field)
        if value is not None and not isinstance(value, str):
            raise bad_request(
                f"{field_prefix}preconditions.{field}: Invalid value: {_dumps(value)}: must be a string"
            )
    dry_run = document.get("dryRun") or []
    if not all(isinstance(value, str) for value in dry_run):
        raise bad_request(
            f'{field_prefix}dryRun: Invalid value: {_dumps(dry_run)}: must be a list such as ["All"]'
        )
    return document


def _success_status(*, code: int | None = None, details: dict[str, Any] | None = None) -> bytes:
    """The ``Status`` of a successful eviction or deletion."""
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if code is not None:
        status["code"] = code
    if details is not None:
        status["details"] = details
    return _dumps(status).encode()


def _unsupported_media_type(content_type: str, *, accepted: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        f'{accepted} (got "{content_type}")',
    )


def _invalid_delete_options(detail: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: {detail}', {"kind": "DeleteOptions"}
    )


def _invalid_options(detail: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {detail}', {"kind": "ListOptions"}
    )


def _replace(
    resource: str, name: str, sub: str | None, current: dict[str, Any], wanted: dict[str, Any]
) -> None:
    """Turn ``current`` (the stored object's copy) into ``wanted`` as far as a PUT/PATCH may change it."""
    metadata = wanted.get("metadata")
    if not isinstance(metadata, dict):
        metadata = wanted["metadata"] = {}
    if metadata.get("name", name) != name:
        raise bad_request(
            f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
        )
    expected = metadata.get("resourceVersion")
    if expected and expected != current["metadata"]["resourceVersion"]:
        raise stale_write(resource, name)
    if sub == "status":
        current["status"] = wanted.get("status") or {}
        return
    old = json.loads(_dumps(current))
    for system_field in (
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ):
        if system_field in old["metadata"]:
            metadata[system_field] = old["metadata"][system_field]
        else:
            metadata.pop(system_field, None)
    if "status" in old:
        wanted["status"] = old["status"]
    if resource == "pods":
        validation.default_pod(wanted)  # a body without the defaults means "unchanged", not "removed"
        errors = validation.validate_pod_update(old, wanted)
        if wanted.get("spec") != old.get("spec"):
            metadata["generation"] = old["metadata"].get("generation", 1) + 1
    else:
        errors = validation.validate_object(resource, wanted)
    if errors:
        raise invalid(resource, name, errors)
    current.clear()
    current.update(wanted)


# ---- stream helpers ---------------------------------------------------------------------------------


def _write_chunk(handler: _Handler, data: bytes) -> None:
    """One HTTP chunk in one ``send`` (an empty ``data`` is the terminating chunk)."""
    handler.send_bytes(b"%x\r\n%s\r\n" % (len(data), data))


def _event_line(event: WatchEvent) -> bytes:
    return b'{"type":"' + event.type.encode() + b'","object":' + event.object_json + b"}\n"


def _drop(handler: _Handler) -> None:
    """Close the connection without (the rest of) a response."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)


def _bookmark(kind: str, resource_version: str, *, initial_events_end: bool = False) -> bytes:
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return (
        _dumps(
            {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": metadata}}
        ).encode()
        + b"\n"
    )


def _log_container(pod: dict[str, Any], requested: str) -> str:
    """The container whose log is asked for: ``requested``, or the only one (400 names the choices)."""
    name = pod["metadata"]["name"]
    containers = [c["name"] for c in pod["spec"].get("containers", [])]
    init_containers = [c["name"] for c in pod["spec"].get("initContainers") or []]
    if not requested:
        if len(containers) == 1 and not init_containers:
            return str(containers[0])
        choices = (
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
        )
        if init_containers:
            choices += f" or one of the init containers: [{' '.join(init_containers)}]"
        raise bad_request(choices)
    if requested not in containers and requested not in init_containers:
        raise bad_request(f"container {requested} is not valid for pod {name}")
    return requested


def _waiting(pod: dict[str, Any], container: str) -> str:
    """Why a container has not started, as the log endpoint words it."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            reason = (status.get("state") or {}).get("waiting", {}).get("reason") or "ContainerCreating"
            return {
                "ErrImagePull": "image can't be pulled",
                "ImagePullBackOff": "trying and failing to pull image",
            }.get(reason, reason)
    return "ContainerCreating"
