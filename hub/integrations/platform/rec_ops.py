"""The certificate commands that move existing certificates: list, unlist, buy, retire
(hub/integrations/platform/rec.py documents the model). Each checks the store first and refuses with
a clear error; the chain's own checks (balances, signatures) back it up.

Each is its participant's own command: the owner (the buyer for a purchase) signs its
transaction and its memo (signing.py), and the certificates it names are held
until it ends, so a command waiting for a signature is not overtaken on them."""

from collections import defaultdict

from hub.integrations.platform.chain_ops import burn_ix, memo, pk, transfer_ixs
from hub.integrations.platform.credit import ledger_balances
from hub.integrations.platform.engine import Operation, PlatformError

MAX_SERIALS = 40  # per command: the memo must fit one transaction


def _serials(args):
    serials = args.get("serials")
    if (
        not isinstance(serials, list)
        or not 1 <= len(serials) <= MAX_SERIALS
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in serials)
        or len(set(serials)) != len(serials)
    ):
        raise PlatformError("serials must be 1..%d distinct certificate numbers" % MAX_SERIALS)
    return sorted(serials)


class _RecOp(Operation):
    def __init__(self, rec):
        self.rec = rec

    def holds(self, p):  # the certificates a command moves (minting names none yet)
        return ["certificate %d" % s for s in p.get("serials", ())]

    def _states(self, conn, serials):
        rows = {
            s: (v, owner, status, price)
            for s, v, owner, status, price in conn.execute(
                "SELECT c.serial, c.vintage, s.owner, s.status, s.price FROM rec_certificates c "
                "JOIN rec_state s USING (serial) WHERE c.serial IN (%s)"
                % ",".join("?" * len(serials)), serials,
            )
        }  # fmt: skip
        for s in serials:
            if s not in rows:
                raise PlatformError("there is no certificate %d" % s)
            if rows[s][2] == "retired":
                raise PlatformError("certificate %d is retired: it can never be sold or "
                                    "retired again" % s)  # fmt: skip
        if len({r[0] for r in rows.values()}) != 1:
            raise PlatformError("one vintage per command: the certificates span several")
        return rows, rows[serials[0]][0]

    def _event(self, conn, serials, event, owner, price, command, at, text=None):
        conn.executemany(
            "INSERT INTO rec_events (serial, event, owner, price, command, memo, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(s, event, owner, price, command, text, at) for s in serials],
        )


class ListRec(_RecOp):
    kind = "rec.list"

    def plan(self, conn, args, command):
        serials, owner = _serials(args), str(self.rec.keys.account(args.get("account")))
        price = args.get("price")
        if isinstance(price, bool) or not isinstance(price, int) or price < 1:
            raise PlatformError("price must be a whole number of credit base units >= 1")
        rows, vintage = self._states(conn, serials)
        for s, (_v, holder, status, _price) in rows.items():
            if holder != owner or status != "held":
                raise PlatformError("certificate %d is not held by %s" % (s, args["account"]))
        return {"account": args["account"], "owner": owner, "serials": serials,
                "price": price, "vintage": vintage, "signer": owner}  # fmt: skip

    def instructions(self, p):
        authority, seller = self.rec.keys.authority.pubkey, pk(p["owner"])
        mint, n = self.rec.mint_of(p["vintage"]), len(p["serials"])
        text = "gridbid-rec:list:%s:%d:%d@%d" % (p["command"], p["vintage"], n, p["price"])
        return [memo(text, seller)] + transfer_ixs(authority, seller, authority, mint, n, 0), []

    def apply(self, conn, command, p, at):
        conn.executemany(
            "UPDATE rec_state SET status = 'listed', price = ?, listing = ? WHERE serial = ?",
            [(p["price"], command, s) for s in p["serials"]],
        )
        self._event(conn, p["serials"], "list", p["owner"], p["price"], command, at)
        return p


