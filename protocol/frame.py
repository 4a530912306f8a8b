"""Authenticated ETP frames over datagrams and byte streams.

Frame layout (124 bytes, big-endian):

    offset size field
    0      2    magic      b"ET"
    2      1    version    1
    3      1    flags      bit 0 GROUP: tagged with the group key; others must be 0
    4      4    key_id     the sender's id, which names its key
    8      8    sent_ms    sender's clock, ms since 1970-01-01 UTC
    16     8    reply_to   message_id this frame answers (0 = none)
    24     84   body       the ETP message (message.py)
    108    16   tag        HMAC-SHA256(key, bytes 0..107), first 16 bytes

key: the pair key of the sender and the receiver (protocol/auth.py), so a tag
binds both ends: the receiver checks it with the key it holds under the
sender's key_id, and no third party holds that key. Group frames use the group
key and prove membership only.

sent_ms gives the body's ttl a time base; reply_to ties a BID_ACCEPT to its
BID and a BID_CONFIRM to its BID_ACCEPT (the 14 body fields have no such link).

ttl: a receiver accepts a frame only while
    sent_ms - skew_ms  <=  now_ms  <=  sent_ms + ttl * 1000 + skew_ms
so ttl is the frame's lifetime in whole seconds after it was sent, and
skew_ms (default 2000) the clock difference tolerated between two nodes.
ttl = 0 leaves only the skew allowance. Older frames raise Expired, frames
dated in the future too.

Checks, in order: length, header, key, tag, body, expiry, replay. Nothing
is parsed from an unauthenticated body, and the replay window moves only
for authentic, fresh frames.

Streams (TCP): frames are sent back to back with no other framing. Every
frame has the same size and starts with magic+version, so StreamDecoder
buffers partial reads and, after garbage, resynchronises on the next
magic+version whose frame authenticates.

Raw "paper" mode: the bare 84-byte body, no header and no tag, for
interoperating with other ETP implementations. It has no authentication,
expiry or replay protection, so it is off unless a Codec is made with raw=True.
"""

import struct
from collections import namedtuple

from protocol import message
from protocol.auth import ReplayGuard
from protocol.compat import const, equal_tags
from protocol.errors import BadHeader, BadLength, BadTag, BadValue, ETPError, Expired, UnknownKey

MAGIC = b"ET"
VERSION = const(1)
FLAG_GROUP = const(1)
HEADER_FORMAT = ">2sBBIQQ"
HEADER_SIZE = const(24)
SIGNED_SIZE = const(108)  # header + body: what the tag covers
FRAME_SIZE = const(124)
SKEW_MS = const(2000)
# Group senders tracked by default: each window costs ~150 bytes on a 32-bit
# board; 64 covers a device's aggregators and neighbours. The hub passes more.
GROUP_SENDERS = const(64)
_U64 = const(2**64 - 1)

Frame = namedtuple("Frame", ("key_id", "group", "sent_ms", "reply_to", "message"))


