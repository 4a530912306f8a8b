"""Property tests of the ETP codec (CPython; hypothesis does not run on MicroPython)."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import auth, errors, frame, message

CPYTHON_ONLY = "hypothesis drives the codec on CPython"

NOW = 1763700000000
KEYS = auth.Keyring({1: b"a" * 32, 2: b"b" * 32}, group=b"g" * 32)


def bounded(high):
    return st.floats(min_value=0.0, max_value=high, allow_nan=False, allow_infinity=False)


u8 = st.integers(0, 255)
u64 = st.integers(0, 2**64 - 1)
messages = st.builds(
    lambda *values: message.Message(*values),
    st.integers(0, 9), u64, u64, u8,
    bounded(message.MAX_PRICE), bounded(message.MAX_PRICE), bounded(message.MAX_ENERGY),
    bounded(100.0), bounded(message.MAX_ENERGY), u8, bounded(message.MAX_ENERGY), u8,
    bounded(message.MAX_VOLTAGE), bounded(message.MAX_RATE),
)  # fmt: skip


def fresh():
    # one key for the pair 1-2, held by both under the other's id
    one = frame.Codec(auth.Keyring({2: b"a" * 32}, group=b"g" * 32), key_id=1, peer=2)
    two = frame.Codec(auth.Keyring({1: b"a" * 32}, group=b"g" * 32), key_id=2, peer=1)
    return one, two


@given(messages)
def test_every_valid_message_round_trips_as_body_and_frame(msg):
    assert message.decode(message.encode(msg)) == msg
    sender, receiver = fresh()
    got = receiver.open(sender.seal(msg, NOW, reply_to=7), NOW)
    assert got.message == msg and got.reply_to == 7 and got.key_id == 1


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data):
    _sender, receiver = fresh()
    for candidate in (data, data[: frame.FRAME_SIZE].ljust(frame.FRAME_SIZE, b"\0")):
        try:
            receiver.open(candidate, NOW)
        except errors.ETPError:
            pass
    try:
        message.decode(data[: message.BODY_SIZE].ljust(message.BODY_SIZE, b"\0"))
    except errors.ETPError:
        pass


mutations = st.lists(st.tuples(st.integers(0, 123), st.integers(0, 255)), min_size=1, max_size=8)


@given(messages, mutations, st.integers(-3, 3))
def test_mutated_frames_raise_only_protocol_errors(msg, changes, resize):
    sender, receiver = fresh()
    data = bytearray(sender.seal(msg, NOW))
    for index, value in changes:
        data[index] = value
    if resize < 0:
        data = data[:resize]
    else:
        data += bytes(resize)
    try:
        got = receiver.open(bytes(data), NOW)
    except errors.ETPError:
        return
    assert got.message == msg  # only an unchanged frame may pass


@given(messages)
def test_authentic_frames_with_bad_bodies_raise_only_protocol_errors(msg):
    """Bodies no honest encoder makes (any bytes), signed with a valid key."""
    body = bytearray(message.encode(msg))
    body[0] = msg.message_type + 10 if msg.message_type % 2 else body[0]
    struct.pack_into(">d", body, 18 + 8 * (msg.message_id % 5), float(msg.device_id % 3) - 2.5)
    head = struct.pack(frame.HEADER_FORMAT, frame.MAGIC, frame.VERSION, 0, 1, NOW, 0)
    data = head + bytes(body) + KEYS.get(1).tag(head + bytes(body))
    _sender, receiver = fresh()
    try:
        receiver.open(data, NOW)
    except (errors.UnknownType, errors.BadValue):
        pass


@settings(max_examples=60)
@given(
    st.lists(messages, min_size=1, max_size=6),
    st.lists(st.binary(max_size=200), min_size=7, max_size=7),
    st.lists(st.integers(1, 300), min_size=1, max_size=20),
)
def test_stream_recovers_every_frame_between_garbage_in_any_chunking(msgs, garbage, sizes):
    sender, receiver = fresh()
    ids = message.MessageIds(NOW)
    msgs = [m._replace(message_id=ids.next()) for m in msgs]
    stream = garbage[0] + b"".join(sender.seal(m, NOW) + g for m, g in zip(msgs, garbage[1:]))
    decoder = frame.StreamDecoder(receiver)
    got, pos, turn = [], 0, 0
    while pos < len(stream):
        size = sizes[turn % len(sizes)]
        decoder.feed(stream[pos : pos + size])
        pos, turn = pos + size, turn + 1
        got.extend(item.message for item in decoder.frames(NOW))
    assert got == msgs
