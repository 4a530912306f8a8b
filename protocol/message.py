"""ETP messages: the 10 types and the fixed 84-byte body.

The body is the paper's 14 fields in the paper's order, big-endian, fixed
widths (struct format BODY_FORMAT). A Message is an immutable namedtuple, so
encoding is one struct.pack and decoding one struct.unpack plus range checks.

Units: prices in cents/kWh, energies in kWh, percentages 0..100, voltage in V,
discharge_rate in kW, ttl in seconds (see frame.py for what ttl means).

Which fields each type carries (all others are zero):

  type               sender      fields
  0  REGISTER        device      energy_total (capacity), remaining_battery_energy,
                                 battery_health_status_code, battery_voltage,
                                 discharge_rate (max kW)
  1  QUERY           aggregator  required_energy_amount (kWh wanted; 0 = any),
                                 bid_price (the market's latest price signal; 0 = none)
  2  QUERY_RESPONSE  device      sale_price (reserve), energy_total (kWh offered),
                                 percentage_for_sale (of stored energy),
                                 remaining_battery_energy, health, voltage,
                                 discharge_rate (max kW for the offer)
  3  BID             aggregator  bid_price, required_energy_amount (kWh)
  4  BID_ACCEPT      device      bid_price (as bid), sale_price (agreed),
                                 required_energy_amount (kWh accepted)
  5  BID_CONFIRM     aggregator  sale_price, required_energy_amount, discharge_rate
                                 (average kW to deliver)
  6  BID_REJECT      device      bid_price (as bid), sale_price (reserve at the
                                 time), termination_code (REJECT_* reason)
  7  TERMINATE       either      termination_code (TERM_* reason); from a device with
                                 reply_to = the contract's BID_CONFIRM, it reports
                                 the contract's outcome (contract.TERM_CONTRACT_*) and
                                 required_energy_amount = the kWh its meter counted
  8  DEVICE_FAILURE  device      termination_code (FAIL_* cause), health,
                                 remaining_battery_energy, battery_voltage
  9  BESS_STATUS     device      energy_total (capacity), remaining_battery_energy,
                                 percentage_for_sale, health, voltage,
                                 discharge_rate (kW now; 0 when idle)

device_id is always the battery the message is about (0 in a QUERY to all).
message_id is the sender's monotonic counter (see MessageIds); the frame header
says who the sender is.
"""

import struct
from collections import namedtuple

from protocol.compat import const
from protocol.errors import BadLength, BadValue, UnknownType

REGISTER = const(0)
QUERY = const(1)
QUERY_RESPONSE = const(2)
BID = const(3)
BID_ACCEPT = const(4)
BID_CONFIRM = const(5)
BID_REJECT = const(6)
TERMINATE = const(7)
DEVICE_FAILURE = const(8)
BESS_STATUS = const(9)

# Health codes (battery_health_status_code)
HEALTH_GOOD = const(0)
HEALTH_DEGRADED = const(1)
HEALTH_POOR = const(2)
HEALTH_FAULT = const(3)

# termination_code in BID_REJECT
REJECT_BELOW_RESERVE = const(1)
REJECT_OUTBID = const(2)
REJECT_CLOSED = const(3)
REJECT_UNAVAILABLE = const(4)
# termination_code in TERMINATE
TERM_NORMAL = const(1)
TERM_TIMEOUT = const(2)
TERM_SHUTDOWN = const(3)
# 10..13: how a contract ended (protocol/contract.py TERM_CONTRACT_*, OUTCOME_CODES)
# termination_code in DEVICE_FAILURE
FAIL_BMS_ALARM = const(1)
FAIL_BMS_LINK = const(2)
FAIL_INVERTER = const(3)
FAIL_METER = const(4)

FIELDS = (
    "message_type",
    "message_id",
    "device_id",
    "ttl",
    "bid_price",
    "sale_price",
    "energy_total",
    "percentage_for_sale",
    "required_energy_amount",
    "termination_code",
    "remaining_battery_energy",
    "battery_health_status_code",
    "battery_voltage",
    "discharge_rate",
)
BODY_FORMAT = ">BQQBdddddBdBdd"
BODY_SIZE = const(84)

Message = namedtuple("Message", FIELDS)

