"""The group-commit batcher: batches form from what gathered while the previous one ran,
keys keep two jobs apart, one job's error stays its own, a failed batch fails each job."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog

from cardsvc.batching import Batcher, BatcherFull, Outcome

pytestmark = pytest.mark.asyncio


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, jobs: Sequence[str]) -> Sequence[Outcome[str]]:
        self.batches.append(list(jobs))
        await self.gate.wait()
        return [ValueError(j) if j.startswith("bad") else j.upper() for j in jobs]


async def test_a_lone_job_runs_at_once_and_later_ones_gather_behind_the_batch_in_flight() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=3)
    rec.gate.clear()
    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(batcher.submit(j)) for j in "bcdef"]
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == "A"
    assert [await t for t in rest] == list("BCDEF")
    assert rec.batches == [["a"], ["b", "c", "d"], ["e", "f"]]
    await batcher.close()


async def test_jobs_with_a_common_key_never_share_a_batch_and_keep_their_order() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=10, keys=lambda j: (j[0],))
    rec.gate.clear()
    blocker = asyncio.create_task(batcher.submit("z"))
    await asyncio.sleep(0.01)
    jobs = [asyncio.create_task(batcher.submit(j)) for j in ("p1", "q1", "p2", "p3", "q2")]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await blocker
    assert [await t for t in jobs] == ["P1", "Q1", "P2", "P3", "Q2"]
    assert rec.batches[1:] == [["p1", "q1"], ["p2", "q2"], ["p3"]]
    await batcher.close()


async def test_a_refused_job_answers_its_own_error_and_the_others_their_results() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=10)
    rec.gate.clear()
    blocker = asyncio.create_task(batcher.submit("x"))
    await asyncio.sleep(0.01)
    good, bad = batcher.submit("ok"), batcher.submit("bad1")
    rec.gate.set()
    results = await asyncio.gather(good, bad, blocker, return_exceptions=True)
    assert results[0] == "OK" and isinstance(results[1], ValueError) and results[2] == "X"
    await batcher.close()


async def test_a_batch_that_fails_fails_each_of_its_jobs_and_the_next_batch_runs() -> None:
    calls = 0

    async def run(jobs: Sequence[int]) -> Sequence[Outcome[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return [j * 2 for j in jobs]

    batcher: Batcher[int, int] = Batcher("t", run, max_size=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await batcher.submit(5) == 10
    await batcher.close()


async def test_a_caller_that_goes_away_leaves_its_job_to_complete() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=10)
    rec.gate.clear()
    waiting = asyncio.create_task(batcher.submit("gone"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    rec.gate.set()
    assert await batcher.submit("next") == "NEXT"
    assert rec.batches == [["gone"], ["next"]]
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit("late")


async def test_a_job_whose_caller_went_away_before_its_batch_never_runs() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=10)
    rec.gate.clear()
    blocker = asyncio.create_task(batcher.submit("first"))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(batcher.submit("timed-out"))
    kept = asyncio.create_task(batcher.submit("kept"))
    await asyncio.sleep(0.01)
    queued.cancel()  # its request timed out while the first batch was in flight
    await asyncio.sleep(0)
    rec.gate.set()
    assert await blocker == "FIRST" and await kept == "KEPT"
    assert rec.batches == [["first"], ["kept"]]
    await batcher.close()


async def test_a_full_queue_refuses_at_once() -> None:
    rec = Recorder()
    batcher: Batcher[str, str] = Batcher("t", rec.run, max_size=2, max_queue=3)
    rec.gate.clear()
    running = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(batcher.submit(j)) for j in "bcd"]
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherFull):
        await batcher.submit("e")
    rec.gate.set()
    assert [await t for t in [running, *waiting]] == list("ABCD")
    await batcher.close()


async def test_the_loop_does_not_log_as_its_first_caller() -> None:
    seen: list[object] = []

    async def run(jobs: Sequence[str]) -> Sequence[Outcome[str]]:
        seen.append(structlog.contextvars.get_contextvars().get("request_id"))
        return list(jobs)

    batcher: Batcher[str, str] = Batcher("t", run, max_size=2)
    structlog.contextvars.bind_contextvars(request_id="first-caller")
    try:
        assert await batcher.submit("x") == "x"
    finally:
        structlog.contextvars.clear_contextvars()
    assert seen == [None]
    await batcher.close()
