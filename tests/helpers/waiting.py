"""Polling with a deadline, for tests that wait on real processes and sockets."""

import asyncio
import time


def until(check, timeout, what, detail=lambda: "", every=0.01):
    """Poll check() every `every` s until it returns something true; -> that.
    AssertionError at the deadline, naming what was awaited (and detail(), e.g. a
    process's output)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s%s"
                                 % (timeout, what, detail()))  # fmt: skip
        time.sleep(every)


async def until_async(check, timeout, what):
    """until() for a test running on an event loop: the loop goes on while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        await asyncio.sleep(0.01)
