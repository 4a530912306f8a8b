"""An aggregator's identity: its key id, its name and its master secret, in a file of
its own (0600, like an ssh key), on the aggregator's machine:

    {"id": 2, "name": "acme", "master": "<64 hex>"}

The master secret never leaves that file. From it the aggregator derives the pair
key it shares with each battery (protocol/auth.py: HMAC-SHA256(master,
LABEL_ETP || battery id)); the battery holds only that pair key, the hub none.

Enrollment: an owner lets the aggregator trade with a battery by one command on each
side and a file moved between them out of band:

    aggregator:  gridbid aggregator enroll --identity acme.json --battery 1001
                 -> enroll-2-1001.json (0600): the pair key, the aggregator's id and name
    owner:       gridbid device trust --config battery-1001.json enroll-2-1001.json
                 -> the key joins config.json's "keys"

Revoking: `gridbid device revoke --config battery-1001.json --aggregator 2`. The key
leaves config.json; a running battery follows within seconds (firmware/node.py
follow_trust): its session with the aggregator is closed, new bids are refused, and
contracts already made run to their end.
"""

from protocol import pairing
from protocol.compat import unhexlify
from transport import secret_files

ENROLLMENT = "gridbid-enrollment/1"  # the kind of an enrollment file


class IdentityError(ValueError):
    pass


class Identity:
    """Who an aggregator is: key_id, name, and the pair keys its master secret derives.
    repr and str hide the secret."""

    def __init__(self, key_id, name, master):
        self.key_id, self.name = key_id, name
        self._master = master

    def keyring(self, group=None):
        """The aggregator's ETP keys: a pair key per battery, derived when first used."""
        return pairing.DerivedKeyring(self._master, pairing.LABEL_ETP, group)

    def pair_key(self, battery_id):
        return pairing.derive(self._master, pairing.LABEL_ETP, battery_id)

    def __repr__(self):
        return "<Identity %d %s (secret hidden)>" % (self.key_id, self.name)


def _identity(data, where):
    key_id, name, master = data.get("id"), data.get("name"), data.get("master")
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id < 2**32:
        raise IdentityError("%s: id must be a whole number 1..2^32-1" % where)
    if not isinstance(name, str) or not name or len(name) > 64:
        raise IdentityError("%s: name must be a short string" % where)
    try:
        secret = unhexlify(master)
        if len(secret) < 32:
            raise ValueError
    except (TypeError, ValueError):
        raise IdentityError("%s: master must be 32 or more random bytes, hex" % where) from None
    return Identity(key_id, name, secret)


def load(path):
    """The identity in path (0600); IdentityError names what is wrong."""
    try:
        data = secret_files.read(path, "aggregator identity")
    except secret_files.SecretFileError as exc:
        raise IdentityError(
            "%s (`gridbid aggregator new --id N --name NAME --out FILE` makes one)" % exc
        ) from None
    return _identity(data, path)


def create(path, key_id, name):
    """A new identity file with a fresh master secret; never over an existing one (its
    batteries hold keys derived from the old secret)."""
    import os

    if os.path.exists(path):
        raise IdentityError("%s exists: an identity is made once (batteries trust it)" % path)
    data = {"id": key_id, "name": name, "master": secret_files.new_secret()}
    identity = _identity(data, path)  # the same checks as load
    secret_files.write(path, data)
    return identity


def read_enrollment(path):
    """An enrollment file, checked: its aggregator and battery ids and its key.
    ValueError (SecretFileError) names what is wrong."""
    got = secret_files.read(path, "enrollment")
    if got.get("kind") != ENROLLMENT:
        raise IdentityError("%s is not an enrollment file (`gridbid aggregator enroll` "
                            "makes them)" % path)  # fmt: skip
    for name in ("aggregator", "battery"):
        value = got.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
            raise IdentityError("%s names no valid %s id" % (path, name))
    try:
        if len(unhexlify(got.get("key"))) < 32:
            raise ValueError
    except (TypeError, ValueError):
        raise IdentityError("%s holds no valid key" % path) from None
    return got


def enrollment(identity, battery_id):
    """What the owner of battery_id adds to its config.json to trust this aggregator."""
    if isinstance(battery_id, bool) or not 0 < battery_id < 2**32:
        raise IdentityError("battery ids are 1..2^32-1, not %r" % (battery_id,))
    return {
        "kind": ENROLLMENT, "aggregator": identity.key_id, "name": identity.name,
        "battery": battery_id, "key": identity.pair_key(battery_id).hex(),
    }  # fmt: skip