class Codec:
    """Seals and opens one node's frames.

    key_id: this node's own id, named in every frame it seals.
    keyring: the pair keys by peer id (auth.Keyring, or pairing.DerivedKeyring for
    a party with a master secret) and the group key.
    peer: whom seal() seals for when it names nobody (a codec for one session).
    replay, group_replay: ReplayGuards for unicast and group frames; pass the
    same ones to every Codec of a node that shares its peers. They are kept
    apart so that a group member, who can name any sender, cannot crowd a
    peer's unicast window out of the bounded group table.
    """

    def __init__(
        self, keyring, key_id=0, skew_ms=SKEW_MS, replay=None, group_replay=None, raw=False,
        peer=None,
    ):  # fmt: skip
        self.keyring = keyring
        self.key_id = key_id
        self.peer = peer
        self.skew_ms = skew_ms
        self.replay = ReplayGuard() if replay is None else replay
        self.group_replay = ReplayGuard(GROUP_SENDERS) if group_replay is None else group_replay
        self.raw = raw
        self.frame_size = message.BODY_SIZE if raw else FRAME_SIZE

    def seal(self, msg, now_ms, reply_to=0, group=False, to=None):
        """Message -> frame bytes for the peer `to`, tagged with our pair key, or for
        the group (group=True), tagged with the group key."""
        body = message.encode(msg)
        if self.raw:
            return body
        if group:
            key = self.keyring.group
            if key is None:
                raise UnknownKey("no group key to seal with")
        else:
            if to is None:
                to = self.peer
            key = None if to is None else self.keyring.get(to)
            if key is None:
                raise UnknownKey("no pair key for peer %r: it is not trusted" % (to,))
        # MicroPython's struct truncates out-of-range ints silently: check first.
        for name, value, high in (
            ("key_id", self.key_id, 0xFFFFFFFF),
            ("sent_ms", now_ms, _U64),
            ("reply_to", reply_to, _U64),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise BadValue("%s=%r is not a whole number in 0..%d" % (name, value, high))
        flags = FLAG_GROUP if group else 0
        head = struct.pack(HEADER_FORMAT, MAGIC, VERSION, flags, self.key_id, now_ms, reply_to)
        signed = head + body
        return signed + key.tag(signed)

    def open(self, data, now_ms):
        """Frame bytes -> Frame. Raises only ETPError subclasses, on any bytes-like input."""
        if self.raw:
            return Frame(0, False, 0, 0, message.decode(data))
        group, key_id, sent_ms, reply_to = parse_header(data)
        key = self.keyring.group if group else self.keyring.get(key_id)
        if key is None:
            raise UnknownKey("no %s key for sender %d" % ("group" if group else "pair", key_id))
        view = memoryview(data)
        if not equal_tags(key.tag(view[:SIGNED_SIZE]), view[SIGNED_SIZE:]):
            raise BadTag("bad tag from sender %d: tampered, or another key" % key_id)
        msg = message.decode(view[HEADER_SIZE:SIGNED_SIZE])
        age = now_ms - sent_ms
        if age > msg[3] * 1000 + self.skew_ms:
            raise Expired("frame from %d is %d ms old, ttl is %d s" % (key_id, age, msg[3]))
        if age < -self.skew_ms:
            raise Expired("frame from %d is dated %d ms in the future" % (key_id, -age))
        (self.group_replay if group else self.replay).admit(key_id, msg[1], sent_ms)
        return Frame(key_id, group, sent_ms, reply_to, msg)


def parse_header(data):
    """Check a frame's length and header -> (group, key_id, sent_ms, reply_to).

    Authenticates nothing: the values are only claims until the tag is checked.
    """
    if len(data) != FRAME_SIZE:
        raise BadLength("frame is %d bytes, ETP frames are %d" % (len(data), FRAME_SIZE))
    magic, version, flags, key_id, sent_ms, reply_to = struct.unpack_from(HEADER_FORMAT, data)
    if magic != MAGIC:
        raise BadHeader("bad magic %r (want %r)" % (magic, MAGIC))
    if version != VERSION:
        raise BadHeader("unsupported version %d (this node speaks %d)" % (version, VERSION))
    if flags & ~FLAG_GROUP:
        raise BadHeader("reserved flag bits set: 0x%02x" % flags)
    return flags == FLAG_GROUP, key_id, sent_ms, reply_to


class StreamDecoder:
    """Frames out of a byte stream that arrives in arbitrary pieces.

    feed() the bytes as they come, then take the complete frames with
    `for got in decoder.frames(now_ms, handler): ...`; each bad frame or run
    of garbage is dropped and handed to handler(exc), and decoding goes on.
    next() is the step underneath: a Frame, None (needs more bytes), or an
    ETPError raised after the bad bytes were dropped. Bytes just fed are always
    kept (with a partial frame before them); older undecoded bytes beyond
    max_buffer are dropped and counted in `skipped`, so the buffer stays within
    max(max_buffer, the largest read + one frame).
    """

    def __init__(self, codec, max_buffer=8 * FRAME_SIZE):
        self.codec = codec
        self.max_buffer = max(max_buffer, 2 * codec.frame_size)
        self._buf = b""
        self.skipped = 0  # bytes of garbage dropped so far

    def feed(self, data):
        buf = self._buf + data
        excess = len(buf) - max(self.max_buffer, len(data) + self.codec.frame_size)
        if excess > 0:  # a peer sending faster than we decode, or pure garbage
            buf = buf[excess:]
            self.skipped += excess
        self._buf = buf

    def frames(self, now_ms, handler=None):
        """Yield every complete frame buffered; pass dropped ones' errors to handler."""
        while True:
            try:
                got = self.next(now_ms)
            except ETPError as exc:
                if handler is not None:
                    handler(exc)
                continue
            if got is None:
                return
            yield got

    def next(self, now_ms):
        buf = self._buf
        size = self.codec.frame_size
        if self.codec.raw:  # no sync marker: fixed-size records, in order
            if len(buf) < size:
                return None
            self._buf = buf[size:]
            return self.codec.open(buf[:size], now_ms)
        start = buf.find(b"ET\x01")  # MAGIC and VERSION: where a frame may start
        if start < 0:  # no frame start; keep a tail that may be the start of one
            start = len(buf)
            for k in (2, 1):
                if buf[-k:] == b"ET\x01"[:k]:
                    start -= k
                    break
        if start:
            self._buf = buf = buf[start:]
            self.skipped += start
            raise BadHeader("skipped %d bytes that are not an ETP frame" % start)
        if len(buf) < size:
            return None
        try:
            frame = self.codec.open(buf[:size], now_ms)
        except (BadHeader, UnknownKey, BadTag):
            # Not authentic: maybe a false sync inside garbage, so step over
            # the sync bytes only; a real frame may start within these bytes.
            self._buf = buf[1:]
            self.skipped += 1
            raise
        except ETPError:
            self._buf = buf[size:]  # authentic but unacceptable: drop it whole
            raise
        self._buf = buf[size:]
        return frame
