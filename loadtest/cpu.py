"""CPU time of the processes under test, from /proc, sampled around each step.

Tells whether the service, PostgreSQL or hsm_stub used the machine's cores during a step:
``utilisation`` is CPU seconds per wall second (2.0 = both cores of this machine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since it was listed
        # utime, stime, cutime, cstime: fields 14-17 of stat (11-14 after the name).
        total += sum(int(v) for v in fields[11:15])
    return total / _TICK


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, stolen) jiffies of all cores since boot, from /proc/stat. Stolen time
    (the hypervisor ran someone else's machine on our cores) counts as busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    return float(sum(values) - idle), float(sum(values)), float(steal)


class Sampler:
    """CPU seconds of named process groups between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[str, float] = {}
        self._machine = (0.0, 0.0, 0.0)
        self._wall = 0.0

    def start(self) -> None:
        self._before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self._machine = machine_busy()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, dict[str, float]]:
        wall = max(1e-9, time.perf_counter() - self._wall)
        out = {}
        for name, pids in self.groups.items():
            used = cpu_seconds(pids) - self._before.get(name, 0.0)
            out[name] = {"cpu_seconds": round(used, 2), "utilisation": round(used / wall, 2)}
        busy, total, steal = machine_busy()
        elapsed = max(1.0, total - self._machine[1])
        share = (busy - self._machine[0]) / elapsed
        stolen = (steal - self._machine[2]) / elapsed
        cores = os.cpu_count() or 1
        ours = sum(v["utilisation"] for v in out.values())
        out["machine"] = {
            "utilisation": round(share * cores, 2),
            "cores": cores,
            # Other engineers' tests share this machine: their CPU is not the service's.
            "other_processes": round(max(0.0, (share - stolen) * cores - ours), 2),
            # And the hypervisor may give our cores to other machines for a while.
            "stolen": round(stolen * cores, 2),
        }
        return out
