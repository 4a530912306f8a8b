"""Keys, tags and replay protection for ETP frames.

Keys are per pair of parties (protocol/pairing.py has the scheme, its labels
and the derivation, which only CPython parties run): a Keyring holds this node's
pair key with each peer it trusts, by the peer's key id, and the group key.

HMAC-SHA256 (RFC 2104) written out, because MicroPython has hashlib.sha256 but
no hmac module. The key's inner and outer pads are hashed once per key, not
once per frame: on CPython the hash states are kept and copied (~0.7 us per
tag); MicroPython's sha256 cannot be copied, so there the padded key bytes are
kept instead (two short hashes per tag).
"""

import hashlib

from protocol.compat import const, unhexlify
from protocol.errors import Replay

TAG_SIZE = const(16)  # HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5)
MIN_KEY_SIZE = const(16)
_BLOCK = const(64)
_CAN_COPY = hasattr(hashlib.sha256(), "copy")


class HmacKey:
    """One secret key, ready to tag messages. Never printed: repr hides it."""

    def __init__(self, secret):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_KEY_SIZE:
            raise ValueError("a key must be at least %d random bytes" % MIN_KEY_SIZE)
        if len(secret) > _BLOCK:
            secret = hashlib.sha256(secret).digest()
        secret = bytes(secret) + bytes(_BLOCK - len(secret))
        inner = bytes(b ^ 0x36 for b in secret)
        outer = bytes(b ^ 0x5C for b in secret)
        if _CAN_COPY:
            inner, outer = hashlib.sha256(inner), hashlib.sha256(outer)
        self._pads = (inner, outer)  # the inner and outer pads (or their hash states)

    def tag(self, data):
        """The truncated HMAC-SHA256 of data (bytes or memoryview)."""
        return self.digest(data)[:TAG_SIZE]

    def digest(self, data):
        """The whole HMAC-SHA256 of data (32 bytes)."""
        inner, outer = self._pads
        if _CAN_COPY:
            h = inner.copy()
            h.update(data)
            o = outer.copy()
            o.update(h.digest())
            return o.digest()
        h = hashlib.sha256(inner)
        h.update(data)
        o = hashlib.sha256(outer)
        o.update(h.digest())
        return o.digest()

    def __repr__(self):
        return "<HmacKey (secret hidden)>"


class Keyring:
    """The keys a node holds: the pair key of each peer it trusts, by the peer's
    key id, and the group key.

    A frame names its sender by key id. A unicast frame is tagged with the pair
    key of its sender and receiver, so the receiver checks it with the key it
    holds under the sender's id; multicast frames (GROUP flag) with the group
    key, which every member holds, so a group frame proves membership, not identity.
    """

    def __init__(self, keys=None, group=None):
        self._keys = {}
        self.group = None if group is None else HmacKey(group)
        for key_id, secret in (keys or {}).items():
            self.add(key_id, secret)

    def add(self, key_id, secret):
        if not 0 <= key_id <= 0xFFFFFFFF:
            raise ValueError("key id %r is not a u32" % (key_id,))
        self._keys[key_id] = HmacKey(secret)

    def get(self, key_id):
        return self._keys.get(key_id)

    def __contains__(self, key_id):
        return key_id in self._keys

    def __len__(self):
        return len(self._keys)

    def remove(self, key_id):
        """Trust this peer no more (revocation): its frames fail from now on."""
        self._keys.pop(key_id, None)

    def __iter__(self):
        return iter(list(self._keys))

    @classmethod
    def from_json(cls, data):
        """{"keys": {"<id>": "<hex>"}, "group": "<hex>"} -> Keyring (a key file's content)."""
        if not isinstance(data, dict):
            raise ValueError("a key file holds a JSON object")
        keys = {}
        for key_id, secret in (data.get("keys") or {}).items():
            try:
                keys[int(key_id)] = unhexlify(secret)
            except (TypeError, ValueError):
                raise ValueError("key %r: ids are integers, keys hex" % (key_id,)) from None
        group = data.get("group")
        return cls(keys, None if group is None else unhexlify(group))


WINDOW = const(64)
_MASK = (1 << WINDOW) - 1


class ReplayGuard:
    """Per-sender sliding window over message_id (as IPsec's anti-replay, RFC 4303).

    A message_id is accepted once, if it is above the highest seen or within
    the WINDOW ids below it and not yet seen; older ids are refused. Call
    admit() only for authenticated frames, so a forger cannot move a window.

    Memory: one window per sender. For unicast frames the senders are the
    keyring's, so max_senders=None (no limit) is safe. Group frames can name
    any sender, so their guard has a limit: when full, the sender heard from
    longest ago is dropped, and `evicted_ms` remembers when; a frame from an
    unknown sender sent before that moment might belong to a dropped window
    and is refused.
    """

    def __init__(self, max_senders=None, not_before_ms=-1):
        self.max_senders = max_senders
        self._windows = {}  # sender -> [highest id, bitmap of seen ids, last sent_ms]
        self.evicted_ms = -1
        # A node that boots sets this to its boot time: windows kept in RAM are gone
        # and persisted marks may lag, so anything sent before the boot is refused.
        self.not_before_ms = not_before_ms

    def admit(self, sender, message_id, sent_ms):
        """Record message_id for sender, or raise Replay (and record nothing)."""
        if sent_ms < self.not_before_ms:
            raise Replay("frame from %r was sent before this node started" % (sender,))
        window = self._windows.get(sender)
        if window is None:
            if sent_ms <= self.evicted_ms:
                raise Replay("sender %r: frame predates a dropped replay window" % (sender,))
            windows = self._windows
            if self.max_senders is not None and len(windows) >= self.max_senders:
                oldest = None  # drop the sender heard from longest ago
                for other, seen in windows.items():
                    if oldest is None or seen[2] < windows[oldest][2]:
                        oldest = other
                self.evicted_ms = max(self.evicted_ms, windows.pop(oldest)[2])
            windows[sender] = [message_id, 1, sent_ms]
            return
        high = window[0]
        if message_id > high:
            shift = message_id - high
            window[1] = ((window[1] << shift) | 1) & _MASK if shift < WINDOW else 1
            window[0] = message_id
        else:
            offset = high - message_id
            if offset >= WINDOW:
                raise Replay("message_id %d is older than the replay window" % message_id)
            if (window[1] >> offset) & 1:
                raise Replay("message_id %d was already received" % message_id)
            window[1] |= 1 << offset
        if sent_ms > window[2]:
            window[2] = sent_ms

    def marks(self):
        """{sender: highest message_id} — the high-water marks worth persisting."""
        return {sender: window[0] for sender, window in self._windows.items()}

    def restore(self, marks, now_ms=0):
        """Reload persisted marks: every id at or below a mark counts as seen."""
        for sender, high in marks.items():
            self._windows[sender] = [high, _MASK, now_ms]
