"""The platform layer (GridTokenX document, issue 8): stable credit, renewable energy
certificates, governance and incentives, on one Pi next to the market.

Layout (one concern per module):
    schema.py      its own tables in the hub's SQLite file, versioned by its own
                   migration list (table platform_schema_version), append-only audit
                   tables enforced by triggers, as hub/store_schema.py does
    engine.py      commands: an id each (a replay is refused with the first result),
                   planned in one store transaction, signed and JOURNALED before the
                   first send (platform_txs), sent, checked like the settlement uploader
                   (height, then status; re-send while valid; re-sign only once expired),
                   then applied; resume() finishes what a crash left pending
    chain_ops.py   keys (0600 wallet files) and instruction builders over
                   hub/settlement/transactions.py (memo, ATA, transfer_checked) and
                   spl.token (mint, burn, fixed supply)
    credit.py      stable credit: purchases and redemptions at an operator-set rate,
                   ledger entries, reconciliation with the chain (supply and balances)
    rec.py         certificates: minted from metered renewable energy, one SPL mint per
                   vintage, listed, bought (credits for certificates, one transaction),
                   retired (burned, with a memo); rec_ops.py: list/unlist/buy/retire
    gov.py         NRG: a fixed supply (mint authority dropped), stakes with a lock-up,
                   proposals voted by stake, passed ones recorded as hub controls
    recovery.py    a lost journal/store: the authority's memo history read at a start;
                   landed commands journaled again or refused for good (what is and is
                   not rebuilt is listed there)
    incentives.py  NRG rewards per epoch (conservation, demand response, liquidity):
                   documented formulas with caps and a budget, computed from the store,
                   paid in batches from the treasury
    service.py     inside a running hub: shares settlement's chain and mint; mints,
                   ticks governance and pays rewards every poll_s
    *_cli.py       `gridbid credit|rec|gov ...` (cli_common.py: options, and on LiteSVM
                   the hub's chain rebuilt from both journals, as the hub does at each
                   start: hub/settlement/rebuild.py)

How operations reach the chain: through the same backend interface the settlement uses
(hub/settlement/backends.py: LiteSVM in-process by default, or RPC), with the same
journal-before-send rule. The credit mint IS settlement's mint (provision.py makes it on
LiteSVM), so what aggregators buy here is what the uploader pays owners with, and
credit.reconcile() adds settlement's finalized payments to the ledger before comparing
with the chain. The platform authority (<keys>/platform-authority.json) pays fees and
rent, mints certificates and holds the escrow of listed certificates.

Not edited: hub/store_schema.py, hub/store.py, hub/settlement/*: this package reads
their tables (contracts, telemetry, bids, trades, price_signals, settlement_parts),
calls their functions, and appends to one (controls, append-only: a passed proposal).
One read goes the other way: hub/settlement/rebuild.py replays platform_txs (by name)
when it rebuilds a LiteSVM chain.
"""

import time
from pathlib import Path

from hub.platform import recovery
from hub.platform.chain_ops import Keys
from hub.platform.credit import Credit
from hub.platform.engine import Engine, PlatformError, Replayed
from hub.platform.gov import Gov
from hub.platform.incentives import Incentives
from hub.platform.rec import Rec

DEFAULTS = {
    "keys": "wallets",  # the folder of wallet files (settlement's `wallets` folder)
    "decimals": 6,  # the credit mint's decimals (settlement's `decimals`)
    "currency": "THB",
    "sources": {},  # device id -> "solar" | "wind" | "grid" (the device's energy source)
    "kwh_per_certificate": 1.0,
    "gov_supply": 1_000_000_000,  # NRG, fixed at genesis (decimals 0)
    "gov_quorum": 1,  # least total weight (staked NRG) of the votes for a decision
    "incentives": {},  # overrides of hub/platform/incentives.py RULES
    "poll_s": 30.0,  # in a running hub: how often to mint, tick and pay (service.py)
}

__all__ = ["DEFAULTS", "Keys", "Platform", "PlatformError", "Replayed", "check"]
SOURCES = ("solar", "wind", "hydro", "grid")


def check(settings, base, where):
    """[platform] settings (merged with DEFAULTS) checked; the keys folder resolved
    against `base`. ValueError names the fault (hub/hub_config.py's contract)."""
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


class Platform:
    """Everything over one store and one backend."""

    def __init__(self, store, backend, keys, credit_mint, settings=None, clock=None,
                 funded=None):  # fmt: skip
        s = dict(DEFAULTS, **(settings or {}))
        self.settings = s
        # LiteSVM: credits provisioning minted, {aggregator key id: base units}; they
        # become each one's opening entry (Credit.open_funded)
        self.funded = funded or {}
        self.engine = Engine(store, backend, keys)
        self.credit = Credit(self.engine, credit_mint, s["decimals"])
        self.rec = Rec(self.engine, self.credit, s["sources"], s["kwh_per_certificate"])
        self.gov = Gov(self.engine, store, s, clock or time.time)
        self.incentives = Incentives(self.engine, self.gov, s["incentives"])

    def status(self, limit=50):
        """What the status page shows (JSON-able): certificates, rewards, proposals."""
        rows = self.engine.rows
        return {
            "certificates": rows(
                "SELECT s.status, c.vintage, count(*) AS count FROM rec_certificates c "
                "JOIN rec_state s USING (serial) GROUP BY s.status, c.vintage"
            ),
            "listed": self.rec.certificates("listed", limit),
            "rewards": rows(
                "SELECT epoch, rule, count(*) AS accounts, sum(amount) AS nrg, "
                "count(paid_by) AS paid FROM incentive_rewards GROUP BY epoch, rule "
                "ORDER BY epoch DESC LIMIT ?",
                (limit,),
            ),
            "proposals": rows(
                "SELECT * FROM gov_proposals ORDER BY created_at DESC LIMIT ?", (limit,)
            ),
            "credit_rate": rows(
                "SELECT fiat_per_credit, currency, at FROM credit_rates ORDER BY id DESC LIMIT 1"
            ),
            "pending_commands": rows(
                "SELECT id, kind, created_at FROM platform_commands WHERE status = 'pending'"
            ),
        }

    async def reconcile(self):
        """-> differences between the store and the chain (empty = they agree exactly)."""
        await self.engine.resume()
        diffs = await self.credit.reconcile() + await self.rec.reconcile()
        diffs += await self.gov.reconcile()
        return diffs + recovery.differences(self.engine.conn)

    async def recover(self, since=0.0, hold=True):
        """At a start: what the chain's memos say was done (hub/platform/recovery.py)."""
        return await recovery.recover(self.engine, since, hold)


async def start(hub, settings):
    """hub/hub_config.py INTEGRATIONS hook: run the platform in the hub (service.py)."""
    from hub.platform.service import start as start_service

    return await start_service(hub, settings)
