"""Fuzz the ETP frame decoder (codec.open and StreamDecoder) on CPython.

Starts from valid frames of all 10 message types, signed with known keys (the pair
keys of senders 7 and 9 with the receiver, and the group key), and feeds N mutated
inputs (default 1,000,000) to the receiver's Codec.open:

  bitflip   1-8 flipped bits              splice   head of one frame + tail of another
  bytes     1-4 replaced bytes            random   random bytes, mostly 124 long
  truncate  cut short                     replay   a valid frame sent again
  extend    random bytes appended         fresh    a new valid frame (should be accepted)
  tagged    header + body packed with struct and given a VALID tag, so the
            body checks are reached: NaN/inf/negative/out-of-range floats and
            percentages, message types 10..255, bad magic/version/flags,
            unknown keys, tags made with the wrong key, old/future sent_ms

A tenth of the inputs go as bytearray or memoryview instead of bytes. Every
outcome is counted per ETPError subclass (or "accepted"); any other exception
is a bug and is printed with its traceback and the input in hex. Tagged
inputs are also checked against an oracle that knows what the frame holds
(the check order in frame.py: header, key, tag, type, values, expiry, then
replay), fresh frames must be accepted, and accepted frames must re-encode
to the same bytes.

A fraction of the inputs (--stream, default 0.1) also goes, back to back, in
random-size chunks through a frame.StreamDecoder, which must raise nothing
but ETPError and must recover every "fresh" frame among the garbage.

    .venv/bin/python bench/fuzz.py                # 1,000,000 inputs, seed 1
    .venv/bin/python bench/fuzz.py -n 100000 --seed 7

Exits 1 if any input raised something other than an ETPError, the oracle
disagreed, or the stream lost a fresh frame; 0 otherwise.
"""

import argparse
import math
import random
import struct
import sys
import time
import traceback

from protocol import auth, errors, frame, message

NOW_MS = 1767225600000  # the receiver's clock; the valid frames are sealed at this time
RECEIVER = 1001  # the battery whose Codec.open is fuzzed
KEYS = {7: b"seven-" * 6, 9: b"nine--" * 6}  # its pair keys with senders 7 and 9, by their ids
GROUP = b"group-" * 6
OUTCOMES = (
    "accepted", "BadLength", "BadHeader", "UnknownKey", "BadTag",
    "UnknownType", "BadValue", "Expired", "Replay", "OTHER",
)  # fmt: skip
SHOW = 5  # failures printed in full
JUNK_SENDERS = (11, 12, 13)  # key ids without a key: group frames only

FLOAT_FIELDS = [(index, high) for index, _name, high in message._FLOAT_BOUNDS]
SPECIAL_FLOATS = (
    math.nan, -math.nan, math.inf, -math.inf, -0.0, -1.0, -5e-324, 5e-324, 1e308, -1e308,
    100.0, math.nextafter(100.0, math.inf), message.MAX_PRICE, message.MAX_ENERGY,
    math.nextafter(message.MAX_ENERGY, math.inf), message.MAX_VOLTAGE, 1500.0000000000002,
)  # fmt: skip


def sample_messages(ids):
    """One valid message of each of the 10 types (fresh message_ids from ids)."""
    m = message
    return [
        m.register(ids.next(), 1001, 13.5, 9.25, m.HEALTH_GOOD, 402.5, 5.0),
        m.query(ids.next(), 0, 20.0),
        m.query_response(ids.next(), 1001, 18.0, 6.0, 50.0, 9.25, m.HEALTH_DEGRADED, 401.0, 5.0),
        m.bid(ids.next(), 1001, 21.5, 6.0),
        m.bid_accept(ids.next(), 1001, 21.5, 21.5, 6.0),
        m.bid_confirm(ids.next(), 1001, 21.5, 6.0, 3.0),
        m.bid_reject(ids.next(), 1001, 12.0, 18.0, m.REJECT_BELOW_RESERVE),
        m.terminate(ids.next(), 1001, m.TERM_TIMEOUT),
        m.device_failure(ids.next(), 1001, m.FAIL_INVERTER, m.HEALTH_FAULT, 3.0, 0.0),
        m.bess_status(ids.next(), 1001, 13.5, 9.0, 100.0, m.HEALTH_POOR, 399.0, 0.0),
    ]


