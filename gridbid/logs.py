"""Logging for every `gridbid` command: setup(verbosity), called once before a verb runs.

Logs go to stderr (a command's results go to stdout: they are output, not logs):
INFO by default, DEBUG with -v, WARNING with -q. Under systemd, when stderr is the
journal's stream, lines carry no timestamp (journald stamps each line itself);
elsewhere they start with one. A flood of one message (a battery failing every
100 ms) is cut to BURST lines per WINDOW_S, then one "... repeated K more times"
line. Chatty libraries are held at WARNING whatever the verbosity: pymodbus's debug
output must not mix into the demo's summary; and the few library errors that say
nothing is wrong here (HARMLESS) are dropped.
"""

import atexit
import logging
import os
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
QUIET = {  # library logger -> the lowest level it may show
    "pymodbus": logging.WARNING,
    "aiocoap": logging.WARNING,
    "coap-server": logging.WARNING,  # aiocoap's server context: a line per odd datagram
    "uvicorn.access": logging.WARNING,  # one line per HTTP request
    "httpx": logging.WARNING,  # one line per RPC call (solana's client)
    "httpcore": logging.WARNING,
    "asyncio": logging.WARNING,
}
HARMLESS = {  # logger -> how its messages that are no error here begin
    # The simulator answering a Modbus client that has just gone (a firmware that gave
    # up on a slow answer, or stopped mid-request), with pymodbus's dump of the frames.
    "pymodbus.logging": ("Cancel send, because not connected!",),
}
SAME_AGAIN = {"pymodbus.logging": ("Repeating....",)}  # a library's "the last one again"
BRIEF = {  # logger -> its messages told in one line, without the traceback
    # asyncio retries a failed accept a second later: out of open files, the error is
    # the news, not the stack (issue 17: 97 MB of tracebacks under a connection flood)
    "asyncio": ("socket.accept() out of system resource",),
}
BURST, WINDOW_S = 5, 10.0


class RateLimit(logging.Filter):
    """At most `burst` records per (logger, message template) in `window_s`; what it
    holds back is counted and told in one record, when that template is next logged
    after the window, or at exit (flush)."""

    def __init__(self, burst=BURST, window_s=WINDOW_S, clock=time.monotonic):
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self.windows = {}  # (logger, template) -> [window start, records in it, record]
        self.handler = None  # where the "repeated" records go (set by setup)

    def filter(self, record):
        if getattr(record, "repeated", False):
            return True
        key, now = (record.name, str(record.msg)), self.clock()
        window = self.windows.get(key)
        if window is None or now - window[0] >= self.window_s:
            if window is not None:
                self._tell(window)
            elif len(self.windows) > 1000:  # messages with the values inside the text
                self.flush()
            self.windows[key] = [now, 1, record]
            return True
        window[1] += 1
        window[2] = record
        return window[1] <= self.burst

    def flush(self):
        """Tell every count held back, and forget the windows."""
        windows, self.windows = self.windows, {}
        for window in windows.values():
            self._tell(window)

    def _tell(self, window):
        _start, count, last = window
        if count <= self.burst or self.handler is None:
            return
        told = logging.makeLogRecord(
            {"name": last.name, "levelno": last.levelno, "levelname": last.levelname,
             "msg": "... %r repeated %d more times within %g s",
             "args": (str(last.msg)[:80], count - self.burst, self.window_s),
             "repeated": True}
        )  # fmt: skip
        self.handler.handle(told)


class Harmless(logging.Filter):
    """Drops HARMLESS records, and a SAME_AGAIN record that repeats a dropped one."""

    def __init__(self):
        super().__init__()
        self.dropped = set()  # the loggers whose last record was dropped

    def filter(self, record):
        text = str(record.msg)
        again = record.name in self.dropped and text.startswith(SAME_AGAIN.get(record.name, ()))
        if again or text.startswith(HARMLESS.get(record.name, ())):
            self.dropped.add(record.name)
            return False
        self.dropped.discard(record.name)
        return True


class Brief(logging.Filter):
    """A BRIEF record in one line: its exception's text instead of its traceback."""

    def filter(self, record):
        if record.exc_info and str(record.msg).startswith(BRIEF.get(record.name, ())):
            record.msg = "%s: %s" % (str(record.msg).split("\n")[0], record.exc_info[1])
            record.exc_info = record.exc_text = None
        return True


def journald():
    """True when stderr is journald's stream: systemd sets JOURNAL_STREAM to that
    stream's "device:inode" (a child whose stderr was redirected inherits the variable,
    hence the comparison)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # stderr replaced (tests) or closed
        return False
    return stream == "%d:%d" % (st.st_dev, st.st_ino)


def setup(verbosity=0):
    """The root logger for a command: -1 quiet, 0 normal, 1 verbose. Calling it again
    replaces what the previous call set up (tests run several commands in a process)."""
    root = logging.getLogger()
    flush()
    for old in [h for h in root.handlers if hasattr(h, "gridbid")]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(JOURNAL_FORMAT if journald() else FORMAT))
    handler.addFilter(Harmless())
    handler.addFilter(Brief())
    handler.gridbid = RateLimit()  # marks the handler ours; flush() asks it what it held
    handler.gridbid.handler = handler
    handler.addFilter(handler.gridbid)
    root.addHandler(handler)
    root.setLevel(LEVELS[max(-1, min(1, verbosity))])
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    return handler


@atexit.register  # before logging's own shutdown (atexit runs the latest first)
def flush():
    """Tell what the rate limit still holds back."""
    for handler in logging.getLogger().handlers:
        if hasattr(handler, "gridbid"):
            handler.gridbid.flush()
