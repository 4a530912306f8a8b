"""Renewable energy certificates: minted from metered renewable discharge, listed, bought,
retired.

Which energy counts: a contract in a final state whose battery reported its meter
(contracts.delivered_kwh not NULL), from a device whose configured source (platform
setting `sources`, {device: "solar" | "wind" | "grid" | ...}) is renewable (RENEWABLE).
Unmetered energy never counts, whatever the contract's outcome. Each contract's energy is
counted once, ever: rec_energy's primary key is the contract id.

How many: per (device, vintage), vintage = the UTC year of the contract's start,
    certificates = floor(sum of counted kWh / kwh_per_certificate) - already minted
in exact fractions of the stored floats, so the remainder carries to the next mint
and no certificate is minted twice for the same energy.

On chain: one SPL mint per vintage (decimals 0: one token = one certificate), made by
the platform authority, which alone can mint. The store numbers the certificates
(serials) and tracks each one's owner and status (rec_state); the chain holds the counts:
a vintage's supply = its certificates not retired, an owner's balance = the ones it
holds, the escrow (the authority's own account) = the ones listed.

    mint     mint_to the device owner's account, memo gridbid-rec:mint:<command>:<vintage>:<count>
    list     the seller's tokens move to the escrow, at a price (credit base units each)
    unlist   back from the escrow to the seller
    buy      in ONE transaction: credits buyer -> each seller, certificates escrow -> buyer
    retire   burn from the holder's account, memo gridbid-rec:retire:<command>:<vintage>:<serials>:
             <reason>; final: rec_state refuses any change to a retired row (trigger), a
             burned token cannot be transferred, and the store refuses to list or buy it.
"""

from collections import defaultdict
from datetime import datetime, timezone
from fractions import Fraction

from hub.integrations.platform.chain_ops import (
    create_mint_ixs,
    memo,
    mint_info,
    mint_to_ixs,
    pk,
)
from hub.integrations.platform.rec_ops import BuyRec, ListRec, RetireRec, UnlistRec, _RecOp
from hub.integrations.settlement.records import FINAL_STATES
from hub.integrations.settlement.transactions import ata
from hub.store import views

RENEWABLE = ("solar", "wind", "hydro")
MINT_RENT = 1_461_600  # rent-exempt lamports for an 82-byte mint account
OWNERS_PER_TX = 6


def vintage_of(start):
    return datetime.fromtimestamp(start, timezone.utc).year


