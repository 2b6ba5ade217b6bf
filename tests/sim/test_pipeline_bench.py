"""The pipeline benchmark runs end to end with tiny numbers (it reports; it never gates)."""

from __future__ import annotations

import json

import pytest

from bridge.sim import pipeline_bench


@pytest.mark.timeout(120)
def test_a_tiny_pipeline_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--tasks", "20", "--paced-tasks", "10", "--profiles", "instant", "--dispatchers", "1", "--json"]
    assert pipeline_bench.main(argv) == 0

    (result,) = json.loads(capsys.readouterr().out)
    assert (result["profile"], result["dispatchers"], result["tasks"], result["paced_tasks"]) == (
        "instant",
        1,
        20,
        10,
    )
    assert result["pods_per_second"] > 0
    for figure in ("created", "synced", "sim_create"):
        assert 0 < result[f"{figure}_p50_ms"] <= result[f"{figure}_p99_ms"], figure


def test_the_table_names_the_scaling_ratio() -> None:
    def case(dispatchers: int, rate: float) -> pipeline_bench.CaseResult:
        return pipeline_bench.CaseResult("instant", dispatchers, 10, rate, 1.0, 5, 2.0, 1, 2, 1, 2, 1, 2)

    table = pipeline_bench.render([case(1, 100.0), case(4, 250.0)])
    assert "| instant | 4 | 10 | 250 |" in table
    assert "instant: 4 dispatchers reach 2.50x the pods/s of one." in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "0"], "must be whole numbers >= 1"),
        (["--dispatchers", "1,x"], "must be whole numbers >= 1"),
        (["--profiles", "instant,warp"], "unknown profile(s) warp"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pipeline_bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
