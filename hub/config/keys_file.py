"""The hub's keys file: the hub's own secrets, kept out of hub.toml.

    {"master": "<64 hex>", "group": "<64 hex>"}

master: the hub's master secret. The hub shares two pair keys with each battery,
derived from it (protocol/auth.py): HMAC-SHA256(master, LABEL_COAP || battery id)
signs the battery's CoAP requests and the hub's answers, and the LABEL_ETP one seals
the receipts (outcome reports) and status the battery sends the hub. group: the multicast group
key, which every battery holds (it proves membership only). Like an ssh key the file
must be mode 0600; the hub refuses a file others can read.

The hub holds no aggregator's key: an aggregator's pair keys with batteries are
derived from its own master secret, on its own machine (aggregator/identity.py).

`gridbid hub keys` (provision below) makes the file, and for each battery given its
share of the hub's settings as a battery-<id>.json: its CoAP pair key, the group key,
the slot grid and ports. No key is ever printed. A keys file of the old shared-key
format ({"keys": {...}}: one key per party, aggregators' included) is refused with
the command that rewrites it.
"""

import json
import re
from pathlib import Path

from protocol import pairing
from protocol.compat import unhexlify
from transport import secret_files

OLD_FORMAT = (
    "the keys file %s holds the old shared keys (one per party, aggregators' included, so "
    "a battery's flash forged any aggregator): `gridbid hub keys --config HUB.TOML --battery "
    "ID ...` rewrites it and the batteries' configs; then enroll each battery with its "
    "aggregators (`gridbid aggregator enroll`, `gridbid device trust`)"
)
KEY_SIZE = 32  # bytes of each secret (secret_files.new_secret)
HEX_KEY = re.compile(r"[0-9a-fA-F]{%d}" % (2 * KEY_SIZE))


class KeysError(ValueError):
    pass


class HubKeys:
    """The hub's secrets: the group key and the CoAP pair keys of batteries."""

    def __init__(self, master, group):
        self.group = group
        self.coap = pairing.DerivedKeyring(master, pairing.LABEL_COAP)
        self.etp = pairing.DerivedKeyring(master, pairing.LABEL_ETP, group)  # and the group key
        self._master = master

    def coap_key(self, battery_id):
        """The pair key battery_id's config.json holds for CoAP (coap_key)."""
        return pairing.derive(self._master, pairing.LABEL_COAP, battery_id)

    def market_key(self, aggregator_id):
        """The key of aggregator_id's market sessions (`gridbid hub admit` gives it)."""
        return pairing.derive(self._master, pairing.LABEL_MARKET, aggregator_id)

    def etp_key(self, battery_id):
        """The pair key of the hub and a battery for ETP frames (receipts, status)."""
        return pairing.derive(self._master, pairing.LABEL_ETP, battery_id)

    def __repr__(self):
        return "<HubKeys (secrets hidden)>"


def load(path):
    """The hub's keys from its keys file."""
    data = _read(path)
    if data.get("master") is None:
        raise KeysError(OLD_FORMAT % path if data.get("keys") else
                        "the keys file %s has no master secret: `gridbid hub keys` makes it"
                        % path)  # fmt: skip
    return HubKeys(unhexlify(data["master"]), unhexlify(data["group"]))


def _read(path):
    try:
        data = secret_files.read(path, "keys file")
    except secret_files.SecretFileError as exc:
        why = str(exc)
        if not Path(path).exists():
            why = "no keys file %s: `gridbid hub keys --config HUB.TOML` makes it" % path
        raise KeysError(why) from None
    unknown = set(data) - {"master", "group", "keys"}
    if unknown:
        raise KeysError("the keys file %s has unknown entries %s" % (path, sorted(unknown)))
    for name in ("master", "group"):
        value = data.get(name)
        if value is None and name == "master":
            continue  # the old format: load() says what to run
        if not (isinstance(value, str) and HEX_KEY.fullmatch(value)):
            raise KeysError("the keys file %s: %s must be %d random bytes as %d hex digits "
                            "(`gridbid hub keys` makes them)"
                            % (path, name, KEY_SIZE, 2 * KEY_SIZE))  # fmt: skip
    return data


