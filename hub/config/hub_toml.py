"""hub.toml: what makes a hub this hub (see hub/hub.example.toml). Checked whole at
start-up: a broken file stops the hub with one line naming the fault.

Secrets are not in it: `keys_file` names a JSON file (mode 0600, like an ssh key)
holding every key the hub uses, in the firmware's format:

    {"keys": {"<key id>": "<64 hex>", ...}, "group": "<64 hex>"}

one key per aggregator (its key_id) and per battery (its device id), and the
group key (hub/config/keys_file.py; `gridbid hub keys` makes it).
"""

import tomllib
from pathlib import Path

from hub.config import keys_file

HUB_DEFAULTS = {
    "name": "hub",  # the market maker's name in slot names
    "store": "gridbid-hub.sqlite",
    "keys_file": "hub-keys.json",
    "group_addr": "239.255.70.1",
    "group_port": 47400,
    "interface": "0.0.0.0",  # where the group is joined (127.0.0.1 for a loopback demo)
    "device_port": 47401,  # the batteries' ETP TCP port (firmware tcp_port)
    "slot_s": 900,  # market slot length; the batteries' slot_s must match
    "gate_s": 300,  # trading stops this long before a slot starts
    "discovery_s": 3.0,  # Query retries at start-up before the first slot
    "answer_s": 1.0,  # how long a slot's Query waits for QueryResponses
    "bind_timeout_s": 2.0,  # a battery's answer to a trade's Bid
    "p_balance": 16.0,  # price signal (hub/market/price_signal.py), c/kWh
    "p_con": 6.0,
    "k": 1.0,
}
AGGREGATOR_DEFAULTS = {
    "strategy": "value",  # value | adaptive | utility
    "value": 20.0,  # resale value, c/kWh (value and adaptive)
    "spread": 0.0,  # value is drawn per offer from [value, value + spread]
    "margin": 1.0,  # c/kWh kept
    "bidders": 3,  # the competition a value bidder assumes
    "price": None,  # utility: posted price (None: the battery's reserve)
    "budget": None,  # cents per slot (None: unlimited)
    "capacity": None,  # kWh per slot (None: unlimited)
    "max_kw": None,  # power asked of batteries (None: what each offers)
}
STRATEGIES = ("value", "adaptive", "utility")
# Optional integrations: a [section] in hub.toml turns one on. Each module has
# DEFAULTS (every setting) and check(settings, base, where) -> settings, raising
# ValueError that names the fault; the hub then calls its start(hub, settings),
# which returns an object with `async close()` (hub/service.py).
INTEGRATIONS = {
    "mqtt": "hub.integrations.mqtt.bridge",
    "coap": "hub.integrations.coap",
    "web": "hub.integrations.web",
    "settlement": "hub.integrations.settlement",
    "platform": "hub.integrations.platform",
}


class ConfigError(ValueError):
    pass


def load(path, keys=True):
    """hub.toml checked; keys=False skips the keys file (`gridbid hub keys` makes it)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc.strerror)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (path, exc)) from None
    return check(data, base=path.parent, where=str(path), keys=keys)


def check(data, base=Path("."), where="hub config", keys=True):
    unknown = set(data) - {"hub", "aggregator"} - set(INTEGRATIONS)
    if unknown:
        raise ConfigError("%s: unknown sections %s" % (where, sorted(unknown)))
    hub = dict(HUB_DEFAULTS)
    unknown = set(data.get("hub", {})) - set(HUB_DEFAULTS)
    if unknown:
        raise ConfigError("%s: [hub] has unknown settings %s" % (where, sorted(unknown)))
    hub.update(data.get("hub", {}))
    for name, default in HUB_DEFAULTS.items():
        if isinstance(default, (int, float)) and not _number(hub[name]):
            raise ConfigError("%s: hub.%s must be a non-negative number" % (where, name))
    if not 0 <= hub["gate_s"] < hub["slot_s"]:
        raise ConfigError("%s: hub.gate_s must be >= 0 and below hub.slot_s" % where)
    if hub["gate_s"] <= hub["bind_timeout_s"]:  # buying must end before the slot starts
        raise ConfigError("%s: hub.gate_s must be above hub.bind_timeout_s" % where)
    if hub["slot_s"] - hub["gate_s"] < hub["answer_s"] + 0.5:
        raise ConfigError("%s: hub.slot_s - gate_s leaves no time to collect offers" % where)
    for name in ("store", "keys_file"):
        hub[name] = str(base / hub[name])
    aggs = data.get("aggregator")
    if not isinstance(aggs, list) or not aggs:
        raise ConfigError("%s: at least one [[aggregator]] is needed" % where)
    hub["aggregators"] = [_aggregator(a, i, where) for i, a in enumerate(aggs, 1)]
    ids = [a["key_id"] for a in hub["aggregators"]]
    if len(set(ids)) != len(ids):
        raise ConfigError("%s: aggregators' key_id values must differ" % where)
    hub["integrations"] = {
        name: _integration(name, data[name], base, where) for name in INTEGRATIONS if name in data
    }
    if keys:
        try:
            hub["keyring"] = keys_file.load(hub["keys_file"], ids)
        except keys_file.KeysError as exc:
            raise ConfigError(str(exc)) from None
    return hub


def _integration(name, settings, base, where):
    import importlib

    module = importlib.import_module(INTEGRATIONS[name])
    if not isinstance(settings, dict):
        raise ConfigError("%s: [%s] must be a table" % (where, name))
    unknown = set(settings) - set(module.DEFAULTS)
    if unknown:
        raise ConfigError("%s: [%s] has unknown settings %s" % (where, name, sorted(unknown)))
    try:
        return module.check({**module.DEFAULTS, **settings}, base, "%s: [%s]" % (where, name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _aggregator(data, index, where):
    agg = dict(AGGREGATOR_DEFAULTS)
    unknown = set(data) - set(AGGREGATOR_DEFAULTS) - {"name", "key_id"}
    if unknown:
        raise ConfigError(
            "%s: aggregator %d has unknown settings %s" % (where, index, sorted(unknown))
        )
    agg.update(data)
    key_id = agg.get("key_id")
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id < 2**32:
        raise ConfigError("%s: aggregator %d needs a key_id 1..2^32-1" % (where, index))
    agg.setdefault("name", "agg%d" % key_id)
    if agg["strategy"] not in STRATEGIES:
        raise ConfigError(
            "%s: aggregator %s: strategy must be one of %s" % (where, agg["name"], STRATEGIES)
        )
    for name in ("value", "spread", "margin", "price", "budget", "capacity", "max_kw"):
        if agg[name] is not None and not _number(agg[name]):
            raise ConfigError("%s: aggregator %s: %s must be >= 0" % (where, agg["name"], name))
    if not isinstance(agg["bidders"], int) or agg["bidders"] < 1:
        raise ConfigError("%s: aggregator %s: bidders must be >= 1" % (where, agg["name"]))
    return agg


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0
