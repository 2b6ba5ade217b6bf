"""The identity of one task try: the unit the bridge queues, launches and reports on.

It mirrors Airflow's ``TaskInstanceKey`` field for field, so an Airflow key converts with ``TaskKey(*key)``,
while the bridge itself never needs Airflow installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from bridge.errors import UserInputError


class TaskKeyError(UserInputError, ValueError):
    """A task key could not be built from untrusted input; the message names the field and the fix.

    A :class:`UserInputError`, so the CLI and the workers report it as bad input, not as a crash; still a
    ``ValueError`` for callers that catch that.
    """


class TaskKey(NamedTuple):
    """One try of one task instance. ``map_index`` is -1 for a task that is not mapped."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    map_index: int = -1

    def as_dict(self) -> dict[str, str | int]:
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "try_number": self.try_number,
            "map_index": self.map_index,
        }

    @classmethod
    def from_dict(cls, data: object) -> TaskKey:
        """Build a key from JSON-decoded data, rejecting anything that is not exactly the documented shape."""
        if not isinstance(data, Mapping):
            raise TaskKeyError(f"task key must be a JSON object, got {type(data).__name__}")
        for field in ("dag_id", "task_id", "run_id"):
            value = data.get(field)
            if not isinstance(value, str) or not value:
                raise TaskKeyError(f"task key field {field!r} must be a non-empty string, got {value!r}")
        try_number = data.get("try_number", 1)
        map_index = data.get("map_index", -1)
        if not isinstance(try_number, int) or isinstance(try_number, bool) or try_number < 0:
            raise TaskKeyError(f"task key field 'try_number' must be an integer >= 0, got {try_number!r}")
        if not isinstance(map_index, int) or isinstance(map_index, bool) or map_index < -1:
            raise TaskKeyError(f"task key field 'map_index' must be an integer >= -1, got {map_index!r}")
        return cls(data["dag_id"], data["task_id"], data["run_id"], try_number, map_index)
