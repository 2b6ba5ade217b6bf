"""Polling for conditions another thread or process brings about, for tests that have nothing to block on.

One helper for every test module, so a timeout always fails the test the same way: naming what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 10.0, interval: float = 0.02
) -> float:
    """Poll ``condition`` until it is true; the seconds it took. Fails the test naming ``what`` on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
