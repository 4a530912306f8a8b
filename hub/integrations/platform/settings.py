"""[platform] in hub.toml: its defaults and their check (at load, hub/config/hub_toml.py)."""

from transport.settings import check as checked

DEFAULTS = {
    "keys": "wallets",  # the folder of wallet files (settlement's `wallets` folder)
    "decimals": 6,  # the credit mint's decimals (settlement's `decimals`)
    "currency": "THB",
    "sources": {},  # device id -> "solar" | "wind" | "grid" (the device's energy source)
    "kwh_per_certificate": 1.0,
    "gov_supply": 1_000_000_000,  # NRG, fixed at genesis (decimals 0)
    "gov_quorum": 1,  # least total weight (staked NRG) of the votes for a decision
    "incentives": {},  # overrides of INCENTIVES below
    "poll_s": 30.0,  # in a running hub: how often to mint, tick and pay (service.py)
}

SOURCES = ("solar", "wind", "hydro", "grid")
RULES = (
    ("keys", "path", 0, 0),
    ("decimals", "whole", 0, 18),
    ("currency", "text", 1, 16),
    ("kwh_per_certificate", "number", 0.001, 1e6),
    ("gov_supply", "whole", 1, 2**64 - 1),  # an SPL amount: u64
    ("gov_quorum", "whole", 0, 2**64 - 1),
    ("poll_s", "number", 0.1, 86400),
)
# The incentive rules' defaults (hub/integrations/platform/incentives.py explains them) and
# their kinds; `incentives` overrides any of them, a rule's rate or cap alone too.
INCENTIVES = {
    "epoch_s": 86400,
    "conservation": {"rate": 1.0, "cap": 50},
    "demand_response": {"rate": 2.0, "cap": 100},
    "liquidity": {"rate": 0.5, "cap": 100},
    "budget": 10_000,  # NRG per epoch, all rules and accounts together
    "p_balance": 15.0,  # c/kWh: the price signal's centre (hub's p_balance)
    "band": 0.2,
    "baseline_epochs": 7,
    "coverage": 0.9,
}
INCENTIVE_RULES = (
    ("epoch_s", "whole", 3600, 366 * 86400),  # whole hours: telemetry's hour rows fit
    ("budget", "whole", 0, 2**64 - 1),
    ("p_balance", "number", 0, 100_000),
    ("band", "number", 0, 100),
    ("baseline_epochs", "whole", 1, 1000),
    ("coverage", "number", 0, 1),
)
PER_RULE = (("rate", "number", 0, 1e9), ("cap", "whole", 0, 2**64 - 1))


def check(settings, base, where):
    """[platform] settings (merged with DEFAULTS) checked; the keys folder resolved
    against `base`. ValueError names the fault (hub/config/hub_toml.py's contract)."""
    s = checked(settings, RULES, where, base)
    sources = s["sources"]
    if not isinstance(sources, dict):
        raise ValueError('%s: sources maps device ids to sources: {"101" = "solar"}' % where)
    s["sources"] = {}
    for device, source in sources.items():
        if not str(device).isdigit() or not 0 < int(device) < 2**32 or source not in SOURCES:
            raise ValueError("%s: sources: %r = %r (a device id = one of %s)"
                             % (where, device, source, ", ".join(SOURCES)))  # fmt: skip
        s["sources"][int(device)] = source
    s["incentives"] = _incentives(s["incentives"], where + " incentives")
    return s


def _incentives(given, where):
    """The incentive rules: INCENTIVES with `given`'s overrides, each checked."""
    if not isinstance(given, dict) or set(given) - set(INCENTIVES):
        raise ValueError("%s: a table of %s" % (where, ", ".join(INCENTIVES)))
    out = {**INCENTIVES, **given}
    checked(out, INCENTIVE_RULES, where)
    if out["epoch_s"] % 3600:  # energy over an epoch reads telemetry's hour rows whole
        raise ValueError("%s: epoch_s must be whole hours, not %r" % (where, out["epoch_s"]))
    for rule in ("conservation", "demand_response", "liquidity"):
        table = out[rule]
        if not isinstance(table, dict) or set(table) - {"rate", "cap"}:
            raise ValueError("%s: %s must be a table of rate and cap" % (where, rule))
        out[rule] = checked({**INCENTIVES[rule], **table}, PER_RULE, "%s.%s" % (where, rule))
    return out
