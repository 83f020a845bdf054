"""The reconciliation files' jobs without IO: the work runs on the files thread, one job per
facility and at most ``max_jobs`` at once (``FILE_JOB_BUSY``, retryable), and a facility's
place is held until its thread work has ended, even when its message was given up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cardsvc.errors import RateLimited
from cardsvc.national.filejobs import FileJobBusy, FileJobs

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_work_runs_off_the_event_loop() -> None:
    jobs = FileJobs()
    async with jobs.job("H1") as job:
        ran_on = await job.run(threading.get_ident)
    assert ran_on != threading.get_ident()


async def test_one_job_per_facility_and_at_most_max_jobs() -> None:
    jobs = FileJobs(max_jobs=2)
    async with jobs.job("H1"):
        with pytest.raises(FileJobBusy) as busy:
            async with jobs.job("H1"):
                pass
        assert busy.value.code == "FILE_JOB_BUSY"
        assert isinstance(busy.value, RateLimited)  # not stored: the HIS sends it again
        assert "same msgid" in busy.value.message
        async with jobs.job("H2"):
            with pytest.raises(FileJobBusy):
                async with jobs.job("H3"):
                    pass
    async with jobs.job("H1"), jobs.job("H3"):  # each place given back
        pass


async def test_a_refused_job_is_refused_for_what_it_is() -> None:
    jobs = FileJobs()
    with pytest.raises(ValueError, match="bad file"):
        async with jobs.job("H1") as job:
            await job.run(_fail)
    async with jobs.job("H1"):  # the place was given back
        pass


def _fail() -> None:
    raise ValueError("bad file")


async def test_a_given_up_job_holds_its_place_until_its_work_ends() -> None:
    jobs = FileJobs()
    started, release = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(5)
        return "done"

    async def message() -> str:
        async with jobs.job("H1") as job:
            return await job.run(work)

    task = asyncio.create_task(message())
    await asyncio.to_thread(started.wait, 5)
    task.cancel()  # the message timed out
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(FileJobBusy):  # its work still runs: a retry waits
        async with jobs.job("H1"):
            pass
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        try:
            async with jobs.job("H1"):
                break
        except FileJobBusy:
            continue
    else:
        pytest.fail("the facility's place was never given back")
