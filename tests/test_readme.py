"""The README's promises are checked: its two commands exist and CI runs one, its reference cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.config import render_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def test_readme_configuration_reference_is_rendered_from_the_option_table() -> None:
    assert README.split(START)[1].split(END)[0] == render_reference_markdown()


def test_the_first_commands_are_make_demo_and_make_test_and_ci_runs_make_test() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert {"demo", "test", "bench"} <= targets
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def test_every_path_in_the_layout_table_exists() -> None:
    layout = README.split("## Layout")[1].split("##")[0]
    paths = re.findall(r"^\| `([^`]+)` \|", layout, re.MULTILINE)
    assert len(paths) >= 6
    assert [p for p in paths if not (ROOT / p).exists()] == []
