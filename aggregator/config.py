"""aggregator.toml: what makes an independent aggregator this aggregator (see
aggregator/aggregator.example.toml). Checked whole at start-up: a broken file stops
`gridbid aggregator run` with one line naming the fault.

    [aggregator]    its identity file, its store, its strategy and limits
    [[market]]      each market it trades in: the admission file its operator gave

The strategy settings (STRATEGY_DEFAULTS) are the same a hub.toml [[aggregator]]
block takes for a hosted aggregator (hub/config/hub_toml.py reads them from here).
Secrets are in files of their own, 0600: the identity (aggregator/identity.py) and
each market's admission (its market key, from `gridbid hub admit`).
"""

import tomllib
from pathlib import Path

from aggregator import identity
from protocol.message import MAX_ENERGY, MAX_PRICE
from transport import secret_files, settings

STRATEGY_DEFAULTS = {
    "strategy": "value",  # value | adaptive | truthful | utility | "package.module:Class"
    "value": 20.0,  # resale value, c/kWh (value and adaptive)
    "spread": 0.0,  # value is drawn per offer from [value, value + spread]
    "margin": 1.0,  # c/kWh kept
    "bidders": 3,  # the competition a value bidder assumes
    "price": None,  # utility: posted price (None: the battery's reserve)
    "budget": None,  # cents per slot (None: unlimited)
    "capacity": None,  # kWh per slot (None: unlimited)
    "max_kw": None,  # power asked of batteries (None: what each offers)
    "options": None,  # a strategy of your own ("module:Class"): its settings, a table
    "seed": None,  # of the values it draws (spread): the same seed, the same draws
}
# Each strategy setting's kind and range (transport/settings.py): prices fit an ETP
# frame's price field, a contract's power the market's (hub/market/cleared.py).
STRATEGY_RULES = (
    ("strategy", "text", 1, 200),
    ("value", "number", 0, MAX_PRICE),
    ("spread", "number", 0, MAX_PRICE),
    ("margin", "number", 0, MAX_PRICE),
    ("bidders", "whole", 1, 1000),
    ("price", "number?", 0, MAX_PRICE),
    ("budget", "number?", 0, 1e12),
    ("capacity", "number?", 0, MAX_ENERGY),
    ("max_kw", "number?", 0.001, 1000),
)
MARKET_RULES = (("host", "host", 0, 0), ("port", "whole", 1, 65535))  # where a market is
BUILT_IN = ("value", "adaptive", "truthful", "utility")
AGGREGATOR_DEFAULTS = {
    "identity": "aggregator.json",  # its identity file (`gridbid aggregator new`)
    "store": "aggregator.sqlite",  # its own records: bids, fills, contracts, delivery
    "bind_timeout_s": 2.0,  # a battery's answer to our Bid
    "wallet": "",  # its wallet file (solana-keygen, 0600): margin in markets that settle
    "margin_credits": 1000.0,  # the margin it keeps in each such market (topped up at half)
    **STRATEGY_DEFAULTS,
}
OWN_RULES = (
    ("identity", "path", 0, 0),
    ("store", "path", 0, 0),
    ("bind_timeout_s", "number", 0.1, 60),
    ("wallet", "text", 0, 4096),  # "": none
    ("margin_credits", "number", 0, 1e12),
)
ADMISSION = "gridbid-admission/1"  # the kind of an admission file


class ConfigError(ValueError):
    pass


def check_strategy(agg, where):
    """agg's strategy settings checked (agg has STRATEGY_DEFAULTS filled in)."""
    settings.check(agg, STRATEGY_RULES, where, error=ConfigError)
    if agg["value"] + agg["spread"] > MAX_PRICE:  # the most it may bid fits a frame
        raise ConfigError("%s: value + spread must be at most %g c/kWh" % (where, MAX_PRICE))
    if agg["strategy"] not in BUILT_IN:
        from aggregator.strategy_config import load_plugin

        try:
            load_plugin(agg["strategy"])
        except ValueError as exc:
            raise ConfigError("%s: %s" % (where, exc)) from None
    if agg["options"] is not None and not isinstance(agg["options"], dict):
        raise ConfigError("%s: options must be a table" % where)
    if agg["seed"] is not None and (
        isinstance(agg["seed"], bool) or not isinstance(agg["seed"], (int, str))
    ):
        raise ConfigError("%s: seed must be a whole number or a string" % where)
    return agg


