"""Packaging promises: cheap `import bridge`, one-way dependencies, and a working `kbridge` command."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KBRIDGE = str(Path(sys.executable).with_name("kbridge"))


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import bridge", "import bridge.cli"])
def test_import_bridge_pulls_in_no_workers_simulator_or_airflow(statement: str) -> None:
    modules = _imported_after(statement)
    assert "bridge" in modules
    forbidden = {
        m for m in modules if m.split(".")[0] in {"workers", "airflow"} or m.startswith("bridge.sim")
    }
    assert forbidden == set()


def _imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_workers_and_production_code_never_imports_the_simulator() -> None:
    offenders = []
    for path in sorted((ROOT / "bridge").rglob("*.py")):
        in_simulator = "sim" in path.relative_to(ROOT / "bridge").parts[:1]
        for name in _imports_of(path):
            top = name.split(".")[0]
            if top == "workers" or (name.startswith("bridge.sim") and not in_simulator):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    for path in sorted((ROOT / "workers").rglob("*.py")):
        offenders += [
            f"{path.relative_to(ROOT)} imports {n}" for n in _imports_of(path) if n.startswith("bridge.sim")
        ]
    assert offenders == []


def test_only_the_airflow_executor_module_imports_airflow() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for folder in ("bridge", "workers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if any(name.split(".")[0] == "airflow" for name in _imports_of(path))
    }
    assert importers == {"bridge/airflow_executor.py"}


def test_kbridge_help_lists_commands() -> None:
    result = subprocess.run([KBRIDGE, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: kbridge COMMAND" in result.stdout
    for command in ("config", "sim"):
        assert f"\n  {command} " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_kbridge_unknown_command_is_a_usage_error_not_a_traceback() -> None:
    result = subprocess.run([KBRIDGE, "frobnicate"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_kbridge_version() -> None:
    import bridge

    result = subprocess.run([KBRIDGE, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"kbridge {bridge.__version__}"
