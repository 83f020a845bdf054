"""The load harness end to end on tiny data: ``python -m loadtest smoke``.

Runs the real command (hsm_stub and cardsvc as child processes, the session's PostgreSQL
server, pgbench) for a few seconds of load, then reads its report. Nothing here depends on
speed: the assertions are about the integrity checks and that every figure is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cardsvc.devenv.pgcluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
PERCENTILES = {"p50", "p90", "p99", "p99_9", "max"}


def _report(output: str) -> dict:
    line = next(ln for ln in output.splitlines() if ln.startswith("report: "))
    return json.loads(Path(line.removeprefix("report: ")).read_text())


def _check_step(step: dict) -> None:
    assert PERCENTILES <= step["latency_ms"].keys()
    assert step["ok"] > 0
    assert step["error_count"] == 0, step["errors"]
    for key in ("offered_rate", "achieved_rate", "settlements_per_s", "send_lag_ms", "cpu"):
        assert key in step
    assert {"cardsvc", "postgres", "generators", "machine"} <= step["cpu"].keys()
    assert step["cpu_ms_per_operation"]["total"] > 0


def test_smoke_run_reports_every_figure_and_passes_integrity(
    pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    pg_cluster.create_database("loadtest_smoke")
    command = [sys.executable, "-m", "loadtest", "smoke", "--var", str(tmp_path / "state")]
    command += ["--database-url", pg_cluster.url("loadtest_smoke")]
    command += ["--workers", "1", "--seconds", "2"]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = _report(result.stdout)

    assert report["ok"] is True
    assert report["integrity"]["ok"] is True, report["integrity"]
    assert report["integrity"]["settlements"]["acknowledged"] > 0
    assert report["integrity"]["ledger_proof"]["ok"] is True
    assert report["mix"]["integrity"]["ok"] is True, report["mix"]["integrity"]
    assert report["day"]["integrity"]["ok"] is True, report["day"]["integrity"]

    _check_step(report["steps"][0])
    _check_step(report["mix"]["steps"][0])
    assert report["steps"][0]["ok_by_operation"].keys() == {"settle"}
    assert report["pgbench"]["tps"] > 0
    assert report["pgbench"]["client_cpu_seconds"] > 0
    assert report["ratio"]["ratio_at_max"] > 0
    for key in ("cpu_model", "cores", "memory_gib", "kernel", "python", "postgresql"):
        assert report["machine"][key]
    assert report["command"].startswith("python -m loadtest smoke")
    assert Path(report["chart"]).stat().st_size > 0

    timing = report["day"]["timing"]
    assert timing["ok"] is True, timing
    assert all(r["stmt_rslt"] == "0" for r in timing["reconciliation"])
    assert timing["clearing"]["api"]["settlements_cleared"] > 0
