"""How a step run's figures are read: the strict knee, the highest step within the limit,
the ratios to pgbench."""

from __future__ import annotations

from typing import Any

from loadtest.loadrun import _highest_within, _knee, _ratio


def step(rate: float, p99: float, achieved: float | None = None, errors: int = 0) -> dict[str, Any]:
    achieved = rate if achieved is None else achieved
    return {
        "offered_rate": rate,
        "achieved_rate": achieved,
        "settlements_per_s": achieved,
        "error_count": errors,
        "errors": {},
        "latency_ms": {"p99": p99},
    }


def test_a_stall_in_one_step_ends_the_knee_but_not_the_highest_within_limit():
    steps = [
        step(100, 20),
        step(150, 80),
        step(200, 40),
        step(250, 45, achieved=200),
        step(300, 900),
    ]
    within = _highest_within(steps, 50)
    assert within is not None and within["rate"] == 200  # 250 did not keep up
    knee = _knee(steps[0], "p99 80 ms > 50 ms at 150/s", within)
    assert knee["rate"] == 100 and knee["highest_within_limit"]["rate"] == 200
    ratio = _ratio(1000.0, steps[0], steps, within)
    assert ratio["ratio_at_knee"] == 0.1
    assert ratio["ratio_at_highest_within_limit"] == 0.2
    assert ratio["ratio_at_max"] == 0.3  # 300/s achieved, whatever its latency


def test_errors_or_no_step_within_limit():
    assert _highest_within([step(100, 20, errors=1), step(150, 60)], 50) is None
    assert _highest_within([step(100, 20)], None) is None
