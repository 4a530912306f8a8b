"""hub.toml: what makes a hub this hub (see hub/hub.example.toml). Checked whole at
start-up: a broken file stops the hub with one line naming the fault.

Secrets are not in it: `keys_file` names a JSON file (mode 0600, like an ssh key)
holding the hub's own secrets, its master secret and the group key
(hub/config/keys_file.py; `gridbid hub keys` makes it). An aggregator the hub hosts
in-process (an [[aggregator]] block: the demo's convenience) keeps its own secret in
its own identity file (aggregator/identity.py), which the block names.
"""

import re
from pathlib import Path

from aggregator.config import STRATEGY_DEFAULTS, check_strategy, read_toml
from hub.config import keys_file
from protocol.contract import MAX_SLOT_NAME, ContractError, slot_name
from protocol.message import MAX_PRICE
from transport import settings

HUB_DEFAULTS = {
    "name": "hub",  # the market maker's name in slot names
    "key_id": 0,  # the hub's id in the frames it sends the group (its Queries)
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
    "market_bind": "0.0.0.0",  # the market API (aggregators on their own machines)
    "market_port": 0,  # its TCP port; 0: none (hosted aggregators only)
    "min_aggregator_reputation": 0.0,  # below it, an aggregator's bids are refused (0..1)
    "min_aggregators": 0,  # no slot opens with fewer aggregators in the market
    "p_balance": 16.0,  # price signal (hub/market/price_signal.py), c/kWh
    "p_con": 6.0,
    "k": 1.0,
    # The store's disk (hub/disk.py): raw telemetry kept this many hours, then minute
    # rows this many days, then hour rows; a warning at 80 % of the budget (0: none).
    "telemetry_raw_h": 1,
    "telemetry_minutes_d": 1,
    "disk_budget_mb": 0,
}
# Each setting's kind and range (transport/settings.py). Slots and the gate are whole
# seconds: they name the slots (protocol/contract.py slot_name) and batteries match them.
HUB_RULES = (
    ("name", "text", 1, 80),  # and its slots' names must fit (below)
    ("key_id", "whole", 0, 2**32 - 1),
    ("store", "path", 0, 0),
    ("keys_file", "path", 0, 0),
    ("group_addr", "multicast", 0, 0),
    ("group_port", "whole", 1, 65535),
    ("interface", "ipv4", 0, 0),
    ("device_port", "whole", 1, 65535),
    ("slot_s", "whole", 2, 86400),
    ("gate_s", "whole", 1, 86400),
    ("discovery_s", "number", 0, 600),
    ("answer_s", "number", 0.01, 60),
    ("bind_timeout_s", "number", 0.1, 60),
    ("market_bind", "ip", 0, 0),
    ("market_port", "whole", 0, 65535),
    ("min_aggregator_reputation", "number", 0, 1),
    ("min_aggregators", "whole", 0, 1000),
    ("p_balance", "number", 0, MAX_PRICE),
    ("p_con", "number", 0, MAX_PRICE),
    ("k", "number", 0.001, 1000),
    ("telemetry_raw_h", "whole", 1, 24 * 366),
    ("telemetry_minutes_d", "whole", 1, 366),
    ("disk_budget_mb", "whole", 0, 10**9),
)
# A hosted aggregator's own settings besides its strategy's.
HOSTED_RULES = (
    ("name", "text", 1, 64),
    ("key_id", "whole", 1, 2**32 - 1),
    ("identity", "path", 0, 0),  # its identity file (default aggregator-<key_id>.json)
)
# A name for slot names, MQTT topics and logs: no dots, spaces or wildcards.
NAME = re.compile(r"[A-Za-z0-9_-]+")
# A hosted aggregator's strategy settings: the same an independent one's aggregator.toml
# takes (aggregator/config.py).
AGGREGATOR_DEFAULTS = STRATEGY_DEFAULTS
# Optional integrations: a [section] in hub.toml turns one on. Each module has
# DEFAULTS (every setting) and check(settings, base, where) -> settings, raising
# ValueError that names the fault; the hub then calls its start(hub, settings),
# which returns an object with `async close()` (hub/service.py).
INTEGRATIONS = {
    "mqtt": "hub.integrations.mqtt",
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
    data = read_toml(path, ConfigError)
    return check(data, base=path.parent, where=str(path), keys=keys)


def check(data, base=Path("."), where="hub config", keys=True):
    unknown = set(data) - {"hub", "aggregator"} - set(INTEGRATIONS)
    if unknown:
        raise ConfigError("%s: unknown sections %s" % (where, sorted(unknown)))
    if not isinstance(data.get("hub", {}), dict):
        raise ConfigError("%s: [hub] must be a table" % where)
    hub = dict(HUB_DEFAULTS)
    unknown = set(data.get("hub", {})) - set(HUB_DEFAULTS)
    if unknown:
        raise ConfigError("%s: [hub] has unknown settings %s" % (where, sorted(unknown)))
    hub.update(data.get("hub", {}))
    hub = settings.check(hub, HUB_RULES, where, base, ConfigError, prefix="hub.")
    if not NAME.fullmatch(hub["name"]):
        shown = settings.shown(hub["name"])
        raise ConfigError("%s: hub.name must be letters, digits, - and _ (it names slots "
                          "and MQTT topics), not %s" % (where, shown))  # fmt: skip
    try:  # the longest slot name it will make, for a start in the next centuries
        last = hub["slot_s"] * (9_999_999_999 // hub["slot_s"])
        slot_name(hub["slot_s"], min(hub["gate_s"], hub["slot_s"] - 1), hub["name"], last)
    except ContractError:
        raise ConfigError("%s: hub.name is too long for slot names (%d characters at most)"
                          % (where, MAX_SLOT_NAME)) from None  # fmt: skip
    if not hub["gate_s"] < hub["slot_s"]:
        raise ConfigError("%s: hub.gate_s must be below hub.slot_s" % where)
    if hub["gate_s"] <= hub["bind_timeout_s"]:  # buying must end before the slot starts
        raise ConfigError("%s: hub.gate_s must be above hub.bind_timeout_s" % where)
    if hub["slot_s"] - hub["gate_s"] < hub["answer_s"] + 0.5:
        raise ConfigError("%s: hub.slot_s - gate_s leaves no time to collect offers" % where)
    # The signal rides in every Query's price field: p_balance +- p_con must fit it.
    if not 0 <= hub["p_balance"] - hub["p_con"] <= hub["p_balance"] + hub["p_con"] <= MAX_PRICE:
        raise ConfigError("%s: hub.p_balance +- hub.p_con must stay within 0..%g c/kWh"
                          % (where, MAX_PRICE))  # fmt: skip
    aggs = data.get("aggregator", [])
    if not isinstance(aggs, list) or not (aggs or hub["market_port"]):
        raise ConfigError("%s: no aggregator can trade: host an [[aggregator]], or open "
                          "the market API (hub.market_port)" % where)  # fmt: skip
    if hub["telemetry_minutes_d"] * 24 < hub["telemetry_raw_h"]:
        raise ConfigError("%s: hub.telemetry_minutes_d must keep minutes at least as long "
                          "as telemetry_raw_h keeps readings" % where)  # fmt: skip
    hub["aggregators"] = [_aggregator(a, i, base, where) for i, a in enumerate(aggs, 1)]
    ids = [a["key_id"] for a in hub["aggregators"]]
    if len(set(ids)) != len(ids):
        raise ConfigError("%s: aggregators' key_id values must differ" % where)
    hub["integrations"] = {
        name: _integration(name, data[name], base, where) for name in INTEGRATIONS if name in data
    }
    if hub["key_id"] in ids:
        raise ConfigError("%s: hub.key_id must be no aggregator's" % where)
    for agg in hub["aggregators"]:  # its own file: identity = "..." in its block
        agg["identity_file"] = agg.pop("identity")
    if keys:
        try:
            hub["keys"] = keys_file.load(hub["keys_file"])
        except keys_file.KeysError as exc:
            raise ConfigError(str(exc)) from None
        for agg in hub["aggregators"]:
            agg["identity"] = _identity(agg, where)
    return hub


def _identity(agg, where):
    """A hosted aggregator's identity, from its own file (aggregator/identity.py)."""
    from aggregator import identity

    try:
        found = identity.load(agg["identity_file"])
    except identity.IdentityError as exc:
        raise ConfigError("%s: aggregator %s: %s" % (where, agg["name"], exc)) from None
    if found.key_id != agg["key_id"]:
        raise ConfigError("%s: aggregator %s: its identity file is aggregator %d's, not %d's"
                          % (where, agg["name"], found.key_id, agg["key_id"]))  # fmt: skip
    return found


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


def _aggregator(data, index, base, where):
    agg = dict(AGGREGATOR_DEFAULTS)
    if not isinstance(data, dict):
        raise ConfigError("%s: aggregator %d must be a table ([[aggregator]])" % (where, index))
    unknown = set(data) - set(AGGREGATOR_DEFAULTS) - {"name", "key_id", "identity"}
    if unknown:
        raise ConfigError(
            "%s: aggregator %d has unknown settings %s" % (where, index, sorted(unknown))
        )
    agg.update(data)
    if "key_id" not in agg:
        raise ConfigError("%s: aggregator %d needs a key_id 1..2^32-1" % (where, index))
    agg.setdefault("name", "agg%s" % agg["key_id"])
    agg.setdefault("identity", "aggregator-%s.json" % agg["key_id"])
    agg = settings.check(agg, HOSTED_RULES, "%s: aggregator %d" % (where, index), base,
                         ConfigError)  # fmt: skip
    try:
        return check_strategy(agg, "%s: aggregator %s" % (where, agg["name"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
