"""docs/simulator.md stays true: every test its traceability table names exists, and every row names one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = (ROOT / "docs" / "simulator.md").read_text(encoding="utf-8").split("### Traceability")[1]
REFERENCE = re.compile(r"`((?:sim/)?test_\w+\.py)::(test_\w+)`")


def test_every_row_of_the_traceability_table_names_a_test() -> None:
    rows = [line for line in TABLE.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 50
    assert [row for row in rows if not REFERENCE.search(row)] == []


def test_every_test_the_table_names_exists() -> None:
    missing = []
    for path, name in REFERENCE.findall(TABLE):
        source = (ROOT / "tests" / path).read_text(encoding="utf-8")
        if not re.search(rf"^def {name}\(", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []
