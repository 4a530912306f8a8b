"""The hub's keys file: every secret the hub uses, kept out of hub.toml.

    {"keys": {"<key id>": "<64 hex>", ...}, "group": "<64 hex>"}

the firmware's format: one key per aggregator (its key_id) and per battery (its
device id), and the multicast group key. Like an ssh key it must be mode 0600;
the hub refuses a file others can read.

`gridbid hub keys` (provision below) makes the file, or adds to it what the
config now names: a key for every aggregator, the group key, a key for every
battery given, and for each battery its share of the secrets as a fragment of
the battery's config.json. No key is ever printed.
"""

import json
import os
import stat
from pathlib import Path

from protocol import auth

KEY_BYTES = 32


class KeysError(ValueError):
    pass


def load(path, aggregator_ids=()):
    """The keyring from the keys file, which must hold every aggregator's key."""
    keyring = auth.Keyring.from_json(_read(path))
    for key_id in aggregator_ids:
        if keyring.get(key_id) is None:
            raise KeysError("the keys file %s has no key for aggregator %d" % (path, key_id))
    return keyring


def _read(path):
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise KeysError(
            "no keys file %s: `gridbid hub keys --config HUB.TOML` makes it" % path
        ) from None
    except OSError as exc:
        raise KeysError("cannot read the keys file %s: %s" % (path, exc.strerror)) from None
    except ValueError:
        raise KeysError("the keys file %s is not valid JSON" % path) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError("the keys file %s is readable by others: chmod 600 it" % path)
    try:
        auth.Keyring.from_json(data)  # the same check the hub and the firmware make
    except (ValueError, TypeError, AttributeError) as exc:
        raise KeysError("the keys file %s: %s" % (path, exc)) from None
    return data


def provision(cfg, battery_ids=(), out_dir=None, template=None, extra=None):
    """Make or extend cfg's keys file; returns what was added, as lines to print.

    Keys already in the file are kept (batteries and aggregators already hold
    them). Each battery in battery_ids gets <out_dir>/battery-<id>.json (0600):
    the settings its config.json must share with this hub, its own key, the
    aggregators' keys and the group key, over the battery's own settings: those
    of its battery-<id>.json when there is one (a re-run keeps them), else the
    template's (a config.json with the battery's "devices", e.g.
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
    data = _read(path) if path.exists() else {"keys": {}}
    keys = data.setdefault("keys", {})
    added = []
    if data.get("group") is None:
        data["group"] = _new_key()
        added.append("the group key")
    for what, key_id in [("aggregator", a["key_id"]) for a in cfg["aggregators"]] + [
        ("battery", b) for b in battery_ids
    ]:
        if str(key_id) not in keys:
            keys[str(key_id)] = _new_key()
            added.append("a key for %s %d" % (what, key_id))
    _write_private(path, data)
    lines = ["%s: %s" % (path, ", ".join(added) if added else "already complete")]
    for battery, target in targets.items():
        settings = {**base, **own.get(battery, {}), **battery_settings(cfg, data, battery)}
        _write_private(target, {**settings, **(extra or {})})
        lines.append("%s: battery %d's keys and hub settings for its config.json%s" % (
            target, battery, ", its own settings kept" if battery in own else ""))  # fmt: skip
    return lines


def battery_settings(cfg, data, battery_id):
    """What battery_id's config.json must hold to trade with this hub."""
    agg_ids = [str(a["key_id"]) for a in cfg["aggregators"]]
    return {
        "device_id": battery_id,
        "key_id": battery_id,
        "keys": {k: data["keys"][k] for k in [str(battery_id)] + agg_ids},
        "group": data["group"],
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


def _new_key():
    return os.urandom(KEY_BYTES).hex()


def _write_private(path, data):
    """Write-temp-then-rename, created 0600: a crash leaves the old file whole, and
    the secrets are never readable by others, not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KeysError("cannot write %s: %s" % (path, exc.strerror)) from None