def provision(cfg, battery_ids=(), out_dir=None, template=None, extra=None):
    """Make or extend cfg's keys file, and the identity file of each hosted aggregator
    that has none; returns what was done, as lines to print.

    The master and group keys already in the file are kept (batteries hold keys made
    from them). Each battery in battery_ids gets <out_dir>/battery-<id>.json (0600):
    the settings its config.json must share with this hub (its CoAP pair key, the
    group key, the slot grid, ports), over the battery's own settings: those of its
    battery-<id>.json when there is one (a re-run keeps them, and the aggregators it
    trusts), else the template's (a config.json with the battery's "devices", e.g.
    firmware/config.example.json: with it, a config the battery boots with).
    extra: more settings for each battery's file, over all (tools/flash.py
    provision adds the Wi-Fi and the CoAP address).
    """
    base = read_template(template)
    out_dir = Path(out_dir) if out_dir else Path(cfg["keys_file"]).parent
    if battery_ids and not out_dir.is_dir():
        raise KeysError("no folder %s for the batteries' files" % out_dir)
    targets = {b: out_dir / ("battery-%d.json" % b) for b in battery_ids}
    # Read before anything is written: a bad file changes nothing anywhere.
    own = {b: _json_object(t, "the battery config") for b, t in targets.items() if t.exists()}
    path = Path(cfg["keys_file"])
    data = _read(path) if path.exists() else {}
    added = []
    if data.pop("keys", None):
        added.append("the old shared keys dropped (batteries: re-provisioned below; "
                     "aggregators: enroll again)")  # fmt: skip
    for name in ("master", "group"):
        if data.get(name) is None:
            data[name] = secret_files.new_secret()
            added.append("the %s key" % name)
    _write_private(path, data)
    lines = ["%s: %s" % (path, ", ".join(added) if added else "already complete")]
    lines += _hosted_identities(cfg)
    keys = HubKeys(unhexlify(data["master"]), unhexlify(data["group"]))
    for battery, target in targets.items():
        mine = own.get(battery, {})
        if str(battery) in (mine.get("keys") or {}):  # the old format's keys: void now
            mine = dict(mine, keys={})
        settings = {**base, **mine, **battery_settings(cfg, keys, battery)}
        _write_private(target, {**settings, **(extra or {})})
        lines.append("%s: battery %d's keys and hub settings for its config.json%s" % (
            target, battery, ", its own settings kept" if battery in own else ""))  # fmt: skip
    return lines


def _hosted_identities(cfg):
    """An identity file for each aggregator hub.toml hosts that has none: the
    aggregator's own secret, which the hub process holds only because it hosts it."""
    from aggregator import identity

    lines = []
    for agg in cfg["aggregators"]:
        if not Path(agg["identity_file"]).exists():
            try:
                identity.create(agg["identity_file"], agg["key_id"], agg["name"])
            except ValueError as exc:  # IdentityError, SecretFileError
                raise KeysError(str(exc)) from None
            lines.append("%s: a new identity for hosted aggregator %s (its own master secret)"
                         % (agg["identity_file"], agg["name"]))  # fmt: skip
    return lines


def battery_settings(cfg, keys, battery_id):
    """What battery_id's config.json must hold to trade in this hub's market (keys:
    HubKeys). The aggregators it trusts come from enrollment, not from here."""
    return {
        "device_id": battery_id,
        "key_id": battery_id,
        "coap_key": keys.coap_key(battery_id).hex(),
        "hub_key": keys.etp_key(battery_id).hex(),  # its receipts and status for the hub
        "hub_id": cfg["key_id"],
        "group": keys.group.hex(),
        "market_maker": cfg["name"],
        "group_addr": cfg["group_addr"],
        "group_port": cfg["group_port"],
        "tcp_port": cfg["device_port"],
        "slot_s": cfg["slot_s"],
        "gate_s": cfg["gate_s"],
    }


def battery_configs(keys_path):
    """{device id: config} of the batteries' configs this hub provisioned
    (battery-<id>.json beside its keys file)."""
    found = {}
    for path in sorted(Path(keys_path).parent.glob("battery-*.json")):
        try:
            with open(path) as f:
                data = json.load(f)
            found[int(data["device_id"])] = data
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a battery config this hub wrote: its own check says why
    return found


def battery_sources(keys_path):
    """{device id: source}: what each owner declared charges the battery."""
    return {d: c.get("source", "grid") for d, c in battery_configs(keys_path).items()}


def read_template(path):
    return {} if path is None else _json_object(path, "the template")


def _json_object(path, what):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise KeysError("cannot read %s %s: %s" % (what, path, exc.strerror)) from None
    except ValueError:
        raise KeysError("%s %s is not valid JSON" % (what, path)) from None
    if not isinstance(data, dict):
        raise KeysError("%s %s must hold a JSON object" % (what, path))
    return data


def _write_private(path, data):
    try:
        secret_files.write(path, data)
    except secret_files.SecretFileError as exc:
        raise KeysError(str(exc)) from None
