"""The market API's wire: authenticated JSON messages on one TCP connection per
aggregator and market (hub/market/exchange.py serves it, aggregator/market_client.py
uses it; README "Market API" has the message table).

Frame: a 4-byte big-endian length N (at most MAX_FRAME), then N bytes: a 16-byte tag
and the message, a JSON object with a "type". The length is checked before anything
is read into memory, and nothing of a message is parsed before its tag.

Session (pre-shared key K: the aggregator's market key, which the hub derives from
its master secret, HMAC-SHA256(master, LABEL_MARKET || aggregator id), and gives
the aggregator once: `gridbid hub admit`):

    aggregator -> hub   hello      {"v": 1, "aggregator": id, "nonce": 32 hex}    tag zero
    hub -> aggregator   challenge  {"v": 1, "market": name, "nonce": 32 hex}      tag zero
    both ways, from then on, every message tagged with the session key
        S   = HMAC(K, "gridbid market session" || aggregator nonce || hub nonce)
        tag = HMAC(S, direction || sequence number (u64) || message)[:16]

direction is b"A" (aggregator to hub) or b"H"; each side counts its messages from 0.
So a message proves its sender holds K, belongs to this session (fresh nonces from
both ends) and comes at this place in it: a replayed, reordered, reflected or
altered message fails its tag, and the session ends. The aggregator's first tagged
message proves it to the hub, the hub's first answer proves the hub to it.
"""

import asyncio
import json
import os

from protocol import auth
from protocol.compat import equal_tags

VERSION = 1
MAX_FRAME = 256 * 1024  # what the hub reads: 1000 bid layers fit well below
MAX_FROM_HUB = 16 * 1024 * 1024  # what an aggregator reads: a slot's offers grow with the fleet
TAG_SIZE = auth.TAG_SIZE
NONCE_BYTES = 16
TO_HUB, TO_AGGREGATOR = b"A", b"H"
_ZERO_TAG = bytes(TAG_SIZE)
_SESSION = b"gridbid market session"


class WireError(Exception):
    """The peer broke the wire's rules: the session ends with this reason."""


def new_nonce():
    return os.urandom(NONCE_BYTES).hex()


def session_key(key, aggregator_nonce, hub_nonce):
    """S from K (bytes) and the two nonces (hex, checked)."""
    try:
        a, h = bytes.fromhex(aggregator_nonce), bytes.fromhex(hub_nonce)
    except (TypeError, ValueError):
        raise WireError("a nonce is not hex") from None
    if len(a) != NONCE_BYTES or len(h) != NONCE_BYTES:
        raise WireError("a nonce is not %d bytes" % NONCE_BYTES)
    return auth.HmacKey(key).digest(_SESSION + a + h)


def encode(message):
    """An untagged frame: the handshake's hello and challenge, and a refusal."""
    return _frame(_json(message), _ZERO_TAG)


def _json(message):
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # NaN or infinity: JSON has none
        raise WireError("a message holds a number JSON cannot carry") from None


def _frame(body, tag):
    if len(body) + TAG_SIZE > MAX_FROM_HUB:
        raise WireError("message of %d bytes is over the %d limit" % (len(body), MAX_FROM_HUB))
    return (len(body) + TAG_SIZE).to_bytes(4, "big") + tag + body


def decode(body):
    """A message's bytes -> a dict with a str "type"; WireError if it is not one."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not ours
        raise WireError("not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise WireError("not a message (a JSON object with a type)")
    return message


async def read_frame(reader, limit=MAX_FRAME):
    """-> (tag, body bytes); IncompleteReadError at the end of the stream. The length
    is checked before anything is read into memory."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    if not TAG_SIZE <= size <= limit:
        raise WireError("a frame of %d bytes (the limit is %d)" % (size, limit))
    data = await reader.readexactly(size)
    return data[:TAG_SIZE], data[TAG_SIZE:]


class Session:
    """Seals what one side sends and opens what it receives, once keyed."""

    def __init__(self, key, sending, receiving):
        self._key = auth.HmacKey(key)
        self._out = [sending, 0]
        self._in = [receiving, 0]

    def seal(self, message):
        body = _json(message)
        direction, seq = self._out
        frame = _frame(body, self._key.tag(direction + seq.to_bytes(8, "big") + body))
        self._out[1] = seq + 1
        return frame

    def check(self, tag, body):
        """The next message's tag (it moves the sequence on); WireError if it is bad."""
        direction, seq = self._in
        if not equal_tags(self._key.tag(direction + seq.to_bytes(8, "big") + body), tag):
            raise WireError("bad tag: another key, or a replayed or altered message")
        self._in[1] = seq + 1

    def open(self, tag, body):
        self.check(tag, body)
        return decode(body)


async def hello(reader, writer, aggregator_id, key, timeout_s=10.0):
    """The aggregator's side of the handshake. -> (Session, the hub's challenge)."""
    nonce = new_nonce()
    writer.write(encode({"type": "hello", "v": VERSION, "aggregator": aggregator_id,
                         "nonce": nonce}))  # fmt: skip
    await writer.drain()
    _tag, body = await asyncio.wait_for(read_frame(reader, MAX_FROM_HUB), timeout_s)
    challenge = decode(body)
    if challenge["type"] == "refused":
        raise WireError("the hub refused: %s" % challenge.get("why"))
    if challenge["type"] != "challenge" or challenge.get("v") != VERSION:
        raise WireError("the hub's answer is no challenge of version %d" % VERSION)
    secret = session_key(key, nonce, challenge.get("nonce"))
    return Session(secret, TO_HUB, TO_AGGREGATOR), challenge
