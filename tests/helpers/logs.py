"""What the hub logged, as a list of its messages, for tests that read what it said."""

import contextlib
import logging

PARTIES = ("hub", "aggregator", "transport")
_attached = []  # (logger, handler) that into() added


class _Collect(logging.Handler):
    def __init__(self, lines):
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


def into(lines, *names):
    """Append every message logged under these loggers (the hub's, the aggregator's and
    the transport's by default) to `lines` from now on, INFO and above, until the test
    ends (tests/conftest.py detaches it) or detach(lines). -> lines"""
    handler = _Collect(lines)
    for name in names or PARTIES:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        _attached.append((logger, handler))
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return lines


def detach(lines=None):
    """Stop feeding `lines` (None: every list into() feeds)."""
    for logger, handler in list(_attached):
        if lines is None or handler.lines is lines:
            logger.removeHandler(handler)
            _attached.remove((logger, handler))


@contextlib.contextmanager
def said(*names):
    """into() for a block: -> the list."""
    lines = into([], *names)
    try:
        yield lines
    finally:
        detach(lines)
