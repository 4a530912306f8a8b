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

import os

import jsonfile

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
    # Sockets (a board's lwIP has ~10-16): max_peers authenticated aggregators, and apart
    # from them max_unauthenticated connections not yet authenticated; plus the listener, the two
    # group sockets, CoAP, the Modbus TCP links (0-3) and one more while a connection is
    # accepted. With the defaults and one Modbus link: 8 + 2 + 1 + 2 + 1 + 1 + 1 = 16.
    "max_peers": 8,
    "max_unauthenticated": 2,
    "auth_ms": 5000,  # a connection that sends no authentic frame by then (from accept) is closed
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
    # The board's clock (board_clock.py; unused where the board profile says
    # host_keeps_time): the NTP servers, "host" or "host:port", asked in turn; a resync
    # this often, moving a set clock by at most ntp_max_step_ms (a farther answer is refused).
    "ntp_servers": ["pool.ntp.org"],
    "ntp_timeout_ms": 2000,
    "ntp_resync_s": 3600,
    "ntp_max_step_ms": 1000,
}
# registers_dir (the register maps) defaults to the board profile's, else "registers".

# jsonfile.read() refuses a file too large or too deep before parsing it, and check() every
# value, each within the range below, so that no value can stop a task later (a max_kw no
# ETP frame can carry once stopped discovery). Only start-up uses this module (app.py
# drops it): its tables are locals, and its few names shared ones (every name a module
# holds stays interned for good on MicroPython, and a board has room for ~620).


class ConfigError(ValueError):
    pass


def load(path):
    """Read and check a config file -> dict with defaults filled in."""
    try:
        stamp = os.stat(path)  # before reading: node.follow_trust sees any later change
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc)) from None
    cfg = check(jsonfile.read(path, ConfigError), path)
    cfg["stamp"] = (stamp[1], stamp[6], stamp[8])  # inode, size, mtime
    data_dir, why = cfg["data_dir"], None
    try:
        if not os.stat(data_dir)[0] & 0x4000:  # S_IFDIR
            why = "is a file, not a folder"
    except OSError:  # none yet (a board's fresh flash): made here, or said why not
        try:
            os.mkdir(data_dir)
        except OSError as exc:
            why = "cannot be made: %s" % exc
    if why:
        raise ConfigError("%s: data_dir %s %s" % (path, data_dir, why))
    return cfg


def _number(where, name, value, start, stop, unit="", kind=(int, float)):
    """value is a number (kind) in start..stop; NaN and inf (1e999 in JSON) are not."""
    if isinstance(value, bool) or not isinstance(value, kind) or not start <= value <= stop:
        whole = "a whole number" if kind is int else "a number, whole or not,"
        raise ConfigError("%s: %s must be %s %s..%s%s, not %.40r"
                          % (where, name, whole, start, stop, unit, value))  # fmt: skip


