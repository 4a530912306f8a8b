"""Incentives: NRG rewards from the treasury, computed from the store per epoch, paid in
batches through the journaled engine.

An epoch is [start, start + epoch_s), aligned on multiples of epoch_s since 1970 (like
slots and settlement windows); a slot belongs to the epoch its start falls in. Amounts
are exact fractions of the stored floats, floored to whole NRG at the end.

Rules (settings `incentives`, defaults in settings.py INCENTIVES; rate in NRG per kWh,
cap in NRG per account and epoch):

  conservation   a battery's charging energy (consumption) below its baseline:
                   used     = the charging energy of the epoch (power_kw < 0): each
                              reading's power held until the next reading, a gap over
                              15 minutes not counted (hub/store/telemetry.py energy(),
                              exact on raw and rolled-up telemetry alike)
                   baseline = mean of `used` over the previous baseline_epochs epochs
                              (all of them measured; none -> no reward)
                   reward   = rate x max(0, baseline - used)
                 only for an epoch whose readings cover >= coverage of it: a gap must not
                 look like saving.
  demand_response  following the price signal: metered kWh a battery delivered in slots
                 whose published signal (the slot's latest price_signals row) is above
                 p_balance - the market asked for more and it came:
                   reward = rate x sum min(delivered_kwh, promised kWh) over those slots
  liquidity      bid and ask layers that rested in the book (were not filled):
                   resting  = layer kWh - filled kWh (trades of the layer)
                   counted only within `band` (fraction) of the slot's clearing price
                   (else its price signal), so far-off prices earn nothing
                   reward   = rate x sum resting kWh
                 bid owners are aggregators (account aggregator-<key id>, paid to the
                 address book's key or else the wallet it deposits its margin from),
                 ask owners batteries (owner-<device>)

Every reward = min(cap, floor(rate x basis)); then, if the epoch's total exceeds
`budget`, each is scaled by budget / total and floored (never more than the budget),
and never more than the treasury holds.

Paying: command "reward-<epoch start>" computes and records the rewards (a store-only
command: its id makes an epoch computed once, ever); "reward-<epoch start>.<n>" (n the
next free number) pays up to 6 unpaid accounts whose public key is known in one
transaction from the treasury, with the memo gridbid-reward:<epoch>:<n>, holding their
rewards until it ends. What is still unpaid (a failed part, an account named later) is
paid by calling pay() again.
"""

from collections import defaultdict
from fractions import Fraction

from hub.integrations.platform.chain_ops import KeysError, memo, pk, transfer_ixs
from hub.integrations.platform.engine import Operation, PlatformError
from hub.integrations.platform.settings import INCENTIVES
from hub.integrations.settlement.margin import aggregator_wallet
from hub.integrations.settlement.records import promised_kwh
from hub.store import telemetry, views
from protocol.contract import parse_slot_name

RULES = INCENTIVES  # their kinds and ranges are checked at load (settings.py)
PER_TX = 6


def f(x):
    return Fraction(repr(float(x)))


