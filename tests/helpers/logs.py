"""What the hub logged, as a list of its messages, for tests that read what it said."""

import contextlib
import logging

PARTIES = ("hub", "aggregator", "transport")


class _Collect(logging.Handler):
    def __init__(self, lines):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def said(*names):
    """-> a list that gets every message logged under these loggers (the hub's, the
    aggregator's and the transport's by default) at INFO and above, until the end."""
    lines = []
    handler = _Collect(lines)
    loggers = [logging.getLogger(name) for name in names or PARTIES]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def into(lines, *names):
    """Append every message logged under these loggers to `lines` from now on (INFO and
    above), until the test ends (tests/conftest.py detaches it). -> lines"""
    handler = _Collect(lines)
    for name in names or PARTIES:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return lines


def detach_all():
    """Remove what into() attached (after each test)."""
    for name in PARTIES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _Collect)]:
            logger.removeHandler(handler)
