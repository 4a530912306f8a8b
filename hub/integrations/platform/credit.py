"""Stable credit: the settlement's payment token, bought and redeemed at an operator's rate.

There are no fiat rails: the operator takes the money (cash, a bank transfer) and
records it. A rate is fiat minor units per credit (e.g. 3,500 satang per credit);
one credit is 10**decimals base units of the mint (settlement's `decimals`).

    purchase   units = floor(fiat x 10**decimals / rate)    minted to the buyer
    redemption fiat  = floor(units x rate / 10**decimals)    burned from the holder
    (rounded down both ways: the platform never issues or pays out more than it holds)

Each is a credit_moves row (append-only) and one transaction: the memo
gridbid-credit:<kind>:<command>:<account>:<units> plus mint_to (signed by the mint authority) or
burn (a redemption is the holder's own command: the holder signs the burn and the memo;
signing.py). The mint is settlement's (hub/integrations/settlement/provision.py
makes it on LiteSVM: <keys>/mint.json, mint-authority.json); on a cluster it must be a
mint whose authority the operator holds (USDC cannot be minted by us).

Reconciliation (reconcile()): what the store says each account holds is

    sum of its credit_moves (purchases, redemptions, certificate trades, opening)
    + settlement payments received - paid (finalized parts, hub/integrations/settlement/journal.py)

and it must equal its token balance on chain to the base unit; the mint's supply must
equal the sum of all credit_moves (settlement only moves credits). An opening move
records credits that existed before the ledger (provision's fund_credits): once per
account, before any other move.
"""

from collections import Counter

from hub.integrations.platform.chain_ops import burn_ix, memo, mint_info, mint_to_ixs, pk
from hub.integrations.platform.engine import Operation, PlatformError
from hub.integrations.settlement import journal
from hub.integrations.settlement.margin import finalized_deposits
from hub.integrations.settlement.transactions import ata
from hub.integrations.settlement.withdrawals import finalized as finalized_withdrawals

MAX_UNITS = 2**63 - 1


def _whole(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_UNITS:
        raise PlatformError("%s must be a whole number >= %d, not %r" % (name, low, value))
    return value


def latest_rate(conn):
    row = conn.execute(
        "SELECT fiat_per_credit, currency FROM credit_rates ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise PlatformError("no credit rate is set: the operator sets one (credit rate)")
    return row


def ledger_balances(conn):
    """{account base58: base units} by the store: credit moves plus settlement payments."""
    out = Counter()
    for account, units in conn.execute(
        "SELECT account, sum(units) FROM credit_moves GROUP BY account"
    ):
        out[account] += units
    for payer, payments in journal.finalized_payments(conn):
        for owner, amount in payments:
            out[payer] -= amount
            out[owner] += amount
    for payer, clearing, amount in finalized_deposits(conn):  # aggregators' margin
        out[payer] -= amount
        out[clearing] += amount
    for clearing, wallet, amount in finalized_withdrawals(conn):  # margin paid back
        out[clearing] -= amount
        out[wallet] += amount
    return out


class SetRate(Operation):
    kind = "credit.rate"

    def plan(self, conn, args, command):
        currency = args.get("currency") or "THB"
        if not isinstance(currency, str) or not 1 <= len(currency) <= 8:
            raise PlatformError("currency must be a short code such as THB")
        return {"fiat_per_credit": _whole("rate", args.get("fiat_per_credit")),
                "currency": currency}  # fmt: skip

    def apply(self, conn, command, payload, at):
        conn.execute(
            "INSERT INTO credit_rates (fiat_per_credit, currency, command, at) VALUES (?,?,?,?)",
            (payload["fiat_per_credit"], payload["currency"], command, at),
        )
        return payload


class Purchase(Operation):
    kind = "credit.purchase"

    def __init__(self, credit):
        self.credit = credit

    def plan(self, conn, args, command):
        fiat = _whole("fiat", args.get("fiat"))
        rate, currency = latest_rate(conn)
        units = fiat * 10**self.credit.decimals // rate
        if units < 1:
            raise PlatformError("%d %s buys less than one base unit at %d" % (fiat, currency, rate))
        owner = str(self.credit.keys.account(args.get("account")))
        return {"account": args["account"], "owner": owner, "fiat": fiat, "rate": rate,
                "currency": currency, "units": units}  # fmt: skip

    def instructions(self, p):
        c, authority = self.credit, self.credit.keys.authority.pubkey
        signer = c.keys.wallet("mint-authority")
        text = "gridbid-credit:purchase:%s:%s:%d" % (p["command"], p["account"], p["units"])
        ixs = mint_to_ixs(authority, c.mint, signer.pubkey, pk(p["owner"]), p["units"], c.decimals)
        return [memo(text, authority)] + ixs, [signer]

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO credit_moves (command, account, kind, units, fiat, rate, at) "
            "VALUES (?, ?, 'purchase', ?, ?, ?, ?)",
            (command, p["owner"], p["units"], p["fiat"], p["rate"], at),
        )
        return p


class Redeem(Operation):
    kind = "credit.redeem"

    def __init__(self, credit):
        self.credit = credit

    def plan(self, conn, args, command):
        units = _whole("units", args.get("units"))
        rate, currency = latest_rate(conn)
        owner = str(self.credit.keys.account(args.get("account")))
        held = ledger_balances(conn)[owner]
        if units > held:
            raise PlatformError("%s holds %d base units, cannot redeem %d"
                                % (args["account"], held, units))  # fmt: skip
        fiat = units * rate // 10**self.credit.decimals
        return {"account": args["account"], "owner": owner, "fiat": fiat, "rate": rate,
                "currency": currency, "units": units, "signer": owner}  # fmt: skip

    def instructions(self, p):
        c, holder = self.credit, pk(p["owner"])
        text = "gridbid-credit:redemption:%s:%s:%d" % (p["command"], p["account"], p["units"])
        return [memo(text, holder), burn_ix(c.mint, holder, p["units"], c.decimals)], []

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO credit_moves (command, account, kind, units, fiat, rate, at) "
            "VALUES (?, ?, 'redemption', ?, ?, ?, ?)",
            (command, p["owner"], -p["units"], p["fiat"], p["rate"], at),
        )
        return p


