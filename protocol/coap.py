"""CoAP (RFC 7252) for the hub's resources: messages, request and response
authentication, and the contract list. Shared by the hub (hub/integrations/coap.py,
which leaves the messages to aiocoap) and the battery's client
(firmware/coap_client.py), and run unchanged on MicroPython and CPython.

Only what the client needs: the 4-byte header, token, options in ascending
order with extended deltas and lengths, payload marker. Malformed input
raises CoapError (a ValueError) on both runtimes, never struct.error.

Authentication (option AUTH, 65003: experimental range, critical and
unsafe-to-forward, so a node that cannot check it must refuse the message):

  request   key id u32 | ts_ms u64 | nonce u32 | tag 16            32 bytes, big-endian
            tag = HMAC(device key, "GBq1" code key_id ts_ms nonce
                       path-length u16 path payload)
  response  hub ms u64 | tag 16                                      24 bytes
            tag = HMAC(device key, "GBr1" code key_id ts_ms nonce
                       hub_ms path-length u16 path payload)

The key is the battery's CoAP pair key with the hub (protocol.auth: derived from
the hub's master secret with LABEL_COAP, so it serves no other protocol; truncated
HMAC-SHA256); its key id is its device id. A response's tag covers the
request's key id, timestamp and nonce, so it answers that request and no
other; hub_ms grows with every response, so a device takes only newer
notifications. path is the Uri-Path segments joined by "/" ("contracts/1001").

Contract list (GET /contracts/<device>, content format 42):

  version u8 (1) | count u8 | omitted u8 (binding or recent contracts left out)
  count x (buyer u32 | confirm id u64 | price f64 c/kWh | length u8 |
           MarketContract.to_bytes(): terms and state)

About 80 bytes a contract; the hub stops before 1024 bytes (RFC 7252 4.6: a
message fits 1152), so a response never needs block-wise transfer.

Heap: every name a module defines (globals, arguments, attributes, string
constants) is interned in the battery's heap for good, and the firmware sits
near the count where MicroPython adds a 7 KB table (firmware/app.py). So only
what the battery uses is public here; the hub takes the other numbers
(content formats, 4.03, 4.04) from aiocoap, and integers are packed with
int.to_bytes where a struct format string would be one more name.
"""

import struct
from collections import namedtuple

from protocol.compat import const, equal_tags

CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

EMPTY = const(0)
GET = const(1)
CONTENT = const(0x45)  # 2.05: the class in the top 3 bits, the detail below
UNAUTHORIZED = const(0x81)  # 4.01

OBSERVE = const(6)
URI_PATH = const(11)
MAX_AGE = const(14)
AUTH = const(65003)

_MAX_PAYLOAD = const(1024)
_REQUEST_AUTH = const(32)
_RESPONSE_AUTH = const(24)
_LIST_VERSION = const(1)
_ENTRY_SIZE = const(21)  # buyer u32, confirm id u64, price f64, length u8

Message = namedtuple("Message", ("mtype", "code", "mid", "token", "options", "payload"))


class CoapError(ValueError):
    """Not a CoAP message we can read, or an answer the hub did not give."""


def code_str(code):
    """0x45 -> "2.05", as CoAP writes codes."""
    return "%d.%02d" % (code >> 5, code & 31)


def _be(value, size):
    return value.to_bytes(size, "big")


def _int(data):
    return int.from_bytes(data, "big")


# --- messages ------------------------------------------------------------------------


def encode(mtype, code, mid, token=b"", options=(), payload=b""):
    """options: (number, bytes) pairs in ascending number order (repeated options,
    such as the Uri-Path segments, keep their order: MicroPython's sort is not stable,
    so the caller orders them)."""
    if len(token) > 8:
        raise CoapError("a token has at most 8 bytes")
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8 & 0xFF, mid & 0xFF))
    out += token
    last = 0
    for number, value in options:
        if number < last:
            raise CoapError("option %d after %d: options go in ascending order" % (number, last))
        at = len(out)
        out.append(0)
        head = 0
        for part in (number - last, len(value)):  # delta, then length: 4 bits each
            head <<= 4
            if part < 13:
                head |= part
            elif part < 269:
                head |= 13
                out.append(part - 13)
            else:
                head |= 14
                out += _be(part - 269, 2)
        out[at] = head
        out += value
        last = number
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def decode(data):
    """bytes -> Message, or CoapError naming what is wrong."""
    n = len(data)
    if n < 4:
        raise CoapError("a CoAP message has a 4-byte header, got %d bytes" % n)
    first = data[0]
    tkl = first & 15
    if first >> 6 != 1:
        raise CoapError("CoAP version %d, not 1" % (first >> 6))
    if tkl > 8 or n < 4 + tkl:
        raise CoapError("bad token length %d" % tkl)
    i = 4 + tkl
    number = 0
    options = []
    payload = b""
    while i < n:
        head = data[i]
        i += 1
        if head == 0xFF:
            if i == n:
                raise CoapError("payload marker without a payload")
            payload = bytes(data[i:])
            break
        delta, i = _extended(head >> 4, data, i)
        length, i = _extended(head & 15, data, i)
        number += delta
        if i + length > n:
            raise CoapError("option %d runs past the end" % number)
        options.append((number, bytes(data[i : i + length])))
        i += length
    return Message(first >> 4 & 3, data[1], data[2] << 8 | data[3], bytes(data[4 : 4 + tkl]),
                   options, payload)  # fmt: skip


