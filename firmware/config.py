"""config.json: what makes one battery controller this battery. Checked whole on
boot, so a broken file gives one clear message instead of a crash later.

    {
      "device_id": 1001,                 battery id in ETP bodies (u64)
      "key_id": 1001,                    this device's key id in frame headers (u32)
      "keys": {"1": "<hex>", "2": "<hex>"},   the pair key of each aggregator it trusts
      "group": "<hex>",                  multicast group key (membership only)
      "coap_key": "<hex>",               the pair key with the hub's CoAP (if coap_hub)
      "hub_key": "<hex>", "hub_id": 0,   the pair key with the market maker for ETP: the
                                         receipts and status it is sent (node.send_hub)
      "devices": {"meter": {...}, "battery": {...}, "inverter": {...}}   (Modbus; devices.py)
      ... and the optional settings in DEFAULTS below.
    }
"""

import json
import os

from protocol import auth
from protocol.compat import unhexlify

OLD_KEYS = (
    "keys holds a key under this battery's own id (%d): the old shared-key scheme, in which "
    "one battery's flash forges any aggregator. Re-provision: `gridbid hub keys --config "
    "HUB.TOML --battery %d`, then `gridbid aggregator enroll` for each aggregator it trusts"
)

DEFAULTS = {
    "bind": "0.0.0.0",  # this device's address; the demo gives each device its own 127.0.0.x
    "group_addr": "239.255.70.1",  # organisation-local multicast scope
    "group_port": 47400,
    "tcp_port": 47401,
    "reserve_floor": 14.0,  # c/kWh (reserve.py)
    "min_soc_pct": 20.0,  # never sell below this state of charge
    "sell_pct": 100.0,  # share of the energy above min_soc_pct offered
    "max_kw": 5.0,  # inverter power the contracts may ask for
    "slot_s": 900,  # market slot length (60 in the demo)
    "gate_s": 300,
    "slots_ahead": 1,  # offer the next slot only (as the market maker trades); more: sell ahead
    "market_maker": "hub",
    "auction_ms": 300,  # bids are collected this long after the first one
    "confirm_ms": 5000,  # an accepted bid not confirmed by then is void
    "max_peers": 8,  # TCP aggregators at once (a board's lwIP has ~10-16 sockets)
    "auth_ms": 5000,  # a connection that sends no authentic frame by then is closed
    "status_ms": 1000,  # BESS_STATUS period (the paper allows 2000 ms)
    "register_s": 30,  # Register on the group this often
    "hub_status_s": 5,  # BESS_STATUS to the market maker this often (with hub_key)
    "hub_id": 0,  # the market maker's key id (hub.toml key_id)
    "poll_ms": 1000,  # full Modbus poll
    "tick_ms": 1000,  # contracts start, stop and count metered energy on this beat
    "alarm_poll_ms": 50,  # BMS alarm poll: DeviceFailure must go out within 200 ms
    "success_share": 0.95,  # delivered / promised energy that counts as success
    "data_dir": "data",  # contracts and replay marks (LittleFS on a board)
    "flush_s": 30,  # metered energy is written to flash at most this often (wear)
    # What charges this battery, as its owner declares it: solar, wind, hydro or grid.
    # The hub reads it from the provisioned config (battery-<id>.json) to mint renewable
    # energy certificates (hub/integrations/platform/rec.py); the firmware does not act on it.
    "source": "grid",
}
# registers_dir (the register maps) defaults to the board profile's, else "registers".
_NUMBERS = [k for k, v in DEFAULTS.items() if isinstance(v, (int, float))]


class ConfigError(ValueError):
    pass


def load(path):
    """Read and check a config file -> dict with defaults filled in."""
    try:
        stamp = os.stat(path)  # before reading: node.follow_trust sees any later change
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc)) from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError("%s is not valid JSON (torn or hand-edited?)" % path) from None
    cfg = check(data, path)
    cfg["stamp"] = (stamp[1], stamp[6], stamp[8])  # inode, size, mtime
    return cfg


def check(data, where="config"):
    if not isinstance(data, dict):
        raise ConfigError("%s: must be a JSON object" % where)
    cfg = dict(DEFAULTS)
    cfg.update(data)
    for name, high in (("device_id", 2**64 - 1), ("key_id", 2**32 - 1)):
        value = cfg.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= high:
            raise ConfigError("%s: %s must be a whole number 1..%d" % (where, name, high))
    for name in _NUMBERS:
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError("%s: %s must be a non-negative number, not %r" % (where, name, value))
    if not 0 <= cfg["min_soc_pct"] <= 100 or not 0 <= cfg["sell_pct"] <= 100:
        raise ConfigError("%s: min_soc_pct and sell_pct are percentages (0..100)" % where)
    if cfg["tick_ms"] < 10 or cfg["poll_ms"] < 10:
        raise ConfigError("%s: tick_ms and poll_ms must be at least 10" % where)
    if not 1 <= cfg["slots_ahead"] <= 96:
        raise ConfigError("%s: slots_ahead must be 1..96" % where)
    if not 1 <= cfg["max_peers"] <= 16:
        raise ConfigError("%s: max_peers must be 1..16 (sockets are scarce on a board)" % where)
    if cfg["status_ms"] > 2000:
        raise ConfigError("%s: status_ms above 2000 breaks ETP's BESS_STATUS deadline" % where)
    keys = cfg.setdefault("keys", {})
    if not isinstance(keys, dict):
        raise ConfigError("%s: keys must map aggregator ids to pair keys" % where)
    if str(cfg["key_id"]) in keys:
        raise ConfigError("%s: %s" % (where, OLD_KEYS % (cfg["key_id"], cfg["device_id"])))
    if not isinstance(cfg.get("group"), str):
        raise ConfigError("%s: group (the multicast group key, hex) is missing" % where)
    if not isinstance(cfg.get("devices"), dict):
        raise ConfigError("%s: devices (meter, battery, inverter over Modbus) is missing" % where)
    for kind in ("meter", "battery", "inverter"):
        if not isinstance(cfg["devices"].get(kind), dict):
            raise ConfigError("%s: devices.%s is missing" % (where, kind))
    if cfg["source"] not in ("solar", "wind", "hydro", "grid"):
        raise ConfigError("%s: source is solar, wind, hydro or grid" % where)
    if not isinstance(cfg["slot_s"], int) or not 0 <= cfg["gate_s"] < cfg["slot_s"]:
        raise ConfigError("%s: slot_s must be whole seconds above gate_s" % where)
    # The market's slot grid (protocol/contract.py slot_length): the hub may move it on
    # at a set time (governance), and coap_client.py then keeps the one it heard.
    cfg["slot_grid"] = (cfg["slot_s"], 0, cfg["slot_s"])
    name = "keys"
    try:
        cfg["keyring"] = auth.Keyring.from_json(cfg)
        if cfg.get("coap_key") is not None:
            name = "coap_key"
            cfg["coap_key"] = auth.HmacKey(unhexlify(cfg["coap_key"]))
        if cfg.get("hub_key") is not None:
            name = "hub_key"
            if str(cfg["hub_id"]) in keys:
                raise ValueError("hub_id %d is an aggregator's id in keys" % cfg["hub_id"])
            # The market maker is sent receipts under this key; it never opens a session
            # or trades (node.received refuses its id on TCP).
            cfg["keyring"].add(cfg["hub_id"], unhexlify(cfg["hub_key"]))
    except (TypeError, ValueError) as exc:
        raise ConfigError("%s: %s: %s" % (where, name, exc)) from None
    return cfg