class Fuzzer:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.keyring = auth.Keyring(KEYS, group=GROUP)  # the receiver's
        self.ids = message.MessageIds(NOW_MS)
        self.sealers = [  # each sender holds its pair key under the receiver's id
            frame.Codec(auth.Keyring({RECEIVER: key}, group=GROUP), key_id=k, peer=RECEIVER)
            for k, key in KEYS.items()
        ]
        self.templates = sample_messages(self.ids)
        self.seeds = []  # valid frames: unicast from 7 and 9, group from 9
        for msg in self.templates:
            for sealer in self.sealers:
                self.seeds.append(sealer.seal(msg, NOW_MS))
            self.seeds.append(self.sealers[1].seal(msg, NOW_MS, group=True))
        self.fields = [  # (header, body) of each seed, as lists
            (
                list(struct.unpack_from(frame.HEADER_FORMAT, data)),
                list(message.decode(data[frame.HEADER_SIZE : frame.SIGNED_SIZE])),
            )
            for data in self.seeds
        ]
        self.recent = list(self.seeds)  # valid frames to replay
        self.kinds = (
            ("bitflip", 14, self.bitflip), ("bytes", 12, self.replace_bytes),
            ("truncate", 6, self.truncate), ("extend", 6, self.extend),
            ("splice", 8, self.splice), ("random", 6, self.random_bytes),
            ("replay", 6, self.replay), ("fresh", 6, self.fresh),
            ("tagged", 36, self.tagged),
        )  # fmt: skip
        self.picks = [k for k, weight, _make in self.kinds for _ in range(weight)]
        self.makers = {k: make for k, _weight, make in self.kinds}

    def next(self):
        """-> (kind, data, the outcomes allowed, or None if any ETPError will do)."""
        kind = self.rng.choice(self.picks)
        data, expect = self.makers[kind]()
        return kind, data, expect

    # --- blind mutations of valid frames --------------------------------------

    def seed(self):
        return bytearray(self.rng.choice(self.seeds))

    def bitflip(self):
        data = self.seed()
        for _ in range(self.rng.randint(1, 8)):
            bit = self.rng.randrange(len(data) * 8)
            data[bit >> 3] ^= 1 << (bit & 7)
        return bytes(data), None

    def replace_bytes(self):
        data = self.seed()
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data), None

    def truncate(self):
        return bytes(self.seed()[: self.rng.randrange(frame.FRAME_SIZE)]), None

    def extend(self):
        tail = self.rng.randbytes(self.rng.randint(1, 64))
        return bytes(self.seed()) + tail, None

    def splice(self):
        a, b = self.seed(), self.seed()
        cut = self.rng.randrange(len(a) + 1)
        if self.rng.random() < 0.7:  # keep the frame size
            return bytes(a[:cut] + b[cut:]), None
        return bytes(a[:cut] + b[self.rng.randrange(len(b) + 1) :]), None

    def random_bytes(self):
        rng = self.rng
        size = frame.FRAME_SIZE if rng.random() < 0.7 else rng.randrange(3 * frame.FRAME_SIZE)
        data = bytearray(rng.randbytes(size))
        if size >= 3 and rng.random() < 0.5:  # a plausible header start
            data[:3] = frame.MAGIC + bytes((frame.VERSION,))
        return bytes(data), None

    # --- valid frames ---------------------------------------------------------

    def replay(self):
        return self.rng.choice(self.recent), None

    def fresh(self):
        rng = self.rng
        msg = rng.choice(self.templates)._replace(message_id=self.ids.next())
        data = rng.choice(self.sealers).seal(msg, NOW_MS, group=rng.random() < 0.3)
        self.recent[rng.randrange(len(self.recent))] = data
        return data, ("accepted",)

    # --- structured frames with valid tags ------------------------------------

    def tagged(self):
        rng = self.rng
        header, body = rng.choice(self.fields)
        header, body = list(header), list(body)
        body[1] = fresh_id = self.ids.next()
        raw_body = None
        wrong_key = False
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            what = rng.randrange(14)
            if what < 4:  # a float field gets a special or random value
                index = rng.choice(FLOAT_FIELDS)[0]
                if rng.random() < 0.6:
                    body[index] = rng.choice(SPECIAL_FLOATS)
                else:
                    body[index] = rng.uniform(-10.0, 1.1) * rng.choice((1.0, 100.0, 1e6))
            elif what == 4:
                body[0] = rng.randrange(256)  # mostly unknown types 10..255
            elif what == 5:
                body[3] = rng.choice((0, 1, 255, rng.randrange(256)))  # ttl
            elif what == 6:
                index = rng.choice((1, 2))  # message_id, device_id
                body[index] = rng.choice((0, 2**64 - 1, rng.getrandbits(64)))
            elif what == 7:
                body[rng.choice((9, 11))] = rng.randrange(256)  # termination_code, health
            elif what == 8:
                header[1] = rng.choice((0, 2, 255, rng.randrange(256)))  # version
            elif what == 9:
                header[2] = rng.randrange(256)  # flags
            elif what == 10:
                # key_id; an unknown one only unicast: every group sender gets
                # a replay window, and a full table evicts the real senders.
                if header[2] == frame.FLAG_GROUP:
                    header[3] = rng.choice((7, 9) + JUNK_SENDERS)
                else:
                    header[3] = rng.choice((7, 9, 0, 8, rng.getrandbits(32)))
            elif what == 11:
                header[4] = self.sent_ms(body[3])
            elif what == 12:
                if rng.random() < 0.2:
                    header[0] = rng.randbytes(2)  # magic
                elif rng.random() < 0.5:
                    raw_body = rng.randbytes(message.BODY_SIZE)
                else:
                    header[5] = rng.getrandbits(64)  # reply_to
            else:
                wrong_key = True
        if raw_body is None:
            raw_body = struct.pack(message.BODY_FORMAT, *body)
        else:
            body = struct.unpack(message.BODY_FORMAT, raw_body)
        if body[1] != fresh_id and header[3] in KEYS:
            # An arbitrary message_id would move a real sender's replay window
            # (2**64-1 closes it for good), so it goes to a throwaway sender:
            # a group frame is accepted from any key_id, a unicast one not.
            header[3] = rng.choice(JUNK_SENDERS)
        signed = struct.pack(frame.HEADER_FORMAT, *header) + raw_body
        group = header[2] == frame.FLAG_GROUP
        key = self.keyring.group if group else self.keyring.get(header[3])
        if key is None or wrong_key:
            key = self.keyring.get(9 if header[3] == 7 else 7)
            wrong_key = True
        return signed + key.tag(signed), self.expect(header, body, wrong_key)

    def sent_ms(self, ttl):
        rng = self.rng
        limit = ttl * 1000 + frame.SKEW_MS  # oldest accepted age
        return rng.choice((
            NOW_MS - limit, NOW_MS - limit - 1, NOW_MS + frame.SKEW_MS,
            NOW_MS + frame.SKEW_MS + 1, 0, 2**64 - 1,
            NOW_MS + rng.randint(-400_000, 400_000),
        ))  # fmt: skip

    def expect(self, header, body, wrong_key):
        """The outcomes Codec.open may give a frame with these fields."""
        magic, version, flags, key_id, sent_ms, _reply_to = header
        if magic != frame.MAGIC or version != frame.VERSION or flags & ~frame.FLAG_GROUP:
            return ("BadHeader",)
        if flags != frame.FLAG_GROUP and key_id not in self.keyring:
            return ("UnknownKey",)
        if wrong_key:
            return ("BadTag",)
        if body[0] > 9:
            return ("UnknownType",)
        for index, high in FLOAT_FIELDS:
            if not 0.0 <= body[index] <= high:
                return ("BadValue",)
        age = NOW_MS - sent_ms
        if age > body[3] * 1000 + frame.SKEW_MS or age < -frame.SKEW_MS:
            return ("Expired",)
        if key_id in KEYS:  # a real sender, and message_ids only ever grow
            return ("accepted",)
        return ("accepted", "Replay")  # a throwaway sender's window may be anywhere