def read_toml(path, error=ConfigError):
    """A TOML file's tables; `error` (a ValueError) names the file and the fault."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error("cannot read %s: %s" % (path, exc.strerror)) from None
    except tomllib.TOMLDecodeError as exc:
        raise error("%s is not valid TOML: %s" % (path, exc)) from None


def load(path):
    """aggregator.toml checked, its identity and admissions read. -> cfg."""
    path = Path(path)
    return check(read_toml(path), base=path.parent, where=str(path))


def check(data, base=Path("."), where="aggregator config"):
    unknown = set(data) - {"aggregator", "market"}
    if unknown:
        raise ConfigError("%s: unknown sections %s" % (where, sorted(unknown)))
    own = data.get("aggregator", {})
    if not isinstance(own, dict):
        raise ConfigError("%s: [aggregator] must be a table" % where)
    unknown = set(own) - set(AGGREGATOR_DEFAULTS)
    if unknown:
        raise ConfigError("%s: [aggregator] has unknown settings %s" % (where, sorted(unknown)))
    cfg = check_strategy({**AGGREGATOR_DEFAULTS, **own}, "%s: [aggregator]" % where)
    cfg = settings.check(cfg, OWN_RULES, "%s: [aggregator]" % where, base, ConfigError)
    try:
        cfg["identity"] = identity.load(cfg["identity"])
    except identity.IdentityError as exc:
        raise ConfigError("%s: %s" % (where, exc)) from None
    cfg["key_id"], cfg["name"] = cfg["identity"].key_id, cfg["identity"].name
    if cfg["wallet"]:
        from aggregator import wallet  # solders: only where a wallet is set

        try:
            cfg["wallet"] = wallet.read(base / cfg["wallet"])
        except wallet.WalletError as exc:
            raise ConfigError("%s: %s" % (where, exc)) from None
    else:
        cfg["wallet"] = None
    markets = data.get("market")
    if not isinstance(markets, list) or not markets:
        raise ConfigError("%s: at least one [[market]] (admission = FILE) is needed" % where)
    cfg["markets"] = [_market(m, base, cfg["key_id"], where) for m in markets]
    names = [m["market"] for m in cfg["markets"]]
    if len(set(names)) != len(names):
        raise ConfigError("%s: two [[market]] blocks name market %s" % (where, names))
    return cfg


def _market(block, base, key_id, where):
    if not isinstance(block, dict) or set(block) - {"admission", "host", "port"}:
        raise ConfigError("%s: a [[market]] takes admission, and optionally host and port"
                          % where)  # fmt: skip
    if not isinstance(block.get("admission"), str):
        raise ConfigError("%s: a [[market]] needs admission = FILE (`gridbid hub admit`)"
                          % where)  # fmt: skip
    given = {k: block[k] for k in ("host", "port") if k in block}
    settings.check(given, [r for r in MARKET_RULES if r[0] in given], "%s: [[market]]" % where,
                   error=ConfigError)  # fmt: skip
    path = str(base / block["admission"])
    try:
        data = secret_files.read(path, "admission")
    except secret_files.SecretFileError as exc:
        raise ConfigError("%s: %s" % (where, exc)) from None
    if data.get("kind") != ADMISSION or data.get("aggregator") != key_id:
        raise ConfigError("%s: %s is no admission of aggregator %d (`gridbid hub admit`)"
                          % (where, path, key_id))  # fmt: skip
    market = {**data, **given}
    try:
        market["key"] = bytes.fromhex(data["key"])
        if len(market["key"]) < 32 or not isinstance(market["market"], str):
            raise ValueError
        settings.check(market, MARKET_RULES, path)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "%s: %s is damaged (its market, host, port or key)" % (where, path)
        ) from None
    return market


def admission(market, host, port, aggregator_id, key):
    """What the hub's operator gives an aggregator to trade in its market (0600)."""
    return {"kind": ADMISSION, "market": market, "host": host, "port": port,
            "aggregator": aggregator_id, "key": key.hex()}  # fmt: skip
