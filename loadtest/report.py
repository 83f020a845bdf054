"""The report: ``report.json`` with every figure and the machine, and ``report.png``.

The chart has latency percentiles (from intended start) against the offered rate, and the
achieved rate against the offered rate, one point per step.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def latency_ms(hist: HdrHistogram) -> dict[str, float | int]:
    """p50, p90, p99, p99.9, max and mean in milliseconds, and the count."""
    out: dict[str, float | int] = {"count": hist.get_total_count()}
    if hist.get_total_count() == 0:
        return out
    for name, pct in PERCENTILES:
        out[name] = round(hist.get_value_at_percentile(pct) / 1000, 3)
    out["max"] = round(hist.get_max_value() / 1000, 3)
    out["mean"] = round(hist.get_mean_value() / 1000, 3)
    return out


def machine(workers: int, postgres_version: str | None, service_root: Path) -> dict[str, Any]:
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name", ":"),
        "cores": os.cpu_count(),
        "memory_gib": round(
            int(_proc_field("/proc/meminfo", "MemTotal", ":").split()[0] or 0) / 1024 / 1024, 1
        ),
        "kernel": platform.release(),
        "os": _proc_field("/etc/os-release", "PRETTY_NAME", "=").strip('"'),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "cardsvc_workers": workers,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        # The service measured: its tree's commit (none for an exported tree) and its
        # uncommitted edits (others may be tuning the service in the same checkout).
        "service_root": str(service_root),
        "git_commit": _git(["rev-parse", "--short", "HEAD"], service_root) or None,
        "service_files_modified": _git(
            ["status", "--porcelain", "--", "cardsvc", "hsm_stub", "schema"], service_root
        ).splitlines(),
    }


def _proc_field(path: str, name: str, sep: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return line.split(sep, 1)[1].strip()
    except OSError:
        pass
    return ""


def _git(args: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - git with our own arguments
            ["git", *args],  # noqa: S607 - developer tooling
            capture_output=True,
            text=True,
            check=False,
            cwd=cwd,
        )
    except OSError:
        return ""
    if out.returncode != 0:
        return ""
    return out.stdout.strip()


def write(run_dir: Path, report: dict[str, Any]) -> Path:
    """``report.json`` (and ``report.png`` when there are steps); returns the JSON path."""
    steps = report.get("steps") or []
    if steps:
        chart(
            run_dir / "report.png", steps, str(report.get("title", "")), report.get("p99_limit_ms")
        )
        report["chart"] = str(run_dir / "report.png")
    path = run_dir / "report.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    return path


def chart(
    path: Path, steps: list[dict[str, Any]], title: str, p99_limit_ms: float | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [s["offered_rate"] for s in steps]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, _ in (*PERCENTILES, ("max", 100.0)):
        points = [(o, s["latency_ms"].get(name)) for o, s in zip(offered, steps, strict=True)]
        points = [(o, v) for o, v in points if v is not None]
        if points:
            lat.plot(*zip(*points, strict=True), marker="o", label=name.replace("_", "."))
    if p99_limit_ms:
        lat.axhline(p99_limit_ms, color="red", linestyle=":", label="p99 limit")
    lat.set_yscale("log")
    lat.set_xlabel("offered rate (operations/s)")
    lat.set_ylabel("latency from intended start (ms)")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend()
    thr.plot(offered, offered, linestyle="--", color="grey", label="offered")
    thr.plot(offered, [s["achieved_rate"] for s in steps], marker="o", label="achieved (ok/s)")
    thr.plot(offered, [s["settlements_per_s"] for s in steps], marker="s", label="settlements/s")
    thr.set_xlabel("offered rate (operations/s)")
    thr.set_ylabel("throughput (/s)")
    thr.grid(True, alpha=0.3)
    thr.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
