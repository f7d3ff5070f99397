"""The worker pool: identical jobs run once, a slow job answers Busy and still finishes, errors pass through."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cnnlab.app.dashboard.jobs import Busy, Jobs


def test_identical_jobs_in_flight_run_once(run_async):
    jobs, gate, calls = Jobs(workers=2), threading.Event(), []

    def work():
        calls.append(1)
        gate.wait(5)
        return 42

    async def both():
        first = asyncio.ensure_future(jobs.run("k", work, timeout=5))
        second = asyncio.ensure_future(jobs.run("k", work, timeout=5))
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await second

    assert run_async(both()) == (42, 42) and calls == [1]
    assert run_async(jobs.run("k", lambda: 7)) == 7  # once done, the key is free again
    jobs.close()


def test_a_slow_job_answers_busy_and_its_result_is_kept_for_the_retry(run_async):
    jobs, gate = Jobs(workers=1), threading.Event()
    with pytest.raises(Busy, match="still computing after 0.05 s"):
        run_async(jobs.run("slow", lambda: gate.wait(5) and "done", timeout=0.05))
    fut = jobs.submit("slow", lambda: "a second job")  # still in flight: the retry joins it
    gate.set()
    assert fut.result(5) == "done"
    jobs.close()


def test_errors_of_a_job_reach_the_request(run_async):
    jobs = Jobs()

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_async(jobs.run("x", boom))
    jobs.close()
