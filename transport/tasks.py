"""Background tasks that never die silently, for every party that is not a battery.

An asyncio task that raises ends, and nobody hears of it until the task is garbage
collected ("Task exception was never retrieved"), if ever: a link, a market session or
the settlement loop would stop for good while the process looks alive. So each
long-lived task is started here, one of two ways:

    keep(name, make)        restarted: when make() raises, one line says so (the
                            traceback at debug) and it runs again after a backoff that
                            doubles from BACKOFF_S[0] to BACKOFF_S[1]
    watch(task, name, then) watched: when the task raises, one line says so and
                            then(name, exc) decides, e.g. Vital.fail: the party's main
                            coroutine (Hub.run) stops with TaskFailed, `gridbid hub
                            run` says so in one line and exits 1, and systemd restarts it
"""

import asyncio
import logging
import random

log = logging.getLogger(__name__)
BACKOFF_S = (1.0, 60.0)  # the first wait before a restart, and the longest
STABLE_S = 60.0  # a task that ran this long before failing restarts after the first wait


class TaskFailed(RuntimeError):
    """A task its party cannot run without failed (watch()'s `then` raises it there)."""

    def __init__(self, name, exc):
        super().__init__("task %s failed: %s" % (name, describe(exc)))


class Vital:
    """The tasks a party cannot run without: when one fails (fail(), watch()'s `then`),
    the party's main coroutine, awaited through run(), stops with TaskFailed."""

    def __init__(self):
        self.failure = None
        self._main = None

    def fail(self, name, exc):
        if self.failure is None:
            self.failure = TaskFailed(name, exc)
            if self._main is not None:
                self._main.cancel()

    async def run(self, coro):
        if self.failure is not None:
            coro.close()
            raise self.failure
        self._main = asyncio.current_task()
        try:
            return await coro
        except asyncio.CancelledError:
            if self.failure is None:
                raise  # cancelled from outside (Ctrl-C)
            raise self.failure from None
        finally:
            self._main = None


def keep(name, make, backoff=BACKOFF_S, stable_s=STABLE_S):
    """A task running the coroutine function make() for good: restarted with backoff
    whenever it raises; it ends when make() returns. Cancel it to stop it."""
    return asyncio.ensure_future(_keep(name, make, backoff, stable_s))


def watch(task, name, then=None):
    """task, watched: when it ends with an exception, one line (and the traceback at
    debug), then then(name, exc) if given. -> task"""

    def ended(task):
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("task %s failed: %s", name, describe(exc))
        log.debug("task %s failed", name, exc_info=exc)
        if then is not None:
            then(name, exc)

    task.add_done_callback(ended)
    return task


def describe(exc):
    """An exception as one line: its type and message."""
    text = " ".join(str(exc).split())
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


async def _keep(name, make, backoff, stable_s):
    loop = asyncio.get_running_loop()
    delay = backoff[0]
    while True:
        started = loop.time()
        try:
            return await make()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if loop.time() - started >= stable_s:
                delay = backoff[0]
            log.error("task %s failed: %s; restarting in %.1f s", name, describe(exc), delay)
            log.debug("task %s failed", name, exc_info=exc)
        await asyncio.sleep(delay * random.uniform(1.0, 1.25))  # jitter: no herd
        delay = min(delay * 2, backoff[1])