class Rec:
    def __init__(self, engine, credit, sources, kwh_per_certificate=1.0):
        self.engine, self.keys, self.credit = engine, engine.keys, credit
        self.sources = {int(d): str(s) for d, s in sources.items()}
        self.unit = Fraction(repr(float(kwh_per_certificate)))
        if self.unit <= 0:
            raise ValueError("kwh_per_certificate must be above 0")
        for op in (Vintage(self), MintRec(self), ListRec(self), UnlistRec(self),
                   BuyRec(self), RetireRec(self)):  # fmt: skip
            engine.register(op)

    def rows(self, sql, params=()):
        return self.engine.rows(sql, params)

    def mint_of(self, vintage):
        row = self.rows("SELECT mint FROM rec_vintages WHERE vintage = ?", (vintage,))
        return pk(row[0]["mint"]) if row else None

    def eligible(self, conn, devices=None):
        """Counted-nowhere metered renewable energy: [(contract, device, vintage, kwh)]."""
        out = []
        for c in views.contracts_not_in(conn, "rec_energy", "c.id, c.device, c.start, "
                                        "c.delivered_kwh", states=FINAL_STATES, metered=True,
                                        order="c.id"):  # fmt: skip
            device = c["device"]
            if self.sources.get(device) in RENEWABLE and (devices is None or device in devices):
                out.append((c["id"], device, vintage_of(c["start"]), c["delivered_kwh"]))
        return out

    # --- commands ----------------------------------------------------------------------

    async def mint(self, command):
        """Mint every certificate the metered renewable energy earns. One sub-command
        per vintage and group of owners: <command>.<vintage>.<k>. -> [results]."""
        groups = defaultdict(set)
        for _cid, device, vintage, _kwh in self.eligible(self.engine.conn):
            groups[vintage].add(device)
        results = []
        for vintage, devices in sorted(groups.items()):
            if self.mint_of(vintage) is None:
                await self.engine.run(
                    "rec-vintage-%d" % vintage, Vintage.kind, {"vintage": vintage}
                )
            devices = sorted(devices)
            for k in range(0, len(devices), OWNERS_PER_TX):
                args = {"vintage": vintage, "devices": devices[k : k + OWNERS_PER_TX]}
                sub = "%s.%d.%d" % (command, vintage, k // OWNERS_PER_TX)
                results.append(await self.engine.run(sub, MintRec.kind, args))
        return results

    # A participant's commands: `wallet` is its own (else the result is a signing request).

    async def list(self, command, account, serials, price, wallet=None):
        args = {"account": account, "serials": serials, "price": price}
        return await self.engine.run(command, ListRec.kind, args, wallet)

    async def unlist(self, command, account, serials, wallet=None):
        args = {"account": account, "serials": serials}
        return await self.engine.run(command, UnlistRec.kind, args, wallet)

    async def buy(self, command, account, serials, wallet=None):
        args = {"account": account, "serials": serials}
        return await self.engine.run(command, BuyRec.kind, args, wallet)

    async def retire(self, command, account, serials, reason, wallet=None):
        args = {"account": account, "serials": serials, "reason": reason}
        return await self.engine.run(command, RetireRec.kind, args, wallet)

    # --- views -------------------------------------------------------------------------

    def certificates(self, status=None, limit=1000):
        sql = ("SELECT c.serial, c.vintage, c.device, c.source, s.owner, s.status, s.price, "
               "c.minted_at FROM rec_certificates c JOIN rec_state s USING (serial)")  # fmt: skip
        params = ()
        if status:
            sql, params = sql + " WHERE s.status = ?", (status,)
        return self.rows(sql + " ORDER BY c.serial LIMIT ?", params + (limit,))

    async def reconcile(self):
        diffs, backend = [], self.engine.backend
        escrow = self.keys.authority.pubkey
        for v in self.rows("SELECT vintage, mint FROM rec_vintages ORDER BY vintage"):
            mint = pk(v["mint"])
            supply = mint_info(await backend.account_data(mint))[0]
            holders = defaultdict(int)
            for row in self.rows(
                "SELECT s.owner, s.status, count(*) n FROM rec_certificates c JOIN rec_state s "
                "USING (serial) WHERE c.vintage = ? AND s.status != 'retired' "
                "GROUP BY s.owner, s.status",
                (v["vintage"],),
            ):
                owner = str(escrow) if row["status"] == "listed" else row["owner"]
                holders[owner] += row["n"]
            if supply != sum(holders.values()):
                diffs.append("rec %d supply: store %d, chain %d"
                             % (v["vintage"], sum(holders.values()), supply))  # fmt: skip
            every = (
                set(holders)
                | {str(escrow)}
                | {r["owner"] for r in self.rows("SELECT DISTINCT owner FROM rec_events")}
            )
            for owner in sorted(every):
                chain = await backend.token_balance(ata(pk(owner), mint)) or 0
                if chain != holders.get(owner, 0):
                    diffs.append("rec %d %s: store %d, chain %d"
                                 % (v["vintage"], owner, holders.get(owner, 0), chain))  # fmt: skip
        return diffs


class Vintage(_RecOp):
    kind = "rec.vintage"

    def plan(self, conn, args, command):
        vintage = args["vintage"]
        return {"vintage": vintage, "mint": str(self.rec.keys.pubkey("rec-%d" % vintage))}

    def instructions(self, p):
        authority, mint = (
            self.rec.keys.authority.pubkey,
            self.rec.keys.wallet("rec-%d" % p["vintage"]),
        )
        return create_mint_ixs(authority, mint.pubkey, authority, 0, MINT_RENT), [mint]

    def apply(self, conn, command, p, at):
        conn.execute(
            "INSERT INTO rec_vintages VALUES (?, ?, ?)", (p["vintage"], p["mint"], command)
        )
        return p


class MintRec(_RecOp):
    kind = "rec.mint"

    def plan(self, conn, args, command):
        vintage, devices = args["vintage"], set(args["devices"])
        energy = [e for e in self.rec.eligible(conn, devices) if e[2] == vintage]
        conn.executemany(
            "INSERT INTO rec_energy VALUES (?, ?, ?, ?, ?)",
            [(cid, d, v, kwh, command) for cid, d, v, kwh in energy],
        )
        counts = {}
        for device in sorted(devices):
            total = sum(
                (Fraction(repr(kwh)) for (kwh,) in conn.execute(
                    "SELECT kwh FROM rec_energy WHERE device = ? AND vintage = ?",
                    (device, vintage))), Fraction(0))  # fmt: skip
            minted = conn.execute(
                "SELECT count(*) FROM rec_certificates WHERE device = ? AND vintage = ?",
                (device, vintage),
            ).fetchone()[0]
            new = int(total / self.rec.unit) - minted
            if new > 0:
                counts[str(device)] = new
        owners = {d: str(self.rec.keys.account("owner-%s" % d)) for d in counts}
        return {"vintage": vintage, "counts": counts, "owners": owners,
                "contracts": [e[0] for e in energy]}  # fmt: skip

    def instructions(self, p):
        if not p["counts"]:
            return None
        authority, mint = self.rec.keys.authority.pubkey, self.rec.mint_of(p["vintage"])
        total = sum(p["counts"].values())
        ixs = [memo("gridbid-rec:mint:%s:%d:%d" % (p["command"], p["vintage"], total), authority)]
        for device, n in sorted(p["counts"].items()):
            ixs += mint_to_ixs(authority, mint, authority, pk(p["owners"][device]), n, 0)
        return ixs, []

    def apply(self, conn, command, p, at):
        serial = conn.execute("SELECT coalesce(max(serial), 0) FROM rec_certificates").fetchone()[0]
        minted = []
        for device, n in sorted(p["counts"].items(), key=lambda x: int(x[0])):
            owner = p["owners"][device]
            for _ in range(n):
                serial += 1
                conn.execute(
                    "INSERT INTO rec_certificates VALUES (?, ?, ?, ?, ?, ?)",
                    (serial, p["vintage"], int(device), self.rec.sources[int(device)], command, at),
                )
                conn.execute("INSERT INTO rec_state VALUES (?, ?, 'held', NULL, NULL)",
                             (serial, owner))  # fmt: skip
                self._event(conn, [serial], "mint", owner, None, command, at)
                minted.append(serial)
        return {"vintage": p["vintage"], "serials": minted, "contracts": len(p["contracts"])}

    def release(self, conn, command, p):
        conn.execute("DELETE FROM rec_energy WHERE command = ?", (command,))
