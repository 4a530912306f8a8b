"""gridbid/logs.py: levels by verbosity, the repeat limit, quiet libraries, journald."""

import io
import logging
import os

import pytest

from gridbid import logs


@pytest.fixture
def root():
    """The root logger as it was before the test (setup changes it)."""
    logger = logging.getLogger()
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logs.flush()
    logger.handlers[:] = handlers
    logger.setLevel(level)


def collect(burst=3, window_s=10.0):
    """A RateLimit on a handler that keeps what it lets through, and its clock."""
    now = [0.0]
    limit = logs.RateLimit(burst, window_s, clock=lambda: now[0])
    handler = Kept()
    handler.addFilter(limit)
    limit.handler = handler
    logger = logging.getLogger("test.flood")
    logger.propagate, logger.handlers[:] = False, [handler]
    logger.setLevel(logging.DEBUG)
    return logger, limit, handler.messages, now


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_repeated_message_is_cut_to_a_burst_then_told_once():
    log, _limit, kept, now = collect(burst=3)
    for i in range(10):
        log.warning("battery %d failed", i)  # one template, other values
    log.warning("another message")
    assert kept == ["battery 0 failed", "battery 1 failed", "battery 2 failed", "another message"]
    now[0] = 10.0  # the window is over: the count comes before the next one
    log.warning("battery %d failed", 10)
    assert kept[4:] == ["... 'battery %d failed' repeated 7 more times within 10 s",
                        "battery 10 failed"]  # fmt: skip


def test_what_is_held_back_is_told_at_the_end():
    log, limit, kept, _now = collect(burst=2)
    for _ in range(5):
        log.error("link down")
    log.error("once")
    limit.flush()
    assert kept == ["link down", "link down", "once",
                    "... 'link down' repeated 3 more times within 10 s"]  # fmt: skip
    limit.flush()
    assert len(kept) == 4  # told once


def test_loggers_are_limited_apart():
    log, _limit, kept, _now = collect(burst=1)
    other = logging.getLogger("test.other")
    other.propagate, other.handlers[:] = False, log.handlers
    other.setLevel(logging.DEBUG)
    for _ in range(3):
        log.info("tick")
        other.info("tick")
    assert kept == ["tick", "tick"]


@pytest.mark.parametrize(
    "verbosity, level", [(-1, logging.WARNING), (0, logging.INFO), (1, logging.DEBUG)]
)
def test_verbosity_sets_the_root_level_and_libraries_stay_quiet(root, verbosity, level):
    logs.setup(verbosity)
    assert root.level == level
    assert logging.getLogger("pymodbus").getEffectiveLevel() == logging.WARNING
    assert not logging.getLogger("pymodbus.client").isEnabledFor(logging.DEBUG)


def test_setup_again_replaces_its_handler(root, monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    logs.setup()
    logs.setup(1)
    ours = [h for h in root.handlers if hasattr(h, "gridbid")]
    assert len(ours) == 1
    logging.getLogger("hub").info("started")
    line = ours[0].stream.getvalue()
    assert line.endswith(" INFO hub: started\n") and line[:4].isdigit()  # a timestamp


def test_journald_lines_have_no_timestamp(root, monkeypatch, tmp_path):
    stream = open(tmp_path / "journal", "w")  # stands in for journald's socket
    st = os.fstat(stream.fileno())
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", "%d:%d" % (st.st_dev, st.st_ino))
    logs.setup()
    logging.getLogger("hub").warning("no battery answered")
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited, but stderr is elsewhere
    assert not logs.journald()
    stream.close()
    assert (tmp_path / "journal").read_text() == "WARNING hub: no battery answered\n"


def test_a_library_error_that_is_none_here_is_dropped(root, monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    handler = logs.setup()
    modbus = logging.getLogger("pymodbus.logging")
    modbus.error("Cancel send, because not connected!\n>>>>> recv: 0x0 0x4 extra data: ")
    modbus.error("Repeating....\n>>>>> recv: 0x0 0x4 extra data: ")  # pymodbus: the same again
    modbus.error("requested device id does not exist: 9")
    modbus.error("Repeating....")
    lines = [line.split(" ", 2)[2] for line in handler.stream.getvalue().splitlines()]
    assert lines == ["ERROR pymodbus.logging: requested device id does not exist: 9",
                     "ERROR pymodbus.logging: Repeating...."]  # fmt: skip
