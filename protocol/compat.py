"""The few places where MicroPython and CPython differ, in one module.

Everything else in protocol/ and firmware/ is written once for both. Built-in
modules are imported at the top of a module, never inside a function that runs
per frame: MicroPython does not cache built-ins in sys.modules, so each such
import searches the whole module path first.
"""

import binascii

try:
    from micropython import const
except ImportError:  # CPython: const() is only a hint to the MicroPython compiler

    def const(value):
        return value


try:
    from time import ticks_diff, ticks_ms, ticks_us  # MicroPython's wrapping timers
except ImportError:  # CPython: monotonic clocks that do not wrap
    import time

    def ticks_ms():
        return time.monotonic_ns() // 1000000

    def ticks_us():
        return time.monotonic_ns() // 1000

    def ticks_diff(end, start):
        return end - start


try:
    from hmac import compare_digest as equal_tags  # CPython: constant time, in C
except ImportError:

    def equal_tags(tag, data):
        """Compare two tags in time that does not depend on where they differ."""
        if len(tag) != len(data):
            return False
        diff = 0
        for x, y in zip(tag, data):
            diff |= x ^ y
        return diff == 0


def hexlify(data):
    """bytes -> lower-case hex str (bytes.hex is optional on small ports)."""
    return binascii.hexlify(data).decode()


def unhexlify(text):
    """Hex str -> bytes; ValueError on bad hex, on both runtimes."""
    try:
        return binascii.unhexlify(text)
    except (TypeError, ValueError) as exc:  # CPython's binascii.Error is a ValueError
        raise ValueError("not valid hex: %s" % exc) from None
