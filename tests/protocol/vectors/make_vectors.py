"""Regenerate frames.json and rejects.json (the golden vectors).

    .venv/bin/python tests/vectors/make_vectors.py

The committed files pin the wire format: if the encoder changes, the tests
that compare against them fail. Only regenerate on a deliberate format change
(and bump frame.VERSION). raw_by_hand.json is written by hand, not here.
The keys below are test keys, published on purpose; no device uses them.
"""

import json
import struct
from pathlib import Path

from protocol import auth, frame, message, message_info

HERE = Path(__file__).parent
KEY_ID, KEY = 7, bytes(range(32))
OTHER_ID, OTHER = 9, bytes(range(100, 132))
GROUP = bytes(range(0xA0, 0xC0))
SENT_MS = 1763700000123
DEVICE = 1001


def keyring():
    return auth.Keyring({KEY_ID: KEY, OTHER_ID: OTHER}, group=GROUP)


def messages():
    m = message
    return [
        m.register(1, DEVICE, 13.5, 10.25, m.HEALTH_GOOD, 51.5, 5.0),
        m.query(2, 0, 4.0),
        m.query_response(3, DEVICE, 14.0, 6.5, 60.0, 10.25, m.HEALTH_GOOD, 51.5, 5.0),
        m.bid(4, DEVICE, 15.75, 2.5),
        m.bid_accept(5, DEVICE, 15.75, 15.75, 2.5),
        m.bid_confirm(6, DEVICE, 15.75, 2.5, 5.0),
        m.bid_reject(7, DEVICE, 12.0, 14.0, m.REJECT_BELOW_RESERVE),
        m.terminate(8, DEVICE, m.TERM_NORMAL),
        m.device_failure(9, DEVICE, m.FAIL_BMS_ALARM, m.HEALTH_FAULT, 9.5, 48.0),
        m.bess_status(10, DEVICE, 13.5, 9.0, 60.0, m.HEALTH_DEGRADED, 51.0, 4.5),
    ]


def signed(body, flags=0, version=frame.VERSION, magic=frame.MAGIC, key=KEY, key_id=KEY_ID):
    """A frame built by hand, so invalid bodies can carry valid tags."""
    head = struct.pack(frame.HEADER_FORMAT, magic, version, flags, key_id, SENT_MS, 0)
    return head + body + auth.HmacKey(key).tag(head + body)


def raw_body(**changes):
    values = list(message.bid(50, DEVICE, 15.0, 1.0))
    for name, value in changes.items():
        values[message.FIELDS.index(name)] = value
    return struct.pack(message.BODY_FORMAT, *values)


def main():
    codec = frame.Codec(keyring(), key_id=KEY_ID)
    frames = []
    for msg in messages():
        group = msg.message_type in (message.REGISTER, message.QUERY)
        reply_to = msg.message_id - 1 if msg.message_type in (4, 5, 6) else 0
        data = codec.seal(msg, SENT_MS, reply_to=reply_to, group=group)
        frames.append({
            "name": message_info.type_name(msg.message_type),
            "key_id": KEY_ID, "group": group, "sent_ms": SENT_MS, "reply_to": reply_to,
            "frame": data.hex(), "fields": dict(zip(message.FIELDS, msg)),
        })  # fmt: skip
    good = bytes.fromhex(frames[3]["frame"])
    ttl_ms = 10 * 1000 + frame.SKEW_MS

    def flip(data, index):
        return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]

    rejects = [
        ("tampered body", flip(good, 40), SENT_MS, "BadTag"),
        ("tampered tag", flip(good, 120), SENT_MS, "BadTag"),
        ("tampered sent_ms", flip(good, 15), SENT_MS, "BadTag"),
        ("signed with another sender's key", signed(raw_body(), key=OTHER), SENT_MS, "BadTag"),
        ("unknown sender", signed(raw_body(), key_id=12345), SENT_MS, "UnknownKey"),
        ("bad magic", b"XX" + good[2:], SENT_MS, "BadHeader"),
        ("unsupported version", signed(raw_body(), version=2), SENT_MS, "BadHeader"),
        ("reserved flag bit", signed(raw_body(), flags=0x80), SENT_MS, "BadHeader"),
        ("truncated", good[:-1], SENT_MS, "BadLength"),
        ("one byte too many", good + b"\x00", SENT_MS, "BadLength"),
        ("empty", b"", SENT_MS, "BadLength"),
        ("unknown message type 10", signed(raw_body(message_type=10)), SENT_MS, "UnknownType"),
        ("NaN price", signed(raw_body(bid_price=float("nan"))), SENT_MS, "BadValue"),
        ("infinite energy", signed(raw_body(energy_total=float("inf"))), SENT_MS, "BadValue"),
        ("negative price", signed(raw_body(bid_price=-1.0)), SENT_MS, "BadValue"),
        ("negative energy", signed(raw_body(required_energy_amount=-0.5)), SENT_MS, "BadValue"),
        ("150 percent", signed(raw_body(percentage_for_sale=150.0)), SENT_MS, "BadValue"),
        ("5 kV battery", signed(raw_body(battery_voltage=5000.0)), SENT_MS, "BadValue"),
        ("expired", good, SENT_MS + ttl_ms + 1, "Expired"),
        ("from the future", good, SENT_MS - frame.SKEW_MS - 1, "Expired"),
    ]
    rejects = [{"name": n, "frame": d.hex(), "now_ms": now, "error": e} for n, d, now, e in rejects]
    rejects.append({"name": "replay", "frame": good.hex(), "now_ms": SENT_MS, "error": "Replay",
                    "open_first": True})  # fmt: skip
    common = {
        "note": "test keys, public on purpose; regenerate with make_vectors.py",
        "keys": {str(KEY_ID): KEY.hex(), str(OTHER_ID): OTHER.hex()},
        "group": GROUP.hex(),
    }
    for name, items in (("frames.json", frames), ("rejects.json", rejects)):
        (HERE / name).write_text(json.dumps({**common, "vectors": items}, indent=1) + "\n")
    print("wrote %d frames and %d rejects" % (len(frames), len(rejects)))


if __name__ == "__main__":
    main()