class Opening(Operation):
    """Credits that existed before the ledger (the operator states them; reconcile checks)."""

    kind = "credit.opening"

    def __init__(self, credit):
        self.credit = credit

    def plan(self, conn, args, command):
        units = _whole("units", args.get("units"), 0)
        # A wallet the platform holds no key of (an aggregator's own, the faucet funded it)
        # is named by its public key.
        owner = args.get("owner") or str(self.credit.keys.account(args.get("account")))
        if conn.execute("SELECT 1 FROM credit_moves WHERE account = ?", (owner,)).fetchone():
            raise PlatformError("%s already has ledger entries: no opening" % args["account"])
        return {"account": args["account"], "owner": owner, "units": units}

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO credit_moves (command, account, kind, units, at) "
            "VALUES (?, ?, 'opening', ?, ?)",
            (command, p["owner"], p["units"], at),
        )
        return p


class Credit:
    """The stable-credit service of an Engine."""

    def __init__(self, engine, mint, decimals):
        self.engine, self.keys = engine, engine.keys
        self.mint, self.decimals = mint, decimals
        for op in (SetRate(), Purchase(self), Redeem(self), Opening(self)):
            engine.register(op)

    async def set_rate(self, command, fiat_per_credit, currency="THB"):
        args = {"fiat_per_credit": fiat_per_credit, "currency": currency}
        return await self.engine.run(command, SetRate.kind, args)

    async def purchase(self, command, account, fiat):
        return await self.engine.run(command, Purchase.kind, {"account": account, "fiat": fiat})

    async def redeem(self, command, account, units, wallet=None):
        args = {"account": account, "units": units}
        return await self.engine.run(command, Redeem.kind, args, wallet)

    async def opening(self, command, account, units, owner=None):
        args = {"account": account, "units": units, "owner": owner}
        return await self.engine.run(command, Opening.kind, args)

    async def open_funded(self, funded):
        """LiteSVM: what the margin faucet gave each aggregator's own wallet ({wallet
        base58: base units}) is that wallet's opening, recorded once, before its first move:
        the chain is the hub's own, so what it holds before the ledger is known, not stated.
        -> the wallets opened now."""
        opened = []
        for wallet, units in sorted(funded.items()):
            if not self.engine.rows("SELECT 1 FROM credit_moves WHERE account = ?", (wallet,)):
                await self.opening("litesvm-funding-%s" % wallet, wallet, units, owner=wallet)
                opened.append(wallet)
        return opened

    def balances(self):
        return dict(ledger_balances(self.engine.conn))

    async def reconcile(self):
        """-> list of differences (empty: the store and the chain agree exactly)."""
        diffs = []
        expected = ledger_balances(self.engine.conn)
        for owner, units in sorted(expected.items()):
            chain = await self.engine.backend.token_balance(ata(pk(owner), self.mint)) or 0
            if chain != units:
                diffs.append("credit %s: store %d, chain %d" % (owner, units, chain))
        supply = mint_info(await self.engine.backend.account_data(self.mint))[0]
        total = self.engine.conn.execute("SELECT coalesce(sum(units), 0) FROM credit_moves")
        total = total.fetchone()[0]
        if supply != total:
            diffs.append("credit supply: store %d, chain %d" % (total, supply))
        return diffs
