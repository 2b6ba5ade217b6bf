"""`make demo` keeps working: it runs the demo script and checks every task ended as the demo expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_every_task_to_its_expected_state() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run.py")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12/12 tasks ended as expected" in result.stdout
    assert "Traceback" not in result.stderr
    for row in ("exit_3 ", "OOMKilled", "StartError", "ErrImagePull", "shard[3]"):
        assert row in result.stdout