class Tally:
    def __init__(self):
        self.counts = {}  # (kind, outcome) -> n
        self.failures = []  # (what, kind, data, text)
        self.n_failures = 0

    def add(self, kind, outcome):
        key = (kind, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def fail(self, what, kind, data, text):
        self.n_failures += 1
        if len(self.failures) < SHOW:
            self.failures.append((what, kind, bytes(data), text))

    def total(self, outcome=None, kind=None):
        return sum(
            n
            for (k, o), n in self.counts.items()
            if (outcome is None or o == outcome) and (kind is None or k == kind)
        )


def open_one(codec, kind, data, expect, tally):
    try:
        got = codec.open(data, NOW_MS)
    except errors.ETPError as exc:
        outcome = type(exc).__name__
    except Exception:
        tally.add(kind, "OTHER")
        tally.fail("exception", kind, data, traceback.format_exc())
        return
    else:
        outcome = "accepted"
        body = bytes(data[frame.HEADER_SIZE : frame.SIGNED_SIZE])
        if message.encode(got.message) != body:
            tally.fail("re-encode", kind, data, "accepted %r re-encodes differently" % (got,))
    tally.add(kind, outcome)
    if expect is not None and outcome not in expect:
        tally.fail("oracle", kind, data, "expected %s, got %s" % (" or ".join(expect), outcome))


def frame_ids(data):
    """-> (key_id, group, message_id) of a valid frame."""
    group, key_id, _sent_ms, _reply_to = frame.parse_header(data)
    message_id = struct.unpack_from(">Q", data, frame.HEADER_SIZE + 1)[0]
    return key_id, group, message_id


class Stream:
    """Inputs back to back through one StreamDecoder, in random-size chunks."""

    def __init__(self, keyring, rng):
        self.decoder = frame.StreamDecoder(frame.Codec(keyring, key_id=RECEIVER))
        self.rng = rng
        self.pending = bytearray()
        self.inputs = self.fed = self.recovered = self.fresh = self.lost = 0
        self.errors = {}
        self.tally = Tally()
        self.owed = {}  # (key_id, group, message_id) of streamed fresh frames -> frame

    def finish(self):
        self.flush()
        self.lost = len(self.owed)
        for data in self.owed.values():
            self.tally.fail("lost", "stream", data, "a valid frame was not recovered")

    def add(self, data, fresh):
        self.inputs += 1
        self.pending += data
        if fresh:  # a new valid frame: the decoder must find it, whatever surrounds it
            self.fresh += 1
            self.owed[frame_ids(data)] = data
        if len(self.pending) >= 4096:
            self.flush()

    def flush(self):
        data, self.pending = bytes(self.pending), bytearray()
        pos = 0
        while pos < len(data):
            size = self.rng.randint(1, 2 * frame.FRAME_SIZE)
            self.feed(data[pos : pos + size])
            pos += size

    def feed(self, chunk):
        self.fed += len(chunk)
        try:
            self.decoder.feed(chunk)
            for _ in range(4 * len(self.decoder._buf) + 8):  # each step drops bytes
                try:
                    got = self.decoder.next(NOW_MS)
                    if got is None:
                        return
                    self.recovered += 1
                    self.owed.pop((got.key_id, got.group, got.message.message_id), None)
                except errors.ETPError as exc:
                    name = type(exc).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
            self.tally.fail("stuck", "stream", chunk, "next() did not return None")
        except Exception:
            self.tally.fail("exception", "stream", chunk, traceback.format_exc())


def show_failures(tally, label):
    for what, kind, data, text in tally.failures:
        print("--- %s: %s (%s input, %d bytes): %s" % (label, what, kind, len(data), data.hex()))
        print(text.rstrip())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="inputs (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--stream", type=float, default=0.1, help="fraction also streamed (default 0.1)"
    )
    args = parser.parse_args(argv)

    fuzzer = Fuzzer(args.seed)
    codec = frame.Codec(fuzzer.keyring, key_id=RECEIVER)
    tally = Tally()
    stream = Stream(fuzzer.keyring, random.Random(args.seed + 1))
    rng = fuzzer.rng
    step = max(1, args.n // 10)
    start = time.perf_counter()
    for i in range(1, args.n + 1):
        kind, data, expect = fuzzer.next()
        if rng.random() < args.stream:
            stream.add(data, kind == "fresh")
        form = rng.random()
        if form < 0.05:
            data = bytearray(data)
        elif form < 0.1:
            data = memoryview(data)
        open_one(codec, kind, data, expect, tally)
        if i % step == 0:
            print(
                "fuzz: %3d%%  %s inputs, %.1f s, %s other exceptions"
                % (100 * i // args.n, format(i, ","), time.perf_counter() - start,
                   format(tally.total("OTHER"), ",")),
                file=sys.stderr, flush=True,
            )  # fmt: skip
    stream.finish()
    elapsed = time.perf_counter() - start

    kinds = [k for k, _weight, _make in fuzzer.kinds]
    print("%-9s" % "input" + "".join("%12s" % o for o in OUTCOMES) + "%12s" % "total")
    for kind in kinds + [None]:
        cells = [tally.total(o, kind) for o in OUTCOMES] + [tally.total(None, kind)]
        print("%-9s" % (kind or "total") + "".join("%12s" % format(c, ",") for c in cells))
    errs = ", ".join("%s %s" % (k, format(v, ",")) for k, v in sorted(stream.errors.items()))
    print(
        "stream: %s inputs, %s bytes in random chunks -> %s frames recovered; errors: %s"
        % (format(stream.inputs, ","), format(stream.fed, ","), format(stream.recovered, ","),
           errs or "none")
    )  # fmt: skip
    show_failures(tally, "decoder")
    show_failures(stream.tally, "stream")

    other = tally.total("OTHER")
    wrong = tally.n_failures - other
    clean = args.n - other
    print(
        "fuzz: %s mutated frames in %.1f s: %s rejected or accepted cleanly (accepted %s), "
        "%s other exceptions, %s oracle/re-encode mismatches; stream: %s frames recovered "
        "from %s inputs, %s of %s fresh frames lost, %s other exceptions"
        % (format(args.n, ","), elapsed, format(clean, ","), format(tally.total("accepted"), ","),
           format(other, ","), format(wrong, ","), format(stream.recovered, ","),
           format(stream.inputs, ","), format(stream.lost, ","), format(stream.fresh, ","),
           format(stream.tally.n_failures - stream.lost, ","))
    )  # fmt: skip
    return 1 if tally.n_failures or stream.tally.n_failures else 0


if __name__ == "__main__":
    sys.exit(main())
