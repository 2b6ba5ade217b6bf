"""The rq job class of the bridge: allowlisted functions, JSON only, readable in ``redis-cli``.

Why a subclass: stock rq imports whatever dotted path a job names, so anyone able to write to Redis could
make a worker call any function (see docs/redis.md, "Security"). Here a job names a symbol from
:data:`bridge.protocol.JOB_FUNCTIONS`, and the only functions a worker can reach are the ones its own job
class maps those symbols to; any other name fails the job without calling anything. The job's ``data`` is
stored as plain JSON instead of rq's zlib blob (rq reads both), so ``HGET rq:job:<id> data`` is readable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.errors import BridgeError

SERIALIZER = JSONSerializer


class UnknownJobFunction(BridgeError):
    """A job names a function outside the allowlist; it is failed without being called."""


class BridgeJob(Job):
    """An rq job whose function is looked up in :attr:`handlers` (empty here: enqueue-only)."""

    handlers: ClassVar[Mapping[str, Callable[..., Any]]] = {}

    @property
    def func(self) -> Callable[..., Any]:
        name = self.func_name
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            allowed = ", ".join(sorted(self.handlers)) or "none in this process"
            raise UnknownJobFunction(
                f"job {self.id} names function {name!r}, which is not allowed here (allowed: {allowed}); "
                "it was not called"
            )
        return handler

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        fields = super().to_dict(include_meta=include_meta, include_result=include_result)
        fields["data"] = self.data  # JSON bytes, not zlib: rq's restore() accepts both
        return fields


def job_class_with(handlers: Mapping[str, Callable[..., Any]]) -> type[BridgeJob]:
    """A :class:`BridgeJob` subclass that may call exactly ``handlers`` (symbol -> function)."""
    return type("AllowlistedJob", (BridgeJob,), {"handlers": dict(handlers)})
