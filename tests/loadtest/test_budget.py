"""CPU per operation and the ratio ceiling it implies."""

from __future__ import annotations

from typing import Any

from loadtest import budget


def cpu(**seconds: float) -> dict[str, Any]:
    return {g: {"cpu_seconds": v, "utilisation": 0.0} for g, v in seconds.items()} | {
        "machine": {"cores": 2}
    }


def test_per_operation_splits_cpu_by_group():
    per_op = budget.per_operation_ms(
        cpu(cardsvc=2.0, postgres=3.0, hsm_stub=0.0, generators=1.0), 1000
    )
    assert per_op == {
        "cardsvc": 2.0,
        "postgres": 3.0,
        "hsm_stub": 0.0,
        "generators": 1.0,
        "total": 6.0,
    }
    assert budget.per_operation_ms(cpu(cardsvc=1.0), 0) is None


def test_ceiling_is_the_ratio_that_fills_every_core():
    per_op = {"cardsvc": 2.0, "postgres": 3.0, "generators": 1.0, "total": 6.0}
    # 2 cores / 6 ms = 333.3 operations/s; / 1000 tps
    out = budget.ceiling(per_op, 2, 1000.0)
    assert out["ratio_at_full_cpu"] == 0.3333
    assert out["ratio_at_full_cpu_without_generator"] == 0.4  # 2 cores / 5 ms


def test_baseline_counts_server_and_client():
    assert budget.baseline_ms(1.5, 0.5, 2000) == 1.0


def test_cheapest_step_is_the_one_with_least_cpu_per_operation():
    steps: list[dict[str, Any]] = [
        {"offered_rate": 100, "cpu_ms_per_operation": {"total": 7.0}},
        {"offered_rate": 200, "cpu_ms_per_operation": {"total": 5.0}},
        {"offered_rate": 300, "cpu_ms_per_operation": None},
    ]
    assert budget.cheapest(steps)["offered_rate"] == 200
    assert budget.cheapest([steps[2]]) is None
