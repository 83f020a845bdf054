"""Python's garbage collector as the operator sees it: every collection's pause, by
generation (``cardsvc_gc_pause_seconds``). A full (generation 2) collection walks every
object the worker holds and stops its event loop meanwhile, every request of it waiting.

The collector's callback only notes each pause (``flush`` hands them to the histogram,
from the worker's monitoring loop and before every scrape): it must never call into
prometheus-client itself. In multiprocess mode its values share one non-reentrant lock,
held while a labelled child is created, which allocates and so may collect; a callback
that observed then waited for that lock forever, freezing the worker.

``freeze_startup_objects`` moves what start-up created (modules, settings, the policy
parameters, the routes) out of the collector's sight (``gc.freeze``): those live as long as
the worker, and full collections then walk only what requests made.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

from cardsvc.ops import metrics

_started: dict[int, float] = {}
# Pauses not yet observed: (generation, seconds). Bounded, in case nothing flushes.
_pending: deque[tuple[int, float]] = deque(maxlen=10_000)


def _observe(phase: str, info: dict[str, Any]) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
        return
    began = _started.pop(generation, None)
    if began is not None:
        _pending.append((generation, time.perf_counter() - began))


def flush() -> None:
    """Hand the pauses noted since the last flush to the histogram (never from inside a
    collection)."""
    for _ in range(len(_pending)):  # those noted so far: observing may collect again
        generation, seconds = _pending.popleft()
        metrics.GC_PAUSE.labels(str(generation)).observe(seconds)


_watchers = 0  # apps in this process that want the pauses observed


def watch() -> None:
    """Observe every collection's pause, until as many ``unwatch`` calls."""
    global _watchers
    _watchers += 1
    if _observe not in gc.callbacks:
        gc.callbacks.append(_observe)


def unwatch() -> None:
    global _watchers
    _watchers = max(0, _watchers - 1)
    if _watchers == 0 and _observe in gc.callbacks:
        gc.callbacks.remove(_observe)


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()