class Incentives:
    def __init__(self, engine, gov, settings=None):
        self.engine, self.gov = engine, gov
        self.rules = {**RULES, **(settings or {})}
        engine.register(Compute(self))
        engine.register(Pay(self))

    def epoch_of(self, t):
        return int(t // self.rules["epoch_s"] * self.rules["epoch_s"])

    # --- the rules ---------------------------------------------------------------------

    def consumption(self, conn, device, start, end):
        """(kWh charged, covered fraction) of [start, end) from telemetry."""
        charged, _discharged, held_s = telemetry.energy(conn, device, start, end)
        return f(charged), f(held_s) / (end - start)

    def conservation(self, conn, start):
        e, out = self.rules["epoch_s"], {}
        for device in views.device_ids(conn):
            used, coverage = self.consumption(conn, device, start, start + e)
            if coverage < f(self.rules["coverage"]):
                continue
            past = [self.consumption(conn, device, start - k * e, start - (k - 1) * e)
                    for k in range(1, self.rules["baseline_epochs"] + 1)]  # fmt: skip
            past = [u for u, c in past if c >= f(self.rules["coverage"])]
            if past:
                saved = sum(past, Fraction(0)) / len(past) - used
                if saved > 0:
                    out["owner-%d" % device] = saved
        return out

    def slots(self, conn, start):
        """{slot name: slot start} of the slots starting in the epoch."""
        end, out = start + self.rules["epoch_s"], {}
        for name in views.slot_names(conn):
            slot_start = parse_slot_name(name)[3]
            if start <= slot_start < end:
                out[name] = slot_start
        return out

    def signal(self, conn, slot):
        price = views.latest_signal(conn, slot)
        return None if price is None else f(price)

    def demand_response(self, conn, slots):
        out = defaultdict(Fraction)
        for slot in slots:
            price = self.signal(conn, slot)
            if price is None or price <= f(self.rules["p_balance"]):
                continue
            for row in views.metered(conn, slot):
                device, watts, duration, delivered = row
                promised = f(promised_kwh({"avg_watts": watts, "duration_s": duration}))
                out["owner-%d" % device] += min(f(delivered), promised)
        return out

    def liquidity(self, conn, slots):
        out, band = defaultdict(Fraction), f(self.rules["band"])
        for slot in slots:
            price = views.clearing_price(conn, slot)
            reference = f(price) if price is not None else self.signal(conn, slot)
            if reference is None:
                continue
            for side, owner, price, kwh, filled in views.layers_filled(conn, slot):
                resting = f(kwh) - f(filled)
                if resting > 0 and abs(f(price) - reference) <= band * reference:
                    name = ("aggregator-%s" if side == "bid" else "owner-%s") % owner
                    out[name] += resting
        return out

    def compute(self, conn, start):
        """-> [(account, rule, basis kWh as float, NRG)] for the epoch, budget applied."""
        slots = self.slots(conn, start)
        bases = {
            "conservation": self.conservation(conn, start),
            "demand_response": self.demand_response(conn, slots),
            "liquidity": self.liquidity(conn, slots),
        }
        rows = []
        for rule, basis in bases.items():
            rate, cap = f(self.rules[rule]["rate"]), self.rules[rule]["cap"]
            for account, kwh in sorted(basis.items()):
                amount = min(cap, int(rate * kwh))
                if amount > 0:
                    rows.append([account, rule, float(kwh), amount])
        total, budget = sum(r[3] for r in rows), self.rules["budget"]
        if total > budget:
            for r in rows:
                r[3] = r[3] * budget // total
        return [tuple(r) for r in rows if r[3] > 0]

    # --- commands ----------------------------------------------------------------------

    async def pay(self, epoch_start):
        """Compute (once) and pay the epoch's rewards. -> {"rewards": n, "paid": parts}."""
        epoch_start = self.epoch_of(epoch_start)
        if epoch_start + self.rules["epoch_s"] > self.gov.clock():
            raise PlatformError("epoch %d has not ended yet" % epoch_start)
        command = "reward-%d" % epoch_start
        if self.engine.command(command) is None:
            await self.engine.run(command, Compute.kind, {"epoch": epoch_start})
        conn, keys = self.engine.conn, self.gov.keys
        unpaid = {r["account"] for r in self.rewards(epoch_start) if r["paid_by"] is None}
        payable = sorted(a for a in unpaid if _wallet(conn, keys, a) is not None)
        parts = conn.execute("SELECT count(*) FROM platform_commands WHERE id LIKE ?",
                             (command + ".%",)).fetchone()[0]  # fmt: skip
        paid = []
        for k in range(0, len(payable), PER_TX):
            sub, parts = "%s.%d" % (command, parts), parts + 1
            args = {"epoch": epoch_start, "accounts": payable[k : k + PER_TX]}
            paid.append(await self.engine.run(sub, Pay.kind, args))
        return {"rewards": len(self.rewards(epoch_start)), "paid": paid}

    def rewards(self, epoch=None):
        sql, params = "SELECT * FROM incentive_rewards", ()
        if epoch is not None:
            sql, params = sql + " WHERE epoch = ?", (epoch,)
        return self.engine.rows(sql + " ORDER BY epoch, account, rule", params)


class Compute(Operation):
    kind = "reward.compute"

    def __init__(self, inc):
        self.inc = inc

    def plan(self, conn, args, command):
        return {"epoch": args["epoch"], "rows": self.inc.compute(conn, args["epoch"])}

    def apply(self, conn, command, p, at):
        conn.executemany(
            "INSERT INTO incentive_rewards (epoch, account, rule, basis_kwh, amount, command) "
            "VALUES (?, ?, ?, ?, ?, ?)", [(p["epoch"], *r, command) for r in p["rows"]]
        )  # fmt: skip
        return {"epoch": p["epoch"], "rewards": len(p["rows"])}


class Pay(Operation):
    kind = "reward.pay"

    def __init__(self, inc):
        self.inc = inc

    def plan(self, conn, args, command):
        gov = self.inc.gov
        amounts = {}
        for account, amount in conn.execute(
            "SELECT account, sum(amount) FROM incentive_rewards WHERE epoch = ? AND "
            "paid_by IS NULL GROUP BY account",
            (args["epoch"],),
        ).fetchall():
            if account in args["accounts"]:
                amounts[account] = amount
        owners = {a: _wallet(conn, gov.keys, a) for a in amounts}
        # An account with no public key known stays unpaid (paid once it is named).
        amounts = {a: n for a, n in amounts.items() if owners[a] is not None}
        treasury = str(gov.keys.authority.pubkey)
        if gov.balances(conn).get(treasury, 0) < sum(amounts.values()):
            raise PlatformError("the treasury cannot pay %d NRG of rewards" % sum(amounts.values()))
        return {"epoch": args["epoch"], "amounts": sorted(amounts.items()), "owners": owners}

    def holds(self, p):
        return ["reward %d %s" % (p["epoch"], a) for a, _n in p["amounts"]]

    def instructions(self, p):
        if not p["amounts"]:
            return None
        gov, authority = self.inc.gov, self.inc.gov.keys.authority.pubkey
        ixs = [memo("gridbid-reward:%s:%d" % (p["command"], p["epoch"]), authority)]
        for account, amount in p["amounts"]:
            ixs += transfer_ixs(authority, authority, pk(p["owners"][account]), gov.mint,
                                amount, 0)  # fmt: skip
        return ixs, []

    def apply(self, conn, command, p, at):
        treasury = str(self.inc.gov.keys.authority.pubkey)
        for account, amount in p["amounts"]:
            conn.execute(
                "INSERT INTO gov_moves (command, src, dst, units, kind) VALUES (?,?,?,?,'reward')",
                (command, treasury, p["owners"][account], amount),
            )
            conn.execute(
                "UPDATE incentive_rewards SET paid_by = ? WHERE epoch = ? AND account = ? "
                "AND paid_by IS NULL",
                (command, p["epoch"], account),
            )
        return {"epoch": p["epoch"], "paid": p["amounts"]}


def _wallet(conn, keys, account):
    """An account's base58 key: the address book's, or for aggregator-<k> the wallet it
    deposits its margin from; None if unknown."""
    try:
        return str(keys.account(account))
    except KeysError:
        if account.startswith("aggregator-") and account[11:].isdigit():
            return aggregator_wallet(conn, int(account[11:]))
        return None