# Physical bounds. A value outside them is an error, never clamped. NaN and
# infinities fail the same range test, so one comparison covers both.
MAX_PRICE = 100000.0  # cents/kWh (1000 $/kWh, ~50x the highest market caps)
MAX_ENERGY = 1000000.0  # kWh (1 GWh)
MAX_VOLTAGE = 1500.0  # V (the top of low-voltage DC battery buses)
MAX_RATE = 1000000.0  # kW
_FLOAT_BOUNDS = (
    (4, "bid_price", MAX_PRICE),
    (5, "sale_price", MAX_PRICE),
    (6, "energy_total", MAX_ENERGY),
    (7, "percentage_for_sale", 100.0),
    (8, "required_energy_amount", MAX_ENERGY),
    (10, "remaining_battery_energy", MAX_ENERGY),
    (12, "battery_voltage", MAX_VOLTAGE),
    (13, "discharge_rate", MAX_RATE),
)


def check(msg):
    """Raise UnknownType or BadValue unless every field of msg is acceptable."""
    if not 0 <= msg[0] <= 9:
        raise UnknownType("unknown message_type %d (ETP has 0..9)" % msg[0])
    # Fast path: one chained test for the common case, details only on failure.
    if (
        0.0 <= msg[4] <= MAX_PRICE
        and 0.0 <= msg[5] <= MAX_PRICE
        and 0.0 <= msg[6] <= MAX_ENERGY
        and 0.0 <= msg[7] <= 100.0
        and 0.0 <= msg[8] <= MAX_ENERGY
        and 0.0 <= msg[10] <= MAX_ENERGY
        and 0.0 <= msg[12] <= MAX_VOLTAGE
        and 0.0 <= msg[13] <= MAX_RATE
    ):
        return msg
    for index, name, high in _FLOAT_BOUNDS:
        value = msg[index]
        if value - value != 0.0:  # NaN or an infinity: x - x is 0.0 for every finite x
            raise BadValue("%s is not finite (%r)" % (name, value))
        if not 0.0 <= value <= high:
            raise BadValue("%s=%r is out of range 0..%r" % (name, value, high))
    return msg  # pragma: no cover  (the fast path and the loop agree)


_INT_BOUNDS = ((0, 9), (1, 2**64 - 1), (2, 2**64 - 1), (3, 255), (9, 255), (11, 255))


def _check_ints(values):
    # Only needed on the way out: a decoded body cannot hold an out-of-range int.
    # type() is int: a bool is not a number here (True would encode as 1).
    for index, high in _INT_BOUNDS:
        value = values[index]
        if type(value) is not int or not 0 <= value <= high:
            raise BadValue("%s=%r is not a whole number in 0..%d" % (FIELDS[index], value, high))


def encode(msg):
    """Message -> 84 bytes. Raises BadValue/UnknownType on an invalid message."""
    try:
        check(msg)
        _check_ints(msg)
    except TypeError:  # a hand-built Message with a str or None where a number goes
        raise BadValue("cannot encode %r: a field is not a number" % (msg,)) from None
    return struct.pack(BODY_FORMAT, *msg)


def decode(data):
    """84 bytes -> checked Message. Raises only ETPError subclasses."""
    if len(data) != BODY_SIZE:
        raise BadLength("body is %d bytes, ETP bodies are %d" % (len(data), BODY_SIZE))
    return check(Message(*struct.unpack(BODY_FORMAT, data)))


def _build(values):
    """Field list -> checked Message; ints must be ints, floats may be given as ints."""
    for index, name, _high in _FLOAT_BOUNDS:
        value = values[index]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue("%s must be a number, not %r" % (name, value))
        values[index] = float(value)
    if isinstance(values[0], bool) or not isinstance(values[0], int) or not 0 <= values[0] <= 9:
        raise UnknownType("message_type must be 0..9, not %r" % (values[0],))
    _check_ints(values)
    return check(Message(*values))


# --- one constructor per type -------------------------------------------------
# Each sets exactly the fields its type carries (see the table at the top) and
# the type's default ttl; the result is checked, so a bad value fails here.


def _make(kind, message_id, device_id, ttl=None, **fields):
    if ttl is None:  # the type's default ttl (message_info.TIMING)
        ttl = 30 if kind == REGISTER else 10
    values = [kind, message_id, device_id, ttl]
    values += [0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0.0]
    for name, value in fields.items():
        values[FIELDS.index(name)] = value
    return _build(values)


