"""Wallet files and the map of batteries to their owners' public keys.

A wallet file is solana-keygen's format: a JSON array of the 64 bytes of an ed25519
keypair (secret then public). Like the hub's keys file (hub/config/keys_file.py), it must be
mode 0600: a file others can read is refused, not used. The folder (settings `wallets`)
holds the clearing house's, clearing.json: the payer of every contract, from the margin
aggregators deposit with their own wallets (margin.py; the hub holds none of theirs);
with the LiteSVM backend also the mint's keys and made-up owners' keys (provision.py).
(aggregator-<key_id>.json: a payer per aggregator, as the uploader can also run.)

A Wallet never shows its secret: repr() and str() give the public key only, so a log
line or a traceback cannot leak it (solders' Keypair prints its secret as base58).

Batteries' owners need only a public key: settings `owners` ({device id: base58}) and/or
`owners_file` (the same as JSON) say where each battery's payments go.
"""

import json
import os
import stat
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey


class WalletError(ValueError):
    pass


class Wallet:
    __slots__ = ("pubkey", "_keypair", "path")

    def __init__(self, keypair, path=None):
        self._keypair = keypair
        self.pubkey = keypair.pubkey()
        self.path = path

    @property
    def keypair(self):
        """The solders Keypair, to sign with (never print it)."""
        return self._keypair

    def __repr__(self):
        return "<Wallet %s>" % self.pubkey

    __str__ = __repr__


def read(path):
    """The Wallet in a keypair file; WalletError unless it is mode 0600 and well formed."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise WalletError("no wallet file %s" % path) from None
    except OSError as exc:
        raise WalletError("cannot read the wallet file %s: %s" % (path, exc.strerror)) from None
    except ValueError:
        raise WalletError("the wallet file %s is not JSON" % path) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WalletError("the wallet file %s is readable by others: chmod 600 it" % path)
    if (
        not isinstance(data, list)
        or len(data) != 64
        or not all(isinstance(b, int) and 0 <= b < 256 for b in data)
    ):
        raise WalletError("the wallet file %s is not a solana-keygen keypair (64 bytes)" % path)
    try:
        keypair = Keypair.from_bytes(bytes(data))
    except ValueError:
        raise WalletError("the wallet file %s holds an invalid keypair" % path) from None
    if bytes(keypair.pubkey()) != bytes(data[32:]):
        raise WalletError("the wallet file %s: its public half does not match" % path)
    return Wallet(keypair, path)


def create(path):
    """A new keypair in a new 0600 file (O_EXCL: an existing wallet is never replaced)."""
    path = Path(path)
    keypair = Keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(list(bytes(keypair)), f)
    return Wallet(keypair, path)


def read_or_create(path, create_missing):
    if create_missing and not Path(path).exists():
        return create(path)
    return read(path)


def clearing_path(folder):
    """The clearing house's wallet: the operator's, paying owners from aggregators'
    margin (margin.py)."""
    return Path(folder) / "clearing.json"


def aggregator_path(folder, key_id):
    return Path(folder) / ("aggregator-%d.json" % key_id)


def payers(folder, key_ids, create_missing=False):
    """{key_id: Wallet} for the aggregators; WalletError names the first missing or bad."""
    return {k: read_or_create(aggregator_path(folder, k), create_missing) for k in key_ids}


def pubkey(text, where):
    try:
        return Pubkey.from_string(text)
    except (TypeError, ValueError):
        raise WalletError("%s: %r is not a base58 public key" % (where, text)) from None


def owners_map(table, where="owners"):
    """{device id: Pubkey} from a {"<device id>": "<base58>"} mapping."""
    if not isinstance(table, dict):
        raise WalletError("%s must map device ids to public keys" % where)
    out = {}
    for device, key in table.items():
        if not str(device).isdigit():
            raise WalletError("%s: %r is not a device id" % (where, device))
        out[int(device)] = pubkey(key, "%s[%s]" % (where, device))
    return out


def read_owners(path):
    try:
        with open(path) as f:
            return owners_map(json.load(f), str(path))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WalletError("cannot read %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise WalletError("%s: %s" % (path, exc)) from None


class Owners:
    """device id -> owner's Pubkey. With `make` (a folder), a battery with no owner gets a
    made-up one there: owner-<device>.json (0600), its public key added to owners.json
    (the LiteSVM demo, where nobody registered the batteries' owners)."""

    def __init__(self, table=None, path=None, make=None):
        self.path = Path(path) if path else None
        self.known = read_owners(self.path) if self.path else {}
        self.known.update(table or {})
        self.make = Path(make) if make else None

    def get(self, device):
        key = self.known.get(device)
        if key is None and self.make is not None:
            self.make.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = read_or_create(self.make / ("owner-%d.json" % device), True).pubkey
            self.known[device] = key
            self._save()
        return key

    def _save(self):
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(d): str(k) for d, k in sorted(self.known.items())}))
        os.replace(tmp, self.path)  # write-then-rename: a crash leaves the old or the new
