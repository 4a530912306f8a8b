"""Pair keys, diversified: no party can speak for another.

HMAC keys are symmetric (whoever can check a tag can make one), so a key is
shared by exactly two parties: every unicast frame is tagged with the pair key
of its sender and its receiver. A frame for battery B cannot be checked, let
alone replayed, at battery A; a battery's config, read out, opens that
battery's sessions and nothing else.

Pair keys are diversified, as smart cards do it. A party with a master secret M
(an aggregator; the hub) gives the peer with id P the key

    K = HMAC-SHA256(M, label || P as 4 bytes big-endian)      (32 bytes)

The party derives any pair key when it needs it (one secret to guard); the peer
holds one key per party it trusts (firmware config.json "keys"). The label says
what the key is for, so that no key serves two protocols:

    LABEL_ETP     b"gridbid/etp/v1"     aggregator <-> battery ETP frames
    LABEL_COAP    b"gridbid/coap/v1"    hub <-> battery CoAP requests
    LABEL_MARKET  b"gridbid/market/v1"  hub <-> aggregator market sessions

P is the peer's key id (a battery's key id is its device id). The group key,
which every member holds, proves membership only: nothing contractual is taken
from a group frame (firmware/node.py, the hub's discovery).

This module runs on CPython and MicroPython alike, but only the parties with a
master secret (aggregators, the hub) use it: a battery is given its pair keys
(config.json), and never derives one, so its small heap never loads this module.
"""

from protocol.auth import HmacKey

LABEL_ETP = b"gridbid/etp/v1"
LABEL_COAP = b"gridbid/coap/v1"
LABEL_MARKET = b"gridbid/market/v1"


def derive(master, label, peer_id):
    """The pair key (32 bytes) a party with this master secret shares with peer_id.
    master: bytes, or an HmacKey of them (derivations in a row hash its pads once)."""
    if not 0 <= peer_id <= 0xFFFFFFFF:
        raise ValueError("peer id %r is not a u32" % (peer_id,))
    key = master if isinstance(master, HmacKey) else HmacKey(master)
    return key.digest(label + peer_id.to_bytes(4, "big"))


class DerivedKeyring:
    """A party's pair keys, derived from its master secret on first use (derive()).

    Any peer id gets a key: only the peer provisioned with it can use it, so a
    stranger's frames still fail their tag. Derived keys are kept for the
    `cache` peers met first; beyond that (ids an attacker makes up) they are
    derived again per frame, and nothing grows.
    """

    def __init__(self, master, label, group=None, cache=16384):
        self._master = HmacKey(master)
        self.label = label
        self.group = None if group is None else HmacKey(group)
        self._cache = {}
        self._limit = cache

    def get(self, key_id):
        key = self._cache.get(key_id)
        if key is None:
            if not 0 <= key_id <= 0xFFFFFFFF:
                return None
            key = HmacKey(derive(self._master, self.label, key_id))
            if len(self._cache) < self._limit:
                self._cache[key_id] = key
        return key

    def __contains__(self, key_id):
        return 0 <= key_id <= 0xFFFFFFFF

    def __repr__(self):
        return "<DerivedKeyring %s (secret hidden)>" % self.label.decode()
