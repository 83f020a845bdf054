"""Group commit inside one worker: requests hand their work to a batcher and wait; one loop
runs what has gathered while the previous batch was in flight as one batch.

There is no timer: an idle batcher runs a lone job at once (a batch of one), and under load
the batch grows to whatever arrived during the previous round trip, up to ``max_size``. Jobs
that must not share a batch (two settlements of one person, one nonce twice) name the same
key; the later one waits, in order, for the next batch.

``run`` gets the batch and returns one outcome per job, in order: a value or the exception
that job answers with, so one refused job does not disturb the others. If ``run`` itself
raises (the database went away mid-batch), every job of the batch gets that error. A caller
that stops waiting (its request timed out, its client went away) before a batch took its
job takes the job back: it never runs. Once its batch is in flight, the batch completes as
if the caller were still there. At most ``max_queue`` jobs wait: beyond, ``submit`` raises
``BatcherFull`` at once.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeAlias, TypeVar

import structlog

from cardsvc.ops import metrics

log = structlog.get_logger(__name__)

J = TypeVar("J")
R = TypeVar("R")

Outcome: TypeAlias = R | BaseException


class BatcherFull(Exception):
    """More jobs are waiting than the batcher takes (``max_queue``): the caller answers
    at once that the service is busy instead of adding to a queue it cannot drain."""


class _Waiting(Generic[J, R]):
    __slots__ = ("abandoned", "future", "job", "keys")

    def __init__(self, job: J, keys: tuple[Hashable, ...], future: asyncio.Future[R]) -> None:
        self.job, self.keys, self.future = job, keys, future
        self.abandoned = False  # its caller stopped waiting before a batch took it


class Batcher(Generic[J, R]):
    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[J]], Awaitable[Sequence[Outcome[R]]]],
        *,
        max_size: int,
        max_queue: int | None = None,
        keys: Callable[[J], Iterable[Hashable]] = lambda _job: (),
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.name, self._run, self._max, self._keys = name, run, max_size, keys
        self._max_queue = max_queue if max_queue is not None else 16 * max_size
        self._queue: deque[_Waiting[J, R]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, job: J) -> R:
        """Run ``job`` in the next batch that can take it; its outcome, raised if an error."""
        if self._closed:
            raise RuntimeError(f"the {self.name} batcher is closed")
        if len(self._queue) >= self._max_queue:
            raise BatcherFull(f"{len(self._queue)} jobs already wait for the {self.name} batcher")
        loop = asyncio.get_running_loop()
        waiting: _Waiting[J, R] = _Waiting(job, tuple(self._keys(job)), loop.create_future())
        self._queue.append(waiting)
        self._wake.set()
        if self._task is None:
            # A context of its own: not the first caller's (its request id in every log
            # line of the loop).
            self._task = loop.create_task(
                self._loop(), name=f"batcher-{self.name}", context=contextvars.Context()
            )
        try:
            # Shielded: a caller cancelled once its batch is in flight leaves its job to
            # complete with it (the outcome is then unknown to the caller: a retry finds it).
            return await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            waiting.abandoned = True  # not taken yet: it never runs
            raise

    async def close(self) -> None:
        """Stop after the jobs already submitted (call when no request can submit more)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _take(self) -> list[_Waiting[J, R]]:
        """The next batch: queued jobs in order, skipping (for later) any whose key is
        already taken, up to ``max_size``."""
        batch: list[_Waiting[J, R]] = []
        taken: set[Hashable] = set()
        later: deque[_Waiting[J, R]] = deque()
        while self._queue and len(batch) < self._max:
            waiting = self._queue.popleft()
            if waiting.abandoned:
                waiting.future.cancel()
                continue
            if taken.intersection(waiting.keys):
                later.append(waiting)
                continue
            taken.update(waiting.keys)
            batch.append(waiting)
        later.extend(self._queue)
        self._queue = later
        return batch

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
            try:
                outcomes = await self._run([w.job for w in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(
                        f"{self.name}: {len(outcomes)} outcomes for {len(batch)} jobs"
                    )
            except asyncio.CancelledError:
                for waiting in batch:
                    _settle(waiting.future, asyncio.CancelledError())
                raise
            except Exception as exc:  # the whole batch failed: each job answers with it
                log.warning(
                    "batch_failed", batcher=self.name, size=len(batch), error=type(exc).__name__
                )
                outcomes = [exc] * len(batch)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                _settle(waiting.future, outcome)


def _settle(future: asyncio.Future[R], outcome: Outcome[R]) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # retrieved: a caller that went away leaves no "never retrieved"
    else:
        future.set_result(outcome)
