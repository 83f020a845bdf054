"""The reconciliation files' work (9101, 3202), off the event loop, one job per facility.

Reading an uploaded file (up to 200 000 lines) and building a result takes seconds of CPU:
done on the worker's event loop, it would hold up every other request of that worker (the
settlement pipeline included). Each worker has one thread for this work (Python code does
not run faster on two threads), and takes at most ``MAX_JOBS`` file messages at once and
one per facility: another is refused at once with ``FILE_JOB_BUSY``, an answer that is not
stored, so the HIS sends the same message (same msgid) again a little later.

A job holds its facility's place until its thread work has ended, even when the message
was given up (a timeout): a retry then meets ``FILE_JOB_BUSY`` rather than a second copy of
the same work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from cardsvc.errors import RateLimited

T = TypeVar("T")

MAX_JOBS = 4  # file messages a worker takes at once (one per facility)
RETRY_AFTER = 5.0  # seconds, as the refusal suggests


class FileJobBusy(RateLimited):
    """A file message that must wait its turn (retryable: not stored)."""

    default_code = "FILE_JOB_BUSY"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=RETRY_AFTER)


class Job:
    """One facility's file message: ``run`` does its CPU work on the files thread."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._last: concurrent.futures.Future[Any] | None = None

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        future = self._executor.submit(work, *args)
        self._last = future
        # Given up (cancelled) before the thread took it: the work is dropped.
        return await asyncio.wrap_future(future)

    def when_done(self, release: Callable[[], None]) -> None:
        """Calls ``release`` on the event loop once no work of this job is left."""
        last = self._last
        if last is None or last.done():
            release()
            return
        loop = asyncio.get_running_loop()
        last.add_done_callback(lambda _: loop.call_soon_threadsafe(release))


class FileJobs:
    """Per worker: the files thread and the facilities with a job running."""

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="national-files"
        )
        self._max = max_jobs
        self._running: set[str] = set()

    @contextlib.asynccontextmanager
    async def job(self, fixmedins_code: str) -> AsyncIterator[Job]:
        """The facility's job, or ``FileJobBusy`` when it has one running or the worker
        has ``max_jobs``."""
        if fixmedins_code in self._running:
            raise FileJobBusy(
                "a file message of this facility (9101 or 3202) is still being worked on:"
                " send this message again, with the same msgid, in a few seconds"
            )
        if len(self._running) >= self._max:
            raise FileJobBusy(
                "the service is working on other facilities' files: send this message"
                " again, with the same msgid, in a few seconds"
            )
        self._running.add(fixmedins_code)
        job = Job(self._executor)
        try:
            yield job
        finally:
            job.when_done(lambda: self._running.discard(fixmedins_code))
