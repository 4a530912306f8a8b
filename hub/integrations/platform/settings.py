"""[platform] in hub.toml: its defaults and their check (at load, hub/config/hub_toml.py)."""

from pathlib import Path

DEFAULTS = {
    "keys": "wallets",  # the folder of wallet files (settlement's `wallets` folder)
    "decimals": 6,  # the credit mint's decimals (settlement's `decimals`)
    "currency": "THB",
    "sources": {},  # device id -> "solar" | "wind" | "grid" (the device's energy source)
    "kwh_per_certificate": 1.0,
    "gov_supply": 1_000_000_000,  # NRG, fixed at genesis (decimals 0)
    "gov_quorum": 1,  # least total weight (staked NRG) of the votes for a decision
    "incentives": {},  # overrides of hub/integrations/platform/incentives.py RULES
    "poll_s": 30.0,  # in a running hub: how often to mint, tick and pay (service.py)
}

SOURCES = ("solar", "wind", "hydro", "grid")


def check(settings, base, where):
    """[platform] settings (merged with DEFAULTS) checked; the keys folder resolved
    against `base`. ValueError names the fault (hub/config/hub_toml.py's contract)."""
    s = dict(settings)
    if not isinstance(s["keys"], str) or not s["keys"]:
        raise ValueError("%s: keys must name a folder" % where)
    s["keys"] = str(Path(base) / s["keys"])
    sources = s["sources"]
    if not isinstance(sources, dict):
        raise ValueError('%s: sources maps device ids to sources: {"101" = "solar"}' % where)
    s["sources"] = {}
    for device, source in sources.items():
        if not str(device).isdigit() or source not in SOURCES:
            raise ValueError("%s: sources: %r = %r (a device id = one of %s)"
                             % (where, device, source, ", ".join(SOURCES)))  # fmt: skip
        s["sources"][int(device)] = source
    for name, low in (("decimals", 0), ("gov_supply", 1), ("gov_quorum", 0)):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < low:
            raise ValueError("%s: %s must be a whole number >= %d" % (where, name, low))
    if not isinstance(s["incentives"], dict):
        raise ValueError("%s: incentives must be a table" % where)
    if (
        isinstance(s["poll_s"], bool)
        or not isinstance(s["poll_s"], (int, float))
        or not (s["poll_s"] > 0)
    ):
        raise ValueError("%s: poll_s must be a number above 0" % where)
    k = s["kwh_per_certificate"]
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ValueError("%s: kwh_per_certificate must be a number above 0" % where)
    return s
