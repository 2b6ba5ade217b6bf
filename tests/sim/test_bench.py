"""The simulator benchmark runs end to end with tiny numbers and reports every row it promises."""

from __future__ import annotations

import re

import pytest

from bridge.sim import bench

NUMBER = r"\s+\d+\.\d\d"


def test_bench_reports_every_verb_and_the_pod_lifecycle(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--calls", "4", "--pods", "3", "--run-seconds", "0"]) == 0

    report = capsys.readouterr().out
    for verb in ("create", "get", "list", "patch", "log", "delete"):
        assert re.search(rf"^{verb}\s+4{NUMBER * 4}$", report, re.MULTILINE), report
    assert re.search(r"^creates/s from one client thread: \d+$", report, re.MULTILINE)
    for phase in ("Running", "Succeeded"):
        assert re.search(rf"^create→{phase}\s+3{NUMBER * 4}$", report, re.MULTILINE), report
    assert "did not succeed" not in report


def test_percentile_is_nearest_rank() -> None:
    samples = [float(value) for value in range(1, 101)]

    assert [bench.percentile(samples, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50.0, 90.0, 99.0, 100.0]
    assert bench.percentile([7.0], 0.99) == 7.0


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--pods", "0"])

    assert exit_info.value.code == 2
    assert "--pods must be at least 1" in capsys.readouterr().err