# Parameter names are shared with the rest of the firmware where they mean the same
# (kwh, kw, voltage_v, reason): on MicroPython every distinct name costs heap.


def register(
    message_id, device_id, capacity_kwh, remaining_kwh, health, voltage_v, max_kw, ttl=None
):
    return _make(
        REGISTER, message_id, device_id, ttl,
        energy_total=capacity_kwh, remaining_battery_energy=remaining_kwh,
        battery_health_status_code=health, battery_voltage=voltage_v, discharge_rate=max_kw,
    )  # fmt: skip


def query(message_id, device_id=0, kwh=0.0, price_signal=0.0, ttl=None):
    """kwh: the energy wanted (0: any)."""
    return _make(
        QUERY, message_id, device_id, ttl, required_energy_amount=kwh, bid_price=price_signal
    )


def query_response(
    message_id, device_id, reserve_price, kwh, percentage, remaining_kwh,
    health, voltage_v, max_kw, ttl=None,
):  # fmt: skip
    """kwh: the energy offered."""
    return _make(
        QUERY_RESPONSE, message_id, device_id, ttl,
        sale_price=reserve_price, energy_total=kwh, percentage_for_sale=percentage,
        remaining_battery_energy=remaining_kwh, battery_health_status_code=health,
        battery_voltage=voltage_v, discharge_rate=max_kw,
    )  # fmt: skip


def bid(message_id, device_id, price, kwh, ttl=None):
    return _make(BID, message_id, device_id, ttl, bid_price=price, required_energy_amount=kwh)


def bid_accept(message_id, device_id, bid_price, sale_price, kwh, ttl=None):
    return _make(
        BID_ACCEPT, message_id, device_id, ttl,
        bid_price=bid_price, sale_price=sale_price, required_energy_amount=kwh,
    )  # fmt: skip


def bid_confirm(message_id, device_id, sale_price, kwh, kw, ttl=None):
    """kw: the average power to deliver."""
    return _make(
        BID_CONFIRM, message_id, device_id, ttl,
        sale_price=sale_price, required_energy_amount=kwh, discharge_rate=kw,
    )  # fmt: skip


def bid_reject(message_id, device_id, bid_price, reserve_price, reason, ttl=None):
    return _make(
        BID_REJECT, message_id, device_id, ttl,
        bid_price=bid_price, sale_price=reserve_price, termination_code=reason,
    )  # fmt: skip


def terminate(message_id, device_id, reason=TERM_NORMAL, ttl=None, delivered_kwh=0.0):
    return _make(
        TERMINATE, message_id, device_id, ttl,
        termination_code=reason, required_energy_amount=delivered_kwh,
    )  # fmt: skip


def device_failure(message_id, device_id, reason, health, remaining_kwh, voltage_v, ttl=None):
    """reason: the FAIL_* cause."""
    return _make(
        DEVICE_FAILURE, message_id, device_id, ttl,
        termination_code=reason, battery_health_status_code=health,
        remaining_battery_energy=remaining_kwh, battery_voltage=voltage_v,
    )  # fmt: skip


def bess_status(
    message_id, device_id, capacity_kwh, remaining_kwh, percentage, health, voltage_v, kw,
    ttl=None,
):  # fmt: skip
    return _make(
        BESS_STATUS, message_id, device_id, ttl,
        energy_total=capacity_kwh, remaining_battery_energy=remaining_kwh,
        percentage_for_sale=percentage, battery_health_status_code=health,
        battery_voltage=voltage_v, discharge_rate=kw,
    )  # fmt: skip


# The types' names, their timing (TIMING, priority(), deadline_ms()) and the dict forms
# (as_dict(), from_dict()) are in protocol/message_info.py, which the hub and the tools
# import: a battery never uses them, so never pays their heap.


class MessageIds:
    """A sender's message_id counter: strictly increasing, also across reboots.

    Ids start from the clock (unix ms << 16), so a rebooted sender with a set
    clock continues above everything it sent before without writing flash on
    every send; `floor` lets a device also resume above a persisted high-water
    mark. 2**16 ids per millisecond; the u64 lasts ~8,900 years.
    """

    def __init__(self, now_ms, floor=0):
        self.last = max(now_ms << 16, floor)

    def next(self):
        self.last += 1
        return self.last