def _extended(head, data, i):
    if head < 13:
        return head, i
    if head == 13 and i < len(data):
        return data[i] + 13, i + 1
    if head == 14 and i + 1 < len(data):
        return _int(data[i : i + 2]) + 269, i + 2
    raise CoapError("bad option header (nibble %d)" % head)


def option(options, number):
    """The first value of option `number`, or None."""
    for num, value in options:
        if num == number:
            return value
    return None


def uint(value):
    """An integer option's value: big-endian, no leading zero bytes (0 is empty)."""
    size = 0
    while value >> 8 * size:
        size += 1
    return _be(value, size)


def to_uint(value):
    if value is None or len(value) > 4:
        raise CoapError("an integer option has 0..4 bytes")
    return _int(value)


def path_options(path):
    """ "contracts/1001" -> Uri-Path options, in order."""
    return [(URI_PATH, part.encode()) for part in path.split("/") if part]


# --- authentication ------------------------------------------------------------------


def _signed(head, code, auth, hub_ms, path, payload):
    """What a tag covers: "GBq1"/"GBr1", code, the request's key id, timestamp and
    nonce (auth[:16]), the hub's ms (responses), path length u16, path, payload."""
    path = path.encode()
    hub = b"" if hub_ms is None else _be(hub_ms, 8)
    return b"".join((head, bytes((code,)), auth[:16], hub, _be(len(path), 2), path, payload))


def sign_request(key, key_id, code, path, sent_ms, nonce, payload=b""):
    """The AUTH option value of a request (key: protocol.auth.HmacKey)."""
    if not (0 <= key_id < 2**32 and 0 <= sent_ms < 2**64 and 0 <= nonce < 2**32):
        raise CoapError("key id, timestamp or nonce out of range")  # not OverflowError
    auth = _be(key_id, 4) + _be(sent_ms, 8) + _be(nonce, 4)
    return auth + key.tag(_signed(b"GBq1", code, auth, None, path, payload))


def request_auth(value):
    """A request's AUTH option -> (key id, ts_ms, nonce); CoapError if malformed."""
    if value is None:
        raise CoapError("no auth option (%d): requests are signed with the device key" % AUTH)
    if len(value) != _REQUEST_AUTH:
        raise CoapError("the auth option has %d bytes, not %d" % (len(value), _REQUEST_AUTH))
    return _int(value[:4]), _int(value[4:12]), _int(value[12:16])


def request_tag_ok(key, value, code, path, payload=b""):
    request_auth(value)
    want = key.tag(_signed(b"GBq1", code, value, None, path, payload))
    return equal_tags(want, value[16:])


def sign_response(key, auth, code, path, hub_ms, payload=b""):
    """The AUTH option value of a response to the request whose AUTH was `auth`."""
    request_auth(auth)
    return _be(hub_ms, 8) + key.tag(_signed(b"GBr1", code, auth, hub_ms, path, payload))


def response_hub_ms(key, auth, code, path, value, payload=b""):
    """hub_ms of an authentic response to the request whose AUTH was `auth`, or None
    (unsigned or forged)."""
    if value is None or len(value) != _RESPONSE_AUTH:
        return None
    hub_ms = _int(value[:8])
    want = key.tag(_signed(b"GBr1", code, auth, hub_ms, path, payload))
    return hub_ms if equal_tags(want, value[8:]) else None


# --- the contract list ---------------------------------------------------------------


def encode_contracts(entries, limit=8, size=_MAX_PAYLOAD, total=None):
    """entries: (MarketContract, buyer, confirm id, price) in order of importance, the
    first of `total` (default: all of them). -> (payload, how many went in): at most
    `limit`, within `size` bytes; the rest are counted as omitted."""
    parts = [b""]  # the header, once the count is known; joined once at the end
    used = 3
    count = 0
    for contract, buyer, confirm_id, price in entries:
        terms = contract.to_bytes()
        used += _ENTRY_SIZE + len(terms)
        if count == limit or used > size:
            break
        parts.append(struct.pack(">IQdB", buyer, confirm_id or 0, price, len(terms)))
        parts.append(terms)
        count += 1
    omitted = (len(entries) if total is None else total) - count
    parts[0] = bytes((_LIST_VERSION, count, min(255, omitted)))
    return b"".join(parts), count


def decode_contracts(payload):
    """-> ([(MarketContract, buyer, confirm id, price)], omitted); CoapError or
    ContractError (both ValueErrors) on a malformed list."""
    from protocol.contract import MarketContract  # the firmware has it loaded already

    if len(payload) < 3 or payload[0] != _LIST_VERSION:
        raise CoapError("not a version %d contract list" % _LIST_VERSION)
    payload = memoryview(payload)  # slices without copies
    out = []
    i = 3
    for _ in range(payload[1]):
        if i + _ENTRY_SIZE > len(payload):
            raise CoapError("contract list cut short")
        buyer, confirm_id, price, size = struct.unpack(">IQdB", payload[i : i + _ENTRY_SIZE])
        i += _ENTRY_SIZE
        if i + size > len(payload):
            raise CoapError("contract list cut short")
        out.append((MarketContract.from_bytes(payload[i : i + size]), buyer, confirm_id, price))
        i += size
    if i != len(payload):
        raise CoapError("%d stray bytes after the contract list" % (len(payload) - i))
    return out, payload[2]
