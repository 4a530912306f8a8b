"""ETP message types' names, timing and dict forms: the hub's and the tools' side of
protocol/message.py. A battery never imports it, so it never pays the heap for them
(every function and table a MicroPython module holds lives in the heap, even when its
bytecode runs from flash)."""

from protocol.errors import BadValue, UnknownType
from protocol.message import FIELDS, _build

TYPE_NAMES = (
    "register",
    "query",
    "query_response",
    "bid",
    "bid_accept",
    "bid_confirm",
    "bid_reject",
    "terminate",
    "device_failure",
    "bess_status",
)

# (priority, deadline_ms, default ttl_s) per type. Priority and deadline are the
# paper's table (lower priority number = more urgent); None = the paper sets no
# deadline. Deadlines are end to end: send -> the peer has acted. The default ttl is
# also message._make's.
TIMING = (
    (80, 5000, 30),  # register
    (70, None, 10),  # query
    (70, 500, 10),  # query_response
    (20, None, 10),  # bid
    (5, 500, 10),  # bid_accept
    (10, 500, 10),  # bid_confirm
    (15, 500, 10),  # bid_reject
    (30, None, 10),  # terminate
    (0, 200, 10),  # device_failure
    (60, 2000, 10),  # bess_status
)


def type_name(message_type):
    return TYPE_NAMES[message_type] if 0 <= message_type <= 9 else "type%d" % message_type


def priority(message_type):
    return TIMING[message_type][0]


def deadline_ms(message_type):
    return TIMING[message_type][1]


def as_dict(msg):
    """Message -> {field: value} plus the type's name (for logs and JSON)."""
    out = {"type": type_name(msg[0])}
    for name, value in zip(FIELDS, msg):
        out[name] = value
    return out


def from_dict(data):
    """{field: value} (as as_dict makes, or a subset) -> checked Message.

    'type' may name the type instead of message_type. Missing fields are zero.
    """
    values = []
    for name in FIELDS:
        values.append(data.get(name, 0))
    kind = data.get("type")
    if kind is not None:
        if kind not in TYPE_NAMES:
            raise UnknownType("unknown message type name %r" % (kind,))
        values[0] = TYPE_NAMES.index(kind)
    unknown = [k for k in data if k not in FIELDS and k != "type"]
    if unknown:
        raise BadValue("unknown field(s): %s" % ", ".join(sorted(unknown)))
    return _build(values)
