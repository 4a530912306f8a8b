"""No task of the firmware dies silently (issue 17 row 11): a task that raises is logged
on one line and started again with a backoff (app.failed, the loop's exception handler).
Before, discovery died at a bad runtime condition (e.g. a group_addr it could not join)
without a word, and the battery was never found again. CPython and the MicroPython VM."""

import asyncio

import app

# app.py imports the device side (devices, modbus, board), compiled from source on the VM
# here; a board runs them precompiled
MICROPYTHON_HEAP = "192k"


class Node:
    """A node whose discovery fails twice (no network yet), then runs."""

    def __init__(self):
        self.executor = self.board = self.plant = self.cfg = None
        self.starts = 0

    async def discovery(self):
        self.starts += 1
        if self.starts <= 2:
            raise OSError(19, "no such device: the group cannot be joined yet")
        await asyncio.sleep(0)


def test_a_failing_task_is_logged_on_one_line_and_restarted_with_a_backoff():
    lines = []
    node = Node()
    real_log = app.log

    async def scenario():
        app._watched[:] = [node, "config.json"]
        asyncio.get_event_loop().set_exception_handler(app.failed)
        app.start("discovery", app.job("discovery"))
        for _ in range(50):  # 1 s, then 2 s of backoff
            if node.starts >= 3:
                break
            await asyncio.sleep(0.1)

    app.log = lines.append
    try:
        asyncio.run(scenario())
    finally:
        app.log = real_log
        app._names.clear()
        app._delays.clear()
    assert node.starts == 3, (node.starts, lines)
    assert len(lines) == 2, lines
    assert lines[0].startswith("task discovery failed: OSError: ")
    assert "cannot be joined yet" in lines[0] and lines[0].endswith("restarting in 1 s"), lines
    assert lines[1].endswith("restarting in 2 s"), lines


def test_an_unknown_tasks_failure_is_said_too():
    lines = []
    real_log = app.log
    app.log = lines.append
    try:
        app.failed(None, {"message": "Task exception wasn't retrieved",
                          "exception": ValueError("x"), "future": None})  # fmt: skip
    finally:
        app.log = real_log
    assert lines == ["asyncio: Task exception wasn't retrieved: ValueError: x"], lines