class UnlistRec(_RecOp):
    kind = "rec.unlist"

    def plan(self, conn, args, command):
        serials, owner = _serials(args), str(self.rec.keys.account(args.get("account")))
        rows, vintage = self._states(conn, serials)
        for s, (_v, holder, status, _p) in rows.items():
            if holder != owner or status != "listed":
                raise PlatformError("certificate %d is not listed by %s" % (s, args["account"]))
        return {"account": args["account"], "owner": owner, "serials": serials,
                "vintage": vintage, "signer": owner}  # fmt: skip

    def instructions(self, p):
        # The escrow (the authority) gives them back; the owner's signed memo asks for it.
        authority = self.rec.keys.authority.pubkey
        mint, n = self.rec.mint_of(p["vintage"]), len(p["serials"])
        text = "gridbid-rec:unlist:%s:%d:%d" % (p["command"], p["vintage"], n)
        ixs = transfer_ixs(authority, authority, pk(p["owner"]), mint, n, 0)
        return [memo(text, pk(p["owner"]))] + ixs, []

    def apply(self, conn, command, p, at):
        conn.executemany(
            "UPDATE rec_state SET status = 'held', price = NULL, listing = NULL WHERE serial = ?",
            [(s,) for s in p["serials"]],
        )
        self._event(conn, p["serials"], "unlist", p["owner"], None, command, at)
        return p


class BuyRec(_RecOp):
    kind = "rec.buy"

    def plan(self, conn, args, command):
        serials, buyer = _serials(args), str(self.rec.keys.account(args.get("account")))
        pay = defaultdict(int)
        rows, vintage = self._states(conn, serials)
        for s, (_v, seller, status, price) in rows.items():
            if status != "listed":
                raise PlatformError("certificate %d is not for sale" % s)
            if seller == buyer:
                raise PlatformError("certificate %d is already %s's" % (s, args["account"]))
            pay[seller] += price
        held = ledger_balances(conn)[buyer]
        if sum(pay.values()) > held:
            raise PlatformError("%s holds %d credit base units, the certificates cost %d"
                                % (args["account"], held, sum(pay.values())))  # fmt: skip
        return {"account": args["account"], "buyer": buyer, "serials": serials,
                "vintage": vintage, "pay": sorted(pay.items()), "signer": buyer}  # fmt: skip

    def instructions(self, p):
        authority, buyer = self.rec.keys.authority.pubkey, pk(p["buyer"])
        credit, mint = self.rec.credit, self.rec.mint_of(p["vintage"])
        text = "gridbid-rec:buy:%s:%d:%d" % (p["command"], p["vintage"], len(p["serials"]))
        ixs = [memo(text, buyer)]
        for seller, amount in p["pay"]:
            ixs += transfer_ixs(authority, buyer, pk(seller), credit.mint, amount,
                                credit.decimals)  # fmt: skip
        ixs += transfer_ixs(authority, authority, buyer, mint, len(p["serials"]), 0)
        return ixs, []

    def apply(self, conn, command, p, at):
        conn.executemany(
            "UPDATE rec_state SET owner = ?, status = 'held', price = NULL, listing = NULL "
            "WHERE serial = ?", [(p["buyer"], s) for s in p["serials"]],
        )  # fmt: skip
        self._event(conn, p["serials"], "buy", p["buyer"], None, command, at)
        moves = [(p["buyer"], -sum(a for _s, a in p["pay"]))] + [tuple(x) for x in p["pay"]]
        conn.executemany(
            "INSERT INTO credit_moves (command, account, kind, units, at) "
            "VALUES (?, ?, 'rec', ?, ?)",
            [(command, a, u, at) for a, u in moves],
        )
        return p


class RetireRec(_RecOp):
    kind = "rec.retire"

    def plan(self, conn, args, command):
        serials, owner = _serials(args), str(self.rec.keys.account(args.get("account")))
        reason = args.get("reason") or ""
        if not isinstance(reason, str) or len(reason.encode()) > 200:
            raise PlatformError("the reason is text of at most 200 bytes")
        rows, vintage = self._states(conn, serials)
        for s, (_v, holder, status, _p) in rows.items():
            if holder != owner:
                raise PlatformError("certificate %d is not held by %s" % (s, args["account"]))
            if status == "listed":
                raise PlatformError("certificate %d is listed: unlist it first" % s)
        text = "gridbid-rec:retire:%s:%d:%s:%s" % (
            command,
            vintage,
            ",".join(map(str, serials)),
            reason,
        )
        return {"account": args["account"], "owner": owner, "serials": serials,
                "vintage": vintage, "memo": text, "signer": owner}  # fmt: skip

    def instructions(self, p):
        holder, mint = pk(p["owner"]), self.rec.mint_of(p["vintage"])
        return [memo(p["memo"], holder), burn_ix(mint, holder, len(p["serials"]), 0)], []

    def apply(self, conn, command, p, at):
        conn.executemany("UPDATE rec_state SET status = 'retired' WHERE serial = ?",
                         [(s,) for s in p["serials"]])  # fmt: skip
        self._event(conn, p["serials"], "retire", p["owner"], None, command, at, p["memo"])
        return p
