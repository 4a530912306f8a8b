"""transport/tasks.py: a background task that raises is logged in one line (the
traceback at debug) and restarted with backoff, or handed to the party that decides
(the hub stops). Before it, such a task ended unseen: asyncio says "Task exception was
never retrieved" only when the task is collected, if ever."""

import asyncio
import logging

import pytest

from transport import tasks

FAST = (0.01, 0.04)  # backoff in these tests


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_keep_logs_each_failure_in_one_line_and_restarts_with_backoff(caplog):
    calls = []

    async def work():
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 3:
            raise RuntimeError("boom %d\nsecond line" % len(calls))
        return "done"

    async def main():
        return await tasks.keep("worker", work, backoff=FAST)

    with caplog.at_level(logging.DEBUG, logger="transport.tasks"):
        assert run(main()) == "done"
    assert len(calls) == 4
    waits = [b - a for a, b in zip(calls, calls[1:])]
    assert waits[0] >= 0.01 and waits[1] >= 0.02 and waits[2] >= 0.04  # doubling, capped
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "task worker failed: RuntimeError: boom %d second line; restarting in %.1f s" % (n, wait)
        for n, wait in ((1, 0.01), (2, 0.02), (3, 0.04))
    ]
    assert all(r.exc_info is None for r in errors)  # one line each: no traceback at error
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 3 and all(r.exc_info for r in debug)  # the traceback, at debug


def test_keep_is_stopped_by_cancelling_it():
    async def main():
        running = asyncio.Event()

        async def forever():
            running.set()
            await asyncio.sleep(3600)

        task = tasks.keep("forever", forever, backoff=FAST)
        await running.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main())


def test_keep_starts_again_at_the_first_wait_after_a_stable_run(caplog):
    calls = []

    async def work():
        calls.append(1)
        if len(calls) == 3:
            await asyncio.sleep(0.06)  # ran longer than stable_s: the backoff resets
        if len(calls) < 5:
            raise ValueError("again")

    async def main():
        await tasks.keep("worker", work, backoff=(0.1, 1.0), stable_s=0.05)

    with caplog.at_level(logging.ERROR, logger="transport.tasks"):
        run(main())
    waits = [r.getMessage().rpartition("restarting in ")[2] for r in caplog.records]
    assert waits == ["0.1 s", "0.2 s", "0.1 s", "0.2 s"]


def test_watch_logs_a_failed_task_and_calls_the_decider(caplog):
    decided = []

    async def main():
        async def fails():
            raise OSError(5, "disk gone")

        task = tasks.watch(asyncio.ensure_future(fails()), "store writer",
                           lambda name, exc: decided.append((name, exc)))  # fmt: skip
        ok = tasks.watch(asyncio.ensure_future(asyncio.sleep(0)), "fine", decided.append)
        stopped = tasks.watch(asyncio.ensure_future(asyncio.sleep(10)), "stopped",
                              decided.append)  # fmt: skip
        stopped.cancel()
        await asyncio.gather(task, ok, stopped, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run

    with caplog.at_level(logging.ERROR, logger="transport.tasks"):
        run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "task store writer failed: OSError: [Errno 5] disk gone"
    ]
    assert [(name, type(exc)) for name, exc in decided] == [("store writer", OSError)]


def test_a_vital_task_that_fails_stops_the_main_coroutine_with_task_failed():
    async def main():
        vital = tasks.Vital()

        async def trading():
            await asyncio.sleep(3600)

        async def page():
            await asyncio.sleep(0.05)
            raise ConnectionError("socket gone")

        tasks.watch(asyncio.ensure_future(page()), "page", vital.fail)
        with pytest.raises(tasks.TaskFailed) as failed:
            await vital.run(trading())
        assert str(failed.value) == "task page failed: ConnectionError: socket gone"
        with pytest.raises(tasks.TaskFailed):  # run again: it is still failed
            await vital.run(trading())

    run(main())


def test_a_vital_run_cancelled_from_outside_is_cancelled():
    async def main():
        vital = tasks.Vital()
        task = asyncio.ensure_future(vital.run(asyncio.sleep(3600)))
        await asyncio.sleep(0.01)
        task.cancel()  # Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await task
        assert vital.failure is None

    run(main())
