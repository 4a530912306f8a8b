"""The hub's market maker: the per-slot uniform-price double auction and the price signal."""

import math
import numbers


def finite(name, value):
    """`value` as a finite float; ValueError naming `name` otherwise (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("%s must be a number, not %r" % (name, value))
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not math.isfinite(value):
        raise ValueError("%s must be finite, not %r" % (name, value))
    return value


def within(value, high):
    """A finite number in 0..high (bools are not numbers): a message's field."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and 0 <= value <= high)  # fmt: skip


def whole(value, high):
    """A whole number in 0..high (bools are not numbers): a message's id or count."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= high
