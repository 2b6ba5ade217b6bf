"""Fault injection for the simulated API server, switchable at runtime per verb.

Why: the bridge's value is in how it survives a misbehaving control plane — throttling (429), outages
(5xx), dropped connections, watches that end or expire (410), write conflicts (409). Tests need to turn
exactly one such failure on, observe the bridge recover, and turn it off again, from the test process or
from another process through the admin endpoint (``POST /_sim/faults``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "log")
# Shorthands a fault may name instead of one verb.
VERB_GROUPS = {
    "*": frozenset(VERBS),
    "read": frozenset({"get", "list"}),
    "write": frozenset({"create", "update", "patch", "delete", "deletecollection"}),
}
ACTIONS = ("error", "drop", "cut", "expire")
EXPIRE_FORMS = ("event", "http")


class FaultError(ValueError):
    """A fault description that makes no sense; the message names the field and the fix."""


@dataclass
class Fault:
    """One injected failure.

    ``action``:
      - ``error``: answer ``status`` (429 as the plain-text throttling answer, others as a JSON Status),
        with a ``Retry-After`` header when ``retry_after`` is set;
      - ``drop``: close the connection without answering (a watch: after ``after_events`` events);
      - ``cut``: end a watch stream cleanly after ``after_events`` events (0: at once);
      - ``expire``: answer a watch with 410 Expired, as an ERROR event (``form="event"``) or an HTTP 410.
    It applies to the next ``count`` matching requests (None: until cleared), each with ``probability``.
    """

    verb: str = "*"
    action: str = "error"
    status: int = 503
    retry_after: int | None = None
    resource: str | None = None
    after_events: int = 0
    form: str = "event"
    count: int | None = 1
    probability: float = 1.0
    hits: int = field(default=0)

    def __post_init__(self) -> None:
        self._check_types()
        if self.verb not in VERBS and self.verb not in VERB_GROUPS:
            raise FaultError(f"fault verb {self.verb!r} is unknown: use one of {[*VERB_GROUPS, *VERBS]}")
        if self.action not in ACTIONS:
            raise FaultError(f"fault action {self.action!r} is unknown: use one of {list(ACTIONS)}")
        if self.action in ("cut", "expire") and self.verb not in ("watch", "*"):
            raise FaultError(f"fault action {self.action!r} only applies to watches: set verb to 'watch'")
        if not 400 <= self.status <= 599:
            raise FaultError(f"fault status {self.status} is not an HTTP error: use a code from 400 to 599")
        if self.form not in EXPIRE_FORMS:
            raise FaultError(
                f"fault form {self.form!r} is unknown: use 'event' (ERROR event) or 'http' (HTTP 410)"
            )
        if self.count is not None and self.count < 1:
            raise FaultError(f"fault count {self.count} must be at least 1 (or null: until cleared)")
        if not 0.0 < self.probability <= 1.0:
            raise FaultError(f"fault probability {self.probability} must be in (0, 1]")
        if self.after_events < 0:
            raise FaultError(f"fault afterEvents {self.after_events} must be >= 0")

    def _check_types(self) -> None:
        """JSON from the admin endpoint can hold anything: name the field before a comparison trips on it."""
        for name, wanted, description, nullable in _FIELD_TYPES:
            value = getattr(self, name)
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, wanted):
                alternative = " or null" if nullable else ""
                raise FaultError(f"fault {_CAMEL_CASE[name]} {value!r} must be {description}{alternative}")

    def applies_to(self, verb: str, resource: str) -> bool:
        verbs = VERB_GROUPS.get(self.verb, frozenset({self.verb}))
        if verb not in verbs or (self.resource is not None and self.resource != resource):
            return False
        # Watch-only actions never hit plain requests, whatever the verb pattern says.
        return self.action not in ("cut", "expire") or verb == "watch"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            "verb": data["verb"],
            "action": data["action"],
            "status": data["status"],
            "retryAfter": data["retry_after"],
            "resource": data["resource"],
            "afterEvents": data["after_events"],
            "form": data["form"],
            "count": data["count"],
            "probability": data["probability"],
            "hits": data["hits"],
        }


_JSON_FIELDS = {
    "verb": "verb",
    "action": "action",
    "status": "status",
    "retryAfter": "retry_after",
    "resource": "resource",
    "afterEvents": "after_events",
    "form": "form",
    "count": "count",
    "probability": "probability",
}
_CAMEL_CASE = {python: camel for camel, python in _JSON_FIELDS.items()}
# (field, accepted types, how the error message names them, may be null)
_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...], str, bool], ...] = (
    ("verb", str, "a string", False),
    ("action", str, "a string", False),
    ("status", int, "a whole number", False),
    ("retry_after", int, "a whole number of seconds", True),
    ("resource", str, "a string", True),
    ("after_events", int, "a whole number", False),
    ("form", str, "a string", False),
    ("count", int, "a whole number", True),
    ("probability", (int, float), "a number", False),
)


class Faults:
    """The active faults of one simulator; thread-safe, consumed by the API server per request."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)  # noqa: S311 - chance of a fault, not security

    def inject(self, **settings: Any) -> Fault:
        """Add a fault (keyword arguments as the fields of :class:`Fault`) and return it."""
        fault = Fault(**settings)
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject_json(self, document: Any) -> Fault:
        """Add a fault described by the admin endpoint's JSON (camelCase keys)."""
        if not isinstance(document, dict):
            raise FaultError('a fault must be a JSON object such as {"verb": "create", "status": 503}')
        unknown = sorted(set(document) - set(_JSON_FIELDS))
        if unknown:
            raise FaultError(f"unknown fault field(s) {unknown}: use {sorted(_JSON_FIELDS)}")
        try:
            return self.inject(**{_JSON_FIELDS[key]: value for key, value in document.items()})
        except TypeError as error:
            raise FaultError(f"bad fault field type: {error}") from None

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, verb: str, resource: str) -> Fault | None:
        """The fault that hits this request, if any (counting it; an exhausted fault is removed)."""
        with self._lock:
            for fault in self._faults:
                if not fault.applies_to(verb, resource) or self._rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                if fault.count is not None and fault.hits >= fault.count:
                    self._faults.remove(fault)
                return fault
        return None
