"""The `kbridge` command as people use it: through the installed console script, with pipes and files."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from bridge import cli
from bridge.config import OPTIONS, REDACTED
from tests.test_config import FREE_FORM_SAMPLES, SAMPLE_VALUES, sample_files, write

KBRIDGE = str(Path(sys.executable).with_name("kbridge"))


def kbridge(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script with no KBRIDGE__* variables, so only the given files count."""
    return subprocess.run([KBRIDGE, *args], capture_output=True, text=True, check=False, env={})


def every_option_set(tmp_path: Path) -> Path:
    """A file giving every option a non-default value and one entry in each free-form section.

    ``signing_key`` is left out: it is secret, so its printed form must not load back (tested below).
    """
    files = sample_files(tmp_path)
    by_section: dict[str, list[str]] = {}
    for option in OPTIONS:
        if option.key != "signing_key":
            text = files.get(SAMPLE_VALUES[option.key], SAMPLE_VALUES[option.key])
            by_section.setdefault(option.section, []).append(f"{option.key} = {text}")
    for section, (key, in_file, _, _) in FREE_FORM_SAMPLES.items():
        by_section[section] = [f"{key} = {in_file}"]
    text = "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in by_section.items())
    return write(tmp_path, text, "every-option.cfg")


def test_printed_settings_load_back_to_the_same_settings(tmp_path: Path) -> None:
    original = every_option_set(tmp_path)
    printed = kbridge("config", "--config", str(original))
    assert printed.returncode == 0, printed.stderr
    copy = write(tmp_path, printed.stdout, "printed.cfg")
    reloaded = kbridge("config", "--config", str(copy), "--json")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout == kbridge("config", "--config", str(original), "--json").stdout
    assert kbridge("config", "--config", str(copy)).stdout.splitlines()[1:] == printed.stdout.splitlines()[1:]


def test_printed_defaults_load_back_and_unset_options_stay_unset(tmp_path: Path) -> None:
    printed = kbridge("config").stdout
    assert "worker_service_account_name =\n" in printed, "None is printed as empty, never as null"
    copy = write(tmp_path, printed, "printed.cfg")
    reloaded = kbridge("config", "--config", str(copy), "--json")
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout == kbridge("config", "--json").stdout


def test_printed_secrets_are_redacted_and_refuse_to_load_back(tmp_path: Path) -> None:
    secret = "s" * 40
    original = write(tmp_path, f"[bridge]\nsigning_key = {secret}\nredis_url = redis://:pa/ss@redis:6380/0\n")
    printed = kbridge("config", "--config", str(original))
    assert printed.returncode == 0, printed.stderr
    assert secret not in printed.stdout
    assert "pa/ss" not in printed.stdout
    assert f"signing_key = {REDACTED}" in printed.stdout
    reloaded = kbridge("config", "--config", str(write(tmp_path, printed.stdout, "printed.cfg")))
    assert reloaded.returncode == 2
    assert "Traceback" not in reloaded.stderr
    for option in ("[bridge] signing_key = ", "[bridge] redis_url = "):
        assert option in reloaded.stderr
    assert reloaded.stderr.count("put the real one back") == 2


def test_output_cut_short_by_the_reader_ends_quietly() -> None:
    """`kbridge config | head -1`: the reader is gone before the command writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [KBRIDGE, "config", "--print-defaults"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            env={},
        )
    finally:
        os.close(write_end)
    assert result.returncode == cli.EXIT_BROKEN_PIPE
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


@pytest.mark.parametrize(
    ("entry_point", "advice"),
    [
        (
            "kbridge_test_no_such_module.cli:main [sim]",
            "the module 'kbridge_test_no_such_module' is not installed; "
            "install it with: pip install 'kube-redis-bridge[sim]'",
        ),
        (
            "kbridge_test_no_such_module.cli:main",
            "the module 'kbridge_test_no_such_module' is not installed; install the package",
        ),
    ],
)
def test_a_command_whose_extra_is_missing_says_what_to_install(
    entry_point: str,
    advice: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = EntryPoint(name="needs-extra", value=entry_point, group=cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "_commands", lambda: {"needs-extra": missing})
    assert cli.main(["needs-extra"]) == cli.EXIT_USAGE
    assert f"kbridge needs-extra: unavailable, {advice}" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0, "the listing still works and marks the command unavailable"
    assert f"needs-extra  (unavailable: {advice}" in capsys.readouterr().out
