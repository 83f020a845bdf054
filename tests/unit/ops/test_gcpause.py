"""Garbage-collector pauses are observed without ever calling into prometheus-client from
inside a collection: in multiprocess mode (several workers) its values share one
non-reentrant lock, held while a labelled child is created (which allocates, and so may
collect). Observing from the collector's callback then waited for that lock forever: a
worker froze, its requests timed out, and it never exited (found by the load harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_WORKER = textwrap.dedent(
    """
    import gc
    from cardsvc.ops import gcpause, metrics

    gcpause.watch()
    gc.set_threshold(1, 1, 1)  # collect at (almost) every allocation
    for i in range(3000):  # new labelled children: each takes the values' lock
        metrics.BATCH_SIZE.labels(f"batcher-{i}").observe(1)
    gcpause.flush()
    print("done")
    """
)


def test_a_collection_while_a_metric_is_being_created_does_not_freeze_the_worker(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WORKER],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker froze: a collection observed inside the lock") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"


def test_pauses_observed_meanwhile_reach_the_histogram_at_the_next_flush() -> None:
    import gc

    from cardsvc.ops import gcpause, metrics

    def full_collections() -> float:
        return sum(
            s.value
            for m in metrics.GC_PAUSE.collect()
            for s in m.samples
            if s.name.endswith("_count") and s.labels.get("generation") == "2"
        )

    gcpause.watch()
    # No automatic collection in between, and none observed earlier still waiting: the
    # count moves by exactly the one collection made here.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gcpause.flush()
        before = full_collections()
        gc.collect()
        gcpause.flush()
        assert full_collections() == before + 1
    finally:
        if was_enabled:
            gc.enable()
        gcpause.unwatch()
