"""Where a running process's memory grows: a debugging aid, off unless asked for.

    GRIDBID_TRACEMALLOC=/tmp/hub-mem.txt gridbid hub run --config hub.toml

tracemalloc then records every allocation (slower, more memory); every
GRIDBID_TRACEMALLOC_S seconds (default 60) the file is rewritten with the 20 source
lines whose live memory grew most since the first snapshot (taken after one interval,
past start-up), and the total. bench/soak.py sets it with --tracemalloc.
"""

import asyncio
import linecache
import os
import time
import tracemalloc

TOP = 20
FRAMES = 4  # a line's callers too: the owner of a growth is rarely the allocating line


def start():
    """-> the watcher task when GRIDBID_TRACEMALLOC names a file, else None."""
    path = os.environ.get("GRIDBID_TRACEMALLOC")
    if not path:
        return None
    every_s = float(os.environ.get("GRIDBID_TRACEMALLOC_S", "60"))
    tracemalloc.start(FRAMES)
    return asyncio.ensure_future(_watch(path, every_s))


async def _watch(path, every_s):
    # Not our own bookkeeping: the snapshots, their comparison and the source lines read.
    mine = [tracemalloc.Filter(False, f) for f in (tracemalloc.__file__, linecache.__file__,
                                                   __file__)]  # fmt: skip
    await asyncio.sleep(every_s)
    first, since = tracemalloc.take_snapshot().filter_traces(mine), time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        now = tracemalloc.take_snapshot().filter_traces(mine)
        # The comparison takes seconds with many traces: off the loop (GIL permitting).
        text = await asyncio.to_thread(_report, now, first, time.monotonic() - since)
        del now
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def _report(now, first, seconds):
    stats = now.compare_to(first, "traceback")
    grown = sum(s.size_diff for s in stats)
    lines = ["after %.0f s more: %+.1f kB traced in all" % (seconds, grown / 1024)]
    for stat in stats[:TOP]:
        lines.append("%+9.1f kB %+7d blocks" % (stat.size_diff / 1024, stat.count_diff))
        lines += ["    " + line for line in stat.traceback.format()]
    return "\n".join(lines) + "\n"