def check(data, where="config"):
    from protocol import auth
    from protocol.compat import unhexlify

    if not isinstance(data, dict):
        raise ConfigError("%s: must be a JSON object" % where)
    # Every number a battery reads: (lowest, highest, unit). Whole numbers are ints.
    ranges = {
        "group_port": (1, 65535, int), "tcp_port": (1, 65535, int),
        "reserve_floor": (0, 10000, ""),  # the reserve reaches 1.9x it; a frame 100000
        "min_soc_pct": (0, 100, ""), "sell_pct": (0, 100, ""),
        "max_kw": (0, 10000, ""), "slot_s": (1, 86400, int), "gate_s": (0, 86399, int),
        "slots_ahead": (1, 96, int), "auction_ms": (0, 60000, ""),
        "confirm_ms": (100, 600000, ""),
        "max_peers": (1, 16, int), "max_unauthenticated": (1, 8, int),  # sockets: see DEFAULTS
        "auth_ms": (100, 60000, ""),
        "status_ms": (100, 2000, " ms (ETP's BESS_STATUS deadline is 2000 ms)"),
        "register_s": (1, 3600, ""), "hub_status_s": (1, 3600, ""),
        "hub_id": (0, 2**32 - 1, int), "poll_ms": (10, 60000, ""),
        "tick_ms": (10, 60000, ""),
        "alarm_poll_ms": (10, 1000, " ms (a DeviceFailure goes out within 200 ms)"),
        "success_share": (0, 1, ""), "flush_s": (0, 86400, ""),
        "heap_report_s": (0.1, 3600, ""), "coap_reconcile_s": (1, 86400, ""),
        "coap_ack_ms": (100, 60000, ""),
        "ntp_timeout_ms": (100, 10000, ""), "ntp_resync_s": (1, 86400, ""),
        "ntp_max_step_ms": (0, 2000, " ms (ETP's skew: a step past it is a wrong clock)"),
    }  # fmt: skip
    known = "device_id key_id keys group coap_key hub_key devices registers_dir wifi coap_hub \
coap_adopt".split()  # one text: its words are not interned names
    for name in data:
        if name not in DEFAULTS and name not in ranges and name not in known:
            raise ConfigError("%s: unknown setting %.40r (a typo?)" % (where, name))
    cfg = dict(DEFAULTS)
    cfg.update(data)
    _number(where, "device_id", cfg.get("device_id"), 1, 2**64 - 1, "", int)
    _number(where, "key_id", cfg.get("key_id"), 1, 2**32 - 1, "", int)
    for name, (start, stop, unit) in ranges.items():
        if unit is int:
            _number(where, name, cfg.get(name, start), start, stop, "", int)
        else:
            _number(where, name, cfg.get(name, start), start, stop, unit)
    for name in ("bind", "group_addr"):  # dotted IPv4; the group's a multicast one
        value = cfg[name]
        parts = value.split(".") if isinstance(value, str) else ()
        ok = len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts)
        if not ok or (name == "group_addr" and not 224 <= int(parts[0]) <= 239):
            raise ConfigError("%s: %s must be %s, not %.40r" % (
                where, name, "a multicast IPv4 address (224-239.x.x.x)" if name == "group_addr"
                else "an IPv4 address (this device's)", value))  # fmt: skip
    for name in ("data_dir", "registers_dir", "market_maker", "coap_hub"):
        value = cfg.get(name, where)
        if not isinstance(value, str) or not 0 < len(value) <= 200:
            raise ConfigError("%s: %s must be a short text, not %.40r" % (where, name, value))
    value = cfg["ntp_servers"]  # 1-4 of "host" or "host:port" (board_clock.py)
    ok = isinstance(value, list) and 0 < len(value) <= 4
    for entry in value if ok else ():
        bad = not isinstance(entry, str) or not 0 < len(entry) <= 200
        if bad or " " in entry or entry.startswith(":"):  # (entry[0] would intern a name)
            ok = False
            break
        host, _, port = entry.rpartition(":")
        if host and not (port.isdigit() and 0 < int(port) < 65536):
            ok = False
    if not ok:
        raise ConfigError('%s: ntp_servers must list 1 to 4 servers, "host" or "host:port", '
                          "not %.60r" % (where, value))  # fmt: skip
    value = cfg.get("wifi")  # wifi.py's {"ssid", "password"}: two texts
    ok = value is None or isinstance(value, dict) and sorted(value) == "password ssid".split()
    if not ok or value and not all(isinstance(v, str) for v in value.values()):
        raise ConfigError('%s: wifi must be {"ssid": "...", "password": "..."}' % where)
    keys = cfg.setdefault("keys", {})
    if not isinstance(keys, dict):
        raise ConfigError("%s: keys must map aggregator ids to pair keys" % where)
    if str(cfg["key_id"]) in keys:
        raise ConfigError("%s: %s" % (where, OLD_KEYS % (cfg["key_id"], cfg["device_id"])))
    if not isinstance(cfg.get("group"), str):
        raise ConfigError("%s: group (the multicast group key, hex) is missing" % where)
    value = cfg.get("devices")
    if not isinstance(value, dict):
        raise ConfigError("%s: devices (meter, battery, inverter over Modbus) is missing" % where)
    for name in ("meter", "battery", "inverter"):
        if not isinstance(value.get(name), dict):
            raise ConfigError("%s: devices.%s is missing" % (where, name))
    for name in value:
        if name not in ("meter", "battery", "inverter", "link_timeout_ms"):
            raise ConfigError("%s: devices.%.40s: unknown setting (a typo?)" % (where, name))
    _number(where, "devices.link_timeout_ms", value.get("link_timeout_ms", 1000), 10, 60000)
    for role in ("meter", "battery", "inverter"):  # a link and a map (devices.open_plant)
        device, here = value[role], ".".join(("devices", role))
        for name, field in device.items():
            if name in ("map", "host", "path"):
                if not isinstance(field, str) or not 0 < len(field) <= 200:
                    raise ConfigError("%s: %s.%s must be a short text" % (where, here, name))
            elif name == "port":
                _number(where, here + "." + name, field, 1, 65535, "", int)
            elif name == "unit":
                _number(where, here + "." + name, field, 1, 247, "", int)
            elif name == "timeout_ms":
                _number(where, here + "." + name, field, 10, 60000)
            elif name in ("uart", "baud", "tx", "rx", "de"):  # serial_port.py: numbers
                _number(where, here + "." + name, field, 0, 1000000, "", int)
            elif name != "link":
                raise ConfigError("%s: %s.%.40s: unknown setting (a typo?)" % (where, here, name))
        link = device.get("link")
        if link not in ("tcp", "rtu"):
            raise ConfigError("%s: %s.link must be tcp or rtu, not %.40r" % (where, here, link))
        need = "host" if link == "tcp" else "uart" if "uart" in device else "path"
        for name in ("map", "unit", need):
            if name not in device:
                raise ConfigError("%s: %s needs %s" % (where, here, name))
    if cfg["source"] not in ("solar", "wind", "hydro", "grid"):
        raise ConfigError("%s: source is solar, wind, hydro or grid" % where)
    if not cfg["gate_s"] < cfg["slot_s"]:
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
