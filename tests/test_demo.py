"""`make demo` keeps working: every task ends as the demo expects, fast, and no process outlives it.

The demo runs as a user runs it (a subprocess). Its run marker is set here, so the leftover check does not
trust the demo's own report: every process the demo's stack starts, pods included, carries the marker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bridge.sim.stack import RUN_MARKER, processes_of_run

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def test_demo_runs_every_task_to_its_expected_state_and_leaves_no_process(tmp_path: Path) -> None:
    run_id = f"demo-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, RUN_MARKER: run_id}
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo" / "run.py"), "--run-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
        elapsed = time.monotonic() - started
        leftovers = processes_of_run(run_id)
    finally:
        for pid in processes_of_run(run_id):  # only after a failure: do not leak into the next tests
            os.kill(pid, signal.SIGKILL)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "50/50 tasks ended as expected" in out
    assert "Traceback" not in result.stderr
    assert leftovers == []
    assert "processes left behind: none" in out
    assert re.search(r"^shutdown: .*sim exit 0$", out, re.MULTILINE), out
    assert not re.search(r"exit -?[1-9]", out.split("shutdown:", 1)[1].splitlines()[0]), out
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"

    rows = {line.split()[0]: line for line in out.splitlines() if line and line[0].isalpha()}
    assert "exit 42" in rows["exit_42"]
    assert "exit 143" in rows["killed_by_sigterm"]
    for task, text in (
        ("over_memory_limit", "OOMKilled"),
        ("missing_binary", "StartError"),
        ("unpullable_image", "ErrImagePull"),
        ("missing_secret", "CreateContainerConfigError"),
        ("bad_executor_config", "InvalidTask"),
        ("command_is_a_string", "InvalidTask"),
    ):
        assert text in rows[task], rows[task]
    for task in ("uses_secret_by_reference", "shard[21]", "count_primes[9]"):
        assert rows[task].split()[1] == "success", rows[task]
    # The live progress line moved through the try states the records hold.
    assert re.search(r"\] .*running +\d+", out), out
    for name in ("dispatcher-1", "dispatcher-2", "watcher-1"):
        assert "Traceback" not in (tmp_path / f"{name}.log").read_text(), name
