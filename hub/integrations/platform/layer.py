"""The platform layer as one object: credit, certificates, governance and incentives over
one engine (one store, one backend). The CLIs and the hub's service (service.py) use it."""

import time

from hub.integrations.platform import recovery
from hub.integrations.platform.credit import Credit
from hub.integrations.platform.engine import Engine
from hub.integrations.platform.gov import Gov
from hub.integrations.platform.incentives import Incentives
from hub.integrations.platform.rec import Rec
from hub.integrations.platform.settings import DEFAULTS


class Platform:
    """Everything over one store and one backend."""

    def __init__(self, store, backend, keys, credit_mint, settings=None, clock=None,
                 funded=None):  # fmt: skip
        s = dict(DEFAULTS, **(settings or {}))
        self.settings = s
        # LiteSVM: what the margin faucet gave, {wallet base58: base units}; each becomes
        # that wallet's opening entry (Credit.open_funded)
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
        """At a start: what the chain's memos say was done (recovery.py)."""
        return await recovery.recover(self.engine, since, hold)
