"""The rq job class of the bridge: allowlisted functions, JSON only, readable in ``redis-cli``.

Why a subclass: stock rq imports whatever dotted path a job names, so anyone able to write to Redis could
make a worker call any function (see docs/redis.md, "Security"). Here a job names a symbol from
:data:`bridge.protocol.JOB_FUNCTIONS`, and the only functions a worker can reach are the ones its own job
class maps those symbols to; any other name fails the job without calling anything. The job's ``data`` is
stored as plain JSON instead of rq's zlib blob (rq reads both), so ``HGET rq:job:<id> data`` is readable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

SERIALIZER = JSONSerializer


class UnknownJobFunction(BridgeError):
    """A job names a function outside the allowlist; it is failed without being called."""


class BridgeJob(Job):
    """An rq job whose function is looked up in :attr:`handlers` (empty here: enqueue-only).

    rq also imports and calls the success/failure/stopped callbacks a job hash names, and sends the
    webhooks it lists: that would reopen the door the allowlist closes, so none of them is ever used, and a
    job naming any of them is refused (failed without calling anything).
    """

    handlers: ClassVar[Mapping[str, Callable[..., Any]]] = {}

    @property
    def func(self) -> Callable[..., Any]:
        extras = self._forbidden_extras()
        if extras:
            message = (
                f"job {self.id} names {', '.join(extras)}, which the bridge never runs; it was refused and "
                "nothing was called"
            )
            log.error("%s", message)
            raise UnknownJobFunction(message)
        name = self.func_name
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            allowed = ", ".join(sorted(self.handlers)) or "none in this process"
            raise UnknownJobFunction(
                f"job {self.id} names function {name!r}, which is not allowed here (allowed: {allowed}); "
                "it was not called"
            )
        return handler

    def _forbidden_extras(self) -> list[str]:
        named = {
            "success_callback_name": self._success_callback_name,
            "failure_callback_name": self._failure_callback_name,
            "stopped_callback_name": self._stopped_callback_name,
        }
        extras = [f"{field} {value!r}" for field, value in named.items() if value]
        if self.webhooks:
            extras.append(f"{len(self.webhooks)} webhook(s)")
        return extras

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never: a webhook is a request to any URL the job hash names."""

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        fields = super().to_dict(include_meta=include_meta, include_result=include_result)
        fields["data"] = self.data  # JSON bytes, not zlib: rq's restore() accepts both
        return fields


def job_class_with(handlers: Mapping[str, Callable[..., Any]]) -> type[BridgeJob]:
    """A :class:`BridgeJob` subclass that may call exactly ``handlers`` (symbol -> function)."""
    return type("AllowlistedJob", (BridgeJob,), {"handlers": dict(handlers)})
