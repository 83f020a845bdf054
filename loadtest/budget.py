"""CPU per operation, and the ratio two cores could reach at that cost.

A step's CPU seconds per completed operation, by process group, say where the machine's
time went. pgbench's CPU per transaction (its client and the server, measured the same
way) says what the same cores do for the baseline. From the two follows the highest
ratio the run could reach with every core busy: a ceiling, since a p99 limit is met
well below full use. The ceiling without the generator's share shows what a free load
generator would leave.
"""

from __future__ import annotations

from typing import Any


def per_operation_ms(cpu: dict[str, Any], operations: int) -> dict[str, float] | None:
    """CPU milliseconds per completed operation, by the sampler's process groups and in
    total (None: none done). ``machine`` is the whole machine, not a group of ours."""
    if operations <= 0:
        return None
    out = {
        g: round(v["cpu_seconds"] * 1000 / operations, 3) for g, v in cpu.items() if g != "machine"
    }
    out["total"] = round(sum(out.values()), 3)
    return out


def baseline_ms(server_cpu_seconds: float, client_cpu_seconds: float, transactions: int) -> float:
    """CPU milliseconds per pgbench transaction, server and client."""
    return round((server_cpu_seconds + client_cpu_seconds) * 1000 / max(1, transactions), 3)


def ceiling(per_op: dict[str, float], cores: int, tps: float) -> dict[str, float]:
    """The ratio at which this CPU per operation fills every core, with and without the
    generator's share."""
    without_generator = per_op["total"] - per_op.get("generators", 0.0)
    return {
        "ratio_at_full_cpu": round(cores * 1000 / per_op["total"] / tps, 4),
        "ratio_at_full_cpu_without_generator": round(cores * 1000 / without_generator / tps, 4),
    }


def cheapest(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step with the least CPU per operation (the most generous ceiling)."""
    costed = [s for s in steps if s.get("cpu_ms_per_operation")]
    return min(costed, key=lambda s: s["cpu_ms_per_operation"]["total"], default=None)
