"""gridbid/memtrace.py: off unless GRIDBID_TRACEMALLOC names a file; then the file names
the lines whose memory grew (how issue 17 row 12's growth was found)."""

import asyncio
import tracemalloc

from gridbid import memtrace

kept = []


def grow():
    kept.append(bytearray(64 * 1024))  # the growth the report must name


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv("GRIDBID_TRACEMALLOC", raising=False)

    async def scenario():
        return memtrace.start()

    assert asyncio.run(scenario()) is None
    assert not tracemalloc.is_tracing()


def test_the_report_names_the_line_that_grew(monkeypatch, tmp_path):
    report = tmp_path / "mem.txt"
    monkeypatch.setenv("GRIDBID_TRACEMALLOC", str(report))
    monkeypatch.setenv("GRIDBID_TRACEMALLOC_S", "0.2")

    async def scenario():
        watcher = memtrace.start()
        try:
            for _ in range(40):
                grow()
                await asyncio.sleep(0.025)
                if report.exists():
                    break
        finally:
            watcher.cancel()
            tracemalloc.stop()

    asyncio.run(scenario())
    lines = report.read_text().splitlines()
    assert lines[0].startswith("after ")
    top = lines[1].split()  # the line that grew most: "+NNN.N kB +N blocks", its stack
    assert top[1] == "kB" and float(top[0]) >= 64
    stack = lines[2 : 2 + 2 * memtrace.FRAMES]
    assert any("test_memtrace.py" in line for line in stack)
    assert any("bytearray(64 * 1024)" in line for line in stack)
    kept.clear()
